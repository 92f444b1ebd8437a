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
# # Ablating a block
#
# A prediction trajectory shows what every row predicts at every position. Remove one part of
# the model and the trajectory changes from that row on: where, and how much, says what that
# part did for this prompt. Here the attention of one block of the embedded default
# (SmolLM2-135M-Instruct, `demo`) is switched off with a forward hook, and the trajectories of the
# clean and the ablated model are compared cell by cell. The page is executed on every build.

# %%
import tempfile
from pathlib import Path

import torch
from IPython.display import Image

from tunedlens import LogitLens, PredictionTrajectory, load_model
from tunedlens.plot import trajectory_figures

out = Path(tempfile.mkdtemp())
model, tokenizer = load_model("demo")
lens = LogitLens(model)
prompt = "The capital of France is Paris. The capital of Germany is"
ids = tokenizer(prompt, return_tensors="pt").input_ids[0]


def trajectory(name):
    return PredictionTrajectory.from_lens_and_model(
        lens, model, ids, tokenizer=tokenizer, name=name
    )


clean = trajectory("clean")
print(clean.n_blocks, "blocks;", len(ids), "tokens")

# %% [markdown]
# ## Switching off one block's attention
#
# A forward hook replaces the attention output of block 20 with zeros: the block's MLP still
# runs, on the residual stream without what attention would have added. Every lens reads the
# model as it runs, so the trajectory is read with the hook in place.

# %%
BLOCK = 20
attention = model.model.layers[BLOCK].self_attn


def no_attention(module, inputs, output):
    return (torch.zeros_like(output[0]), *output[1:])


handle = attention.register_forward_hook(no_attention)
try:
    ablated = trajectory(f"attention {BLOCK} off")
finally:
    handle.remove()

# %% [markdown]
# ## What changed
#
# The Jensen–Shannon divergence between the two trajectories, per cell, in bits (at most 1).
# Rows up to the ablated block are untouched (zero); from row 21 on, the cells where the block's
# attention mattered light up. Labels `a/b` show both top-1 tokens where they differ.

# %%
difference = clean.difference(ablated)
assert abs(difference.values[: BLOCK + 1]).max() < 1e-6  # rows before the block: unchanged
trajectory_figures.save(
    [difference.clip(0, 1)], out / "difference.png", title=f"JS divergence, attention {BLOCK} off"
)
Image(filename=out / "difference.png")

# %% [markdown]
# The model's own output (the last row) at the last position, before and after:

# %%
for name, t in (("clean", clean), ("ablated", ablated)):
    rows = t.predictions(-1)
    top = rows[-1].top[:3]
    print(f"{name:>8}: " + ", ".join(f"{p.token!r} {p.prob:.2f}" for p in top))

# %% [markdown]
# ## Every block, one number each
#
# Repeating the ablation for each block and measuring the KL of the model's output to the clean
# one at the last position ranks the blocks by how much this prediction needs their attention
# (the model's output row only: one forward pass per block).

# %%
with torch.no_grad():
    reference = torch.log_softmax(model(ids[None]).logits[0, -1].float(), -1)
effects = []
for block in range(clean.n_blocks):
    handle = model.model.layers[block].self_attn.register_forward_hook(no_attention)
    try:
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids[None]).logits[0, -1].float(), -1)
    finally:
        handle.remove()
    kl = torch.sum(reference.exp() * (reference - logprobs)) / torch.log(torch.tensor(2.0))
    effects.append(float(kl))
ranked = sorted(range(len(effects)), key=lambda b: -effects[b])
print("blocks whose attention matters most here:", ranked[:5])
print("KL of the output (bits):", [round(effects[b], 2) for b in ranked[:5]])
