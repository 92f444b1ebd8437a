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
# # Train and evaluate a lens
#
# The command line, from a notebook: train a tuned lens for the embedded default
# (SmolLM2-135M-Instruct, `demo`) on the embedded corpus with validation along the way, draw its
# convergence curve, evaluate it exactly against the logit lens and read the gates. The page is
# executed on every build of the site, offline, so the budget is tiny (8k tokens, where the
# [main job](../../getting-started/) uses 32k and the [benchmarks](../../benchmarks/) far more);
# the numbers are those of a quick lens.

# %%
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from IPython.display import Image, Markdown

work = Path(tempfile.mkdtemp())


def tunedlens(*args):
    """Run the `tunedlens` command (here through this Python), failing the page if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "tunedlens", *map(str, args)], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(done.stderr)
    return done.stdout


# %% [markdown]
# ## Train, validating every step
#
# `--val-every 1` measures the exact KL of every layer on held-out blocks after each optimizer
# step; the best validated lens is kept. Everything the run did goes to `--out`: the lens,
# `provenance.json` and `train_log.jsonl`, one line per step.

# %%
lens = work / "lens"
tunedlens(
    "train", "demo", "--out", lens, "--tokens", 8192, "--tokens-per-step", 2048,
    "--seq-len", 256, "--batch-size", 8, "--val-every", 1, "--val-tokens", 512,
)  # fmt: skip
provenance = json.loads((lens / "provenance.json").read_text())
print(sorted(p.name for p in lens.iterdir()))
print("steps:", provenance["training"]["resolved"]["steps"])

# %% [markdown]
# ## The convergence curve
#
# `tunedlens lens curves` draws `train_log.jsonl`: the training loss and the mean validation KL
# over the steps, the learning rate, and every layer's validation KL at each validation.

# %%
tunedlens("lens", "curves", lens, "--out", work / "curves.png")
Image(filename=work / "curves.png")

# %% [markdown]
# ## Evaluate against the logit lens
#
# `tunedlens eval` measures every row exactly over the full vocabulary on text the lens did not
# train on, and reads a prompt suite (one-token answers) for the KPIs and gates. A small suite
# keeps this page quick: twelve prompts of the built-in one.

# %%
import tunedlens as tl  # noqa: E402

suite = Path(tl.__file__).parent / "evaluation" / "prompts.jsonl"
small = work / "prompts.jsonl"
small.write_text("".join(suite.read_text().splitlines(keepends=True)[:12]))
report = work / "eval"
tunedlens(
    "eval", "demo", "--lens", lens, "--data", "stdlib-prose", "--tokens", 2048,
    "--seq-len", 256, "--prompts", small, "--bootstrap", 100, "--out", report,
)  # fmt: skip
print(sorted(p.name for p in report.iterdir()))

# %%
Image(filename=report / "kl.png")

# %% [markdown]
# ## Reading `metrics.json` and the gates
#
# One value per row for each lens; `kl_bits` is the KL of the lens's prediction to the model's
# output, the last row being the model itself. The gates compare the lens with the logit lens:
# **A** it is closer to the model at 25/50/75 % depth, **B** answers reach rank 10 and 5 earlier,
# **C** the output row matches the model up to a temperature, **D** no depth is worse, **E** no
# row is worse.

# %%
metrics = json.loads((report / "metrics.json").read_text())
name = next(n for n in metrics["lenses"] if n != "logit")
for lens_name in ("logit", name):
    kl = metrics["lenses"][lens_name]["kl_bits"]
    print(f"{lens_name:>8}: mean KL {sum(kl[:-1]) / len(kl[:-1]):5.2f} bits over rows 0..L-1")
for gate, result in metrics["gates"][name].items():
    print(
        gate, "pass" if result["pass"] else "fail", {k: v for k, v in result.items() if k != "pass"}
    )

# %% [markdown]
# `summary.md` has the same as a table:

# %%
Markdown((report / "summary.md").read_text())
