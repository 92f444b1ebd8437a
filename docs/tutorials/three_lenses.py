# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Three lenses on one prompt
#
# The logit lens, a tuned lens and a Jacobian lens read the same prompt on the embedded default
# model (SmolLM2-135M-Instruct, `demo`). This page is a script executed on every build of the
# site, offline, on 2 CPU cores: the lenses are trained and fitted here on small budgets, so the
# numbers are those of a quick lens, not of a good one (the [main job](../../getting-started/)
# trains on 32k tokens, the [benchmarks](../../benchmarks/) on more).

# %%
import tempfile
import time
from pathlib import Path

import torch
from IPython.display import Image

from tunedlens import (
    LogitLens,
    PredictionTrajectory,
    TunedLens,
    fit_jacobian_lens,
    load_model,
    readout,
    recipe_config,
    train_lens,
)
from tunedlens.data import pack_blocks

torch.manual_seed(0)
out = Path(tempfile.mkdtemp())
model, tokenizer = load_model("demo")
print(type(model).__name__, sum(p.numel() for p in model.parameters()) // 10**6, "M parameters")

# %% [markdown]
# ## A tuned lens in under a minute
#
# The default recipe starts every translator at the least-squares fit of the last layer's
# residual from its own, then runs AdamW on the KL to the model's output. 8,192 tokens of the
# King James Bible (the `kjv` corpus, extra `demo`) are enough to see it work.

# %%
start = time.perf_counter()
train = pack_blocks("kjv", tokenizer, seq_len=256, n_sequences=40, seed=0)
config = recipe_config(
    "default", tokens=8192, seq_len=256, batch_size=8, tokens_per_step=2048, val_tokens=512
)
tuned = TunedLens.from_model(model)
result = train_lens(tuned, model, train, config)
print(f"trained in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# ## A Jacobian lens
#
# The J-lens maps row `r` with the Jacobian of the last block's output with respect to that row,
# averaged over prompts: `d_model` backward passes per prompt (batched), each from the last
# block down to the lowest row fitted. To keep this page quick, one prompt of 24 tokens and the
# rows of the upper half only; rows without a matrix decode as the logit lens. The published
# J-lenses average thousands of prompts.

# %%
start = time.perf_counter()
prompts = pack_blocks("kjv", tokenizer, seq_len=24, n_sequences=1, seed=1).tokens
jlens = fit_jacobian_lens(model, prompts, skip_first=4, rows=range(15, 30))
print(f"fitted in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# ## One readout, three lenses
#
# `readout` runs the model once and reads every row through every lens, exactly, over the full
# vocabulary, in float32. The last row is the model's own output.

# %%
prompt = "The capital of France is Paris. The capital of Germany is"
ids = tokenizer(prompt, return_tensors="pt").input_ids
lenses = {"logit": LogitLens(model), "tuned": tuned, "jacobian": jlens}
r = readout(model, lenses, ids, positions=[-1], stats=("kl",), top_k=1)
bits = 1 / torch.log(torch.tensor(2.0))
print(f"{'row':>6} " + "".join(f"{name:>22}" for name in lenses))
for row in range(0, r["logit"].top_ids.shape[1], 3):
    cells = []
    for name in lenses:
        token = tokenizer.decode(r[name].top_ids[0, row, 0, 0])
        kl = float(r[name]["kl"][0, row, 0] * bits)
        cells.append(f"{token!r:>12} {kl:5.1f} bits")
    print(f"{row:>6} " + "".join(f"{cell:>22}" for cell in cells))

# %% [markdown]
# Each cell: the lens's top-1 next token at the last position and its KL to the model's output.
# The tuned lens was trained for this; the J-lens, fitted on one prompt and on the upper rows
# only, is the logit lens below row 15 (compare its rows above with the other two).
#
# ## The heatmaps
#
# A `PredictionTrajectory` holds every row at every position; `plot(..., path=...png)` draws it
# with matplotlib (`.html` gives an interactive plotly figure).

# %%
for name, lens in lenses.items():
    trajectory = PredictionTrajectory.from_lens_and_model(
        lens, model, ids[0], tokenizer=tokenizer, name=f"{name} lens"
    )
    trajectory.stride(3).plot("entropy", path=out / f"{name}.png")
Image(filename=out / "logit.png")

# %%
Image(filename=out / "tuned.png")

# %%
Image(filename=out / "jacobian.png")

# %% [markdown]
# Colour is the entropy of each cell's prediction in bits; the label its top-1 token. The
# command line draws the same figures side by side:
#
# ```console
# $ tunedlens show demo "The capital of France is" --lens lens-demo --lens jlens-demo --out three.png
# ```
