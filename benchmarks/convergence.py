"""Convergence: exact held-out KL against wall time on SmolLM2-135M, CPU float32 (issue #14, item 1).

Every run is one whole process on this machine, one after another (never concurrently: 2 cores).
All are trained on the same documents of ``corpus/train`` and scored with exact KL(model ‖ lens) at
every layer on the same 8 x 512 tokens of ``corpus/test``:

- ``reference``: tuned-lens 0.2.0 (shared/peer, fp32 patch) with its README settings, 12 steps of
  2,048 tokens, a snapshot every 2 steps. Each snapshot is scored after the run; its time is the
  snapshot file's age since the process started.
- curves of ours (``default``, and ``--best`` when given): ``run_training("demo", ...)`` with
  ``--time-budget`` plus the time its validations take, validating on the test tokens every few
  steps. A point's time is the process's age at that step minus the validations so far.
- the others at ``--short`` minutes: one final validation, whole process wall time.

Writes ``benchmarks/results/convergence.{md,json,png}``; ``--only`` runs some, ``--tabulate-only``
redoes the report from what WORK holds.

    python benchmarks/convergence.py --work /tmp/convergence
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import PEER, RESULTS, bits, first_documents, machine, save

# Ours: the default recipe with one change each (the default itself is the empty change).
RUNS: dict[str, dict] = {
    "default": {},
    # The reference's and the seed plan's recipes train on every position (no sampling): with their
    # 2^18-token steps not one step fits in 8 minutes of this CPU, so they take the reference's
    # README steps here, 2,048 tokens in batches of 4.
    "paper": {"recipe": "paper", "tokens_per_step": 2048, "batch_size": 4},
    "lowrank": {"recipe": "lowrank", "tokens_per_step": 2048, "batch_size": 4},
    "lstsq-half": {"lstsq_budget_share": 0.5, "lstsq_tokens": 2**19},
    # The same 16 positions per sequence on average as the default, few early and many late.
    "positions-ramp": {"positions_per_sequence": 4, "positions_per_sequence_end": 28},
    "muon": {"optimizer": "muon"},
    # Later epochs over the rows the first one kept (issue #26, item 3).
    "epochs-2": {"epochs": 2},
    "epochs-4": {"epochs": 4},
}
EARLIER = " (earlier)"
"""Suffix of the runs ``--carry`` keeps from the previous results file."""
THRESHOLDS = (4.0, 3.0, 2.5)
CURVE_POINTS = 6


def parse_budget(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


# -- children (fresh interpreters) ---------------------------------------------------------------
def run_ours(name: str, work: Path, budget_s: float, curve: bool, validation_s: float) -> None:
    """One run of ours in this process: ``run_training`` as the CLI calls it."""
    begun = time.monotonic()
    from tunedlens.commands.train import run as run_training
    from tunedlens.train import recipe_config

    change = dict(RUNS[name])
    recipe = change.pop("recipe", "default")
    config = recipe_config(recipe, time_budget_s=budget_s, val_tokens=4096, seq_len=512, **change)
    out = work / (f"{name}-curve" if curve else name)
    clock = out.parent / f"{out.name}.clock.jsonl"
    clock.unlink(missing_ok=True)

    def on_step(stats) -> None:
        with open(clock, "a") as handle:
            handle.write(
                json.dumps(
                    {
                        "step": stats.step,
                        "process_s": time.monotonic() - begun,
                        "val_s": stats.val_s,
                    }
                )
                + "\n"
            )

    if curve:
        config = plan_curve(config, budget_s, validation_s)
    run_training(
        "demo",
        config,
        out,
        data=str(work / "train.jsonl"),
        val_data=str(work / "test.jsonl"),
        force=True,
        on_step=on_step,
        on_status=lambda message: print(message, flush=True),
    )


def plan_curve(config, budget_s: float, validation_s: float):
    """Validate every ``steps / CURVE_POINTS`` steps and add those validations to the budget.

    The step count comes from this machine's throughput in ``throughput.json`` (training tokens/s),
    the validation time from one exact validation timed by the parent (``measure_validation_s``),
    so that training itself gets about ``budget_s``.
    """
    import dataclasses

    throughput = json.loads((RESULTS / "throughput.json").read_text())["train_tokens_per_s"]
    steps = max(CURVE_POINTS, int(budget_s * throughput) // config.tokens_per_step)
    every = max(1, steps // CURVE_POINTS)
    extra = validation_s * (steps // every)
    print(
        f"curve: about {steps} steps, validating every {every} ({validation_s:.0f} s each): "
        f"budget {budget_s:.0f} s + {extra:.0f} s",
        flush=True,
    )
    return dataclasses.replace(config, val_every=every, time_budget_s=budget_s + extra)


def measure_validation_s(work: Path) -> float:
    """Seconds of one exact validation on 8 x 512 tokens (cached in WORK)."""
    cache = work / "validation_s.json"
    if cache.exists():
        return json.loads(cache.read_text())["validation_s"]
    import torch

    from tunedlens import LogitLens, load_model
    from tunedlens.engine import layer_kl

    model, _ = load_model("demo")
    ids = torch.randint(
        0, model.config.vocab_size, (8, 512), generator=torch.Generator().manual_seed(0)
    )
    layer_kl(LogitLens(model), model, ids[:1, :64])  # warm-up
    started = time.perf_counter()
    layer_kl(LogitLens(model), model, ids)
    seconds = time.perf_counter() - started
    cache.write_text(json.dumps({"validation_s": seconds}))
    return seconds


# -- the reference -------------------------------------------------------------------------------
def run_reference(work: Path, steps: int, every: int) -> float:
    from vs_reference import model_dir

    venv = (
        subprocess.run(["bash", str(PEER / "setup.sh")], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    out = work / "reference"
    shutil.rmtree(out, ignore_errors=True)
    # The reference tokenises its whole file before training: give it the first documents of ours,
    # about 16 times the 2,048 x steps tokens it trains on, not the whole file.
    data = work / "reference-train.jsonl"
    with open(work / "train.jsonl") as source, open(data, "w") as target:
        chars = 0
        for line in source:
            if chars > 4 * 16 * 2048 * steps:
                break
            target.write(line)
            chars += len(json.loads(line)["text"])
    command = [
        f"{venv}/bin/python",
        "-m",
        "tuned_lens",
        "train",
        "--model.name",
        str(model_dir()),
        "--data.name",
        str(data),
        "--split",
        "train",
        "--max_length",
        "512",
        "--num_steps",
        str(steps),
        "--tokens_per_step",
        "2048",
        "--per_gpu_batch_size",
        "4",
        "--precision",
        "float32",
        "--checkpoint_freq",
        str(every),
        "-o",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(PEER)}
    print("+", " ".join(command), flush=True)
    started = time.time()
    with open(work / "reference.log", "w") as log:
        subprocess.run(command, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - started
    points = []
    for snapshot in sorted(
        (out / "checkpoints").glob("snapshot_*.pth"), key=lambda p: int(p.stem.split("_")[1])
    ):
        step = int(snapshot.stem.split("_")[1])
        lens_dir = out / f"step_{step}"
        lens_dir.mkdir(exist_ok=True)
        # The snapshot pickles the reference's whole training state: read it with the reference's
        # own interpreter and keep the translators, in the layout its TunedLens.save writes.
        script = (
            "import sys, torch; s = torch.load(sys.argv[1], map_location='cpu', weights_only=False)['lens']; "
            "torch.save({k[len('layer_translators.'):]: v for k, v in s.items() "
            "if k.startswith('layer_translators.')}, sys.argv[2])"
        )
        subprocess.run(
            [f"{venv}/bin/python", "-c", script, str(snapshot), str(lens_dir / "params.pt")],
            check=True,
        )
        shutil.copy(out / "config.json", lens_dir / "config.json")
        points.append(
            {"step": step, "tokens": step * 2048, "time_s": snapshot.stat().st_mtime - started}
        )
    (work / "reference.json").write_text(json.dumps({"wall_s": wall, "points": points}, indent=2))
    return wall


# -- scoring -------------------------------------------------------------------------------------
def test_tokens(work: Path):
    from tunedlens import load_model
    from tunedlens.data import pack_blocks

    _, tokenizer = load_model("demo")
    # The blocks run_training validates on: 8 x 512 tokens of the validation file, seed 0.
    return pack_blocks(
        str(work / "test.jsonl"), tokenizer, seq_len=512, n_sequences=8, seed=0
    ).tokens


def score_lenses(work: Path, paths: dict[str, Path]) -> dict[str, list[float]]:
    """Exact KL per layer in bits of each lens directory (and ``logit``), cached in WORK."""
    from tunedlens import LogitLens, load_lens, load_model
    from tunedlens.engine import layer_kl

    cache_path = work / "scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    missing = {name: path for name, path in paths.items() if name not in cache}
    if missing:
        model, _ = load_model("demo")
        tokens = test_tokens(work)
        for name, path in missing.items():
            lens = LogitLens(model) if path is None else load_lens(path, model)
            cache[name] = bits(layer_kl(lens, model, tokens))
            cache_path.write_text(json.dumps(cache, indent=2))
    return {name: cache[name] for name in paths}


# -- the report ----------------------------------------------------------------------------------
def summary(kl: list[float]) -> dict:
    n = len(kl)
    return {
        "mean": sum(kl) / n,
        "layer_0": kl[0],
        f"layer_{n // 2}": kl[n // 2],
        f"layer_{n - 1}": kl[-1],
    }


def time_to(points: list[dict], threshold: float) -> float | None:
    """First time the mean KL is at or below ``threshold`` (linear between points), or None.

    Negative when the first point is already below: reached by then, at most that time.
    """
    previous = None
    for point in points:
        if point["mean"] <= threshold:
            if previous is None:
                return -point["time_s"]
            t0, k0, t1, k1 = previous["time_s"], previous["mean"], point["time_s"], point["mean"]
            return t0 + (t1 - t0) * (k0 - threshold) / (k0 - k1)
        previous = point
    return None


def ours_curve(work: Path, name: str) -> list[dict]:
    out = work / f"{name}-curve"
    clock = {
        r["step"]: r
        for r in map(json.loads, (work / f"{name}-curve.clock.jsonl").read_text().splitlines())
    }
    points, validation = [], 0.0
    for record in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()):
        if record.get("val_s"):
            validation += record["val_s"]
        if record.get("val_kl_bits") is None:
            continue
        time_s = clock[record["step"]]["process_s"] - validation
        points.append(
            {
                "step": record["step"],
                "tokens": record["tokens"],
                "time_s": time_s,
                "validation_s_so_far": validation,
                **summary(record["val_kl_bits"]),
                "kl_bits": record["val_kl_bits"],
            }
        )
    return points


def report(work: Path, args) -> None:
    wall = json.loads((work / "wall.json").read_text()) if (work / "wall.json").exists() else {}
    payload = {
        "machine": machine(),
        "test_tokens": 4096,
        "curves": {},
        "short": {},
        "short_budget": args.short,
    }
    lens_paths: dict[str, Path | None] = {"logit": None}
    reference = (
        json.loads((work / "reference.json").read_text())
        if (work / "reference.json").exists()
        else None
    )
    if reference:
        for point in reference["points"]:
            lens_paths[f"reference@{point['step']}"] = work / "reference" / f"step_{point['step']}"
    short = [name for name in RUNS if (work / name / "provenance.json").exists()]
    curves = [name for name in RUNS if (work / f"{name}-curve" / "provenance.json").exists()]
    for name in curves:
        lens_paths[f"{name}-curve"] = work / f"{name}-curve"
    for name in short:  # scored from their files at every position, as the curves' saved lenses
        lens_paths[name] = work / name
    scores = score_lenses(work, lens_paths)
    payload["logit_lens"] = summary(scores["logit"])
    if reference:
        points = [
            {
                **point,
                **summary(scores[f"reference@{point['step']}"]),
                "kl_bits": scores[f"reference@{point['step']}"],
            }
            for point in reference["points"]
        ]
        payload["curves"]["reference"] = {"points": points, "wall_s": reference["wall_s"]}
    for name in curves:
        points = ours_curve(work, name)
        saved = scores[f"{name}-curve"]
        provenance = json.loads((work / f"{name}-curve" / "provenance.json").read_text())[
            "training"
        ]
        payload["curves"][name] = {
            "points": points,
            "wall_s": wall.get(f"{name}-curve"),
            "saved_lens": summary(saved),
            "saved_lens_kl_bits": saved,
            "trained_tokens": provenance["trained_tokens"],
            "lstsq_tokens": provenance["lstsq_tokens"],
            "time_budget": provenance.get("time_budget"),
        }
    for name in short:
        provenance = json.loads((work / name / "provenance.json").read_text())["training"]
        # Its saved lens at every position of the test tokens (its own validation reads only the
        # positions training samples).
        kl = scores[name]
        validation = (provenance.get("time_budget") or {}).get("validation_s_each", 0.0)
        payload["short"][name] = {
            "wall_s": wall.get(name),
            "time_s": (wall.get(name) or 0.0) - validation,
            **summary(kl),
            "kl_bits": kl,
            "trained_tokens": provenance["trained_tokens"],
            "lstsq_tokens": provenance["lstsq_tokens"],
        }
    if args.carry:
        carry(payload)
    for curve in payload["curves"].values():
        curve["time_to_bits"] = {str(t): time_to(curve["points"], t) for t in THRESHOLDS}
    figure(payload, RESULTS / "convergence.png")
    save("convergence", payload, table(payload))


def carry(payload: dict) -> None:
    """Keep the runs of the previous results that this WORK does not hold, renamed "(earlier)"."""
    previous = json.loads((RESULTS / "convergence.json").read_text())
    payload["carried_from"] = previous.get("carried_from") or previous["machine"]
    for kind in ("curves", "short"):
        for name, entry in previous[kind].items():
            bare = name.removesuffix(EARLIER)
            if bare not in payload[kind] and bare + EARLIER not in payload[kind]:
                payload[kind][bare + EARLIER] = entry


def minutes(seconds: float | None) -> str:
    """Minutes; "≤ m" for a negative time (reached before the first point), "—" for never."""
    if seconds is None:
        return "—"
    return f"≤ {-seconds / 60:.1f}" if seconds < 0 else f"{seconds / 60:.1f}"


def table(payload: dict) -> str:
    lines = [
        "# Convergence: exact held-out KL against wall time, SmolLM2-135M, CPU float32",
        "",
        "Exact KL(model ‖ lens) in bits on 8 x 512 tokens of corpus/test; every run one whole process on this "
        "2-core machine, trained on the same corpus/train documents. Time: seconds since the process started "
        "(loading and packing included), validations excluded. The points of a curve are its run's own "
        "validations on those tokens: since this round (issue #26) exact KL at the 16 positions per sequence "
        "that training samples (128 cells, so a noisier estimate), before it at every position; the saved "
        "lenses and the short runs are scored from their files at every position.",
        "",
        f"The logit lens: {payload['logit_lens']['mean']:.3f} bits (mean over layers).",
        "",
    ]
    if payload.get("carried_from"):
        lines += [
            f"Runs marked{EARLIER} are not measured again: they are carried from the previous "
            "results of this benchmark (the recipe of that day, the CPU then shared with other "
            "jobs); the others were measured in this run.",
            "",
        ]
    lines += [
        "## Curves",
        "",
        "| run | min | tokens | mean | layer 0 | layer 15 | layer 29 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, curve in payload["curves"].items():
        for point in curve["points"]:
            lines.append(
                f"| {name} | {minutes(point['time_s'])} | {point['tokens']:,} | {point['mean']:.3f} | "
                f"{point['layer_0']:.2f} | {point['layer_15']:.2f} | {point['layer_29']:.2f} |"
            )
    lines += [
        "",
        "## Time to reach a mean KL (minutes, linear between points; ≤: already there at the first "
        "point; —: not reached)",
        "",
        "| run | " + " | ".join(f"{t} bits" for t in THRESHOLDS) + " |",
        "| --- | " + " | ".join("---:" for _ in THRESHOLDS) + " |",
    ]
    for name, curve in payload["curves"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(minutes(curve["time_to_bits"][str(t)]) for t in THRESHOLDS)
            + " |"
        )
    if payload["short"]:
        lines += [
            "",
            f"## At {payload['short_budget']} (whole process, one final validation)",
            "",
            "| run | mean | layer 0 | layer 15 | layer 29 | tokens trained | least-squares tokens | process s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, entry in payload["short"].items():
            lines.append(
                f"| {name} | {entry['mean']:.3f} | {entry['layer_0']:.2f} | {entry['layer_15']:.2f} | "
                f"{entry['layer_29']:.2f} | {entry['trained_tokens']:,} | {entry['lstsq_tokens']:,} | "
                f"{(entry['wall_s'] or float('nan')):.0f} |"
            )
    lines += ["", *targets(payload), ""]
    return "\n".join(lines)


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else f"missed by {value - target:.3f} bits"


def targets(payload: dict) -> list[str]:
    """The issue's targets, computed from the measurements."""
    notes = []
    curves = payload["curves"]
    reference = curves.get("reference") or curves.get("reference" + EARLIER)
    default = curves.get("default") or curves.get("default" + EARLIER)
    who = "default" if "default" in curves else "default" + EARLIER
    if reference and default:
        wall = reference["wall_s"]
        within = [p for p in default["points"] if p["time_s"] <= wall]
        if within:
            best = within[-1]
            ref_kl = reference["points"][-1]["kl_bits"]
            lower = sum(o < r for o, r in zip(best["kl_bits"], ref_kl, strict=True))
            notes.append(
                f"- Within the reference's wall time ({wall / 60:.1f} min for {reference['points'][-1]['tokens']:,} "
                f"tokens; it ends at {reference['points'][-1]['mean']:.3f} bits): the {who} curve's last point at "
                f"{minutes(best['time_s'])} min is {best['mean']:.3f} bits (target ≤ 2.0: "
                f"{verdict(best['mean'], 2.0)}); lower than the "
                f"reference's final lens at {lower} of {len(ref_kl)} layers."
            )
        notes.append(
            f"- The {who} curve's saved lens (the best validated one, after {minutes(default['points'][-1]['time_s'])} "
            f"min): {default['saved_lens']['mean']:.3f} bits, scored again from its files (its last validation "
            f"said {default['points'][-1]['mean']:.3f})."
        )
    short = payload["short"].get("default")
    if short and default and who == "default" and short["time_s"] < default["points"][0]["time_s"]:
        reached = [str(t) for t in THRESHOLDS if short["mean"] <= t]
        notes.append(
            f"- Before the curve's first point: the {payload['short_budget']} run of the default is at "
            f"{short['mean']:.3f} bits after {minutes(short['time_s'])} min (its validation excluded), so it "
            f"reaches {', '.join(reached) or 'none of'} bits within that time."
        )
    if short:
        notes.append(
            f"- At {payload['short_budget']}: the default reaches {short['mean']:.3f} bits (target ≤ 2.6: "
            f"{verdict(short['mean'], 2.6)})."
        )
    return notes


def figure(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("mean", "mean over layers"),
        ("layer_0", "layer 0"),
        ("layer_15", "layer 15"),
        ("layer_29", "layer 29"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    for axis, (key, title) in zip(axes, panels, strict=True):
        colours = {
            name: f"C{index}" for index, name in enumerate([*payload["curves"], *payload["short"]])
        }
        for name, curve in payload["curves"].items():
            xs = [p["time_s"] / 60 for p in curve["points"]]
            axis.plot(
                xs, [p[key] for p in curve["points"]], marker="o", label=name, color=colours[name]
            )
        for name, entry in payload["short"].items():
            axis.scatter(
                [entry["time_s"] / 60],
                [entry[key]],
                marker="x",
                color=colours[name],
                label=f"{name} ({payload['short_budget']})",
            )
        axis.axhline(payload["logit_lens"][key], color="grey", linestyle=":", label="logit lens")
        axis.set_yscale("log")
        axis.set_xlabel("minutes (validation excluded)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("KL(model ‖ lens), bits")
    axes[-1].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M, CPU float32: exact KL on 8 x 512 held-out tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/convergence"))
    parser.add_argument("--curve", default="25m", help="budget of the curves of ours")
    parser.add_argument("--short", default="8m", help="budget of the other runs")
    parser.add_argument(
        "--best", default=None, help="a run of RUNS to draw as a curve besides the default"
    )
    parser.add_argument("--ref-steps", type=int, default=12)
    parser.add_argument("--ref-every", type=int, default=2)
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="reference, default-curve, NAME-curve, or short runs by NAME",
    )
    parser.add_argument("--tabulate-only", action="store_true")
    parser.add_argument(
        "--carry",
        action="store_true",
        help="keep the runs of the previous results/convergence.json that WORK does not hold",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # NAME curve|short VALIDATION_S
    args = parser.parse_args()
    work = args.work
    if args.child:
        name, kind, validation_s = args.child
        budget = parse_budget(args.curve if kind == "curve" else args.short)
        return run_ours(name, work, budget, curve=kind == "curve", validation_s=float(validation_s))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "train.jsonl").exists():
        first_documents("train", 6000, work).rename(work / "train.jsonl")
        first_documents("test", 400, work).rename(work / "test.jsonl")
    jobs = ["reference", "default-curve"] + ([f"{args.best}-curve"] if args.best else [])
    jobs += [name for name in RUNS if name not in ("muon",)]
    wall = json.loads((work / "wall.json").read_text()) if (work / "wall.json").exists() else {}
    for job in [] if args.tabulate_only else (args.only or jobs):
        start = time.perf_counter()
        try:
            run_job(job, work, args)
        except subprocess.CalledProcessError as error:  # report the others; the log says why
            print(f"{job} failed ({error}); see {work / (job + '.log')}", flush=True)
            continue
        wall[job] = time.perf_counter() - start
        (work / "wall.json").write_text(json.dumps(wall, indent=2))
    report(work, args)


def run_job(job: str, work: Path, args) -> None:
    if job == "reference":
        run_reference(work, args.ref_steps, args.ref_every)
    else:
        name, kind = (job[: -len("-curve")], "curve") if job.endswith("-curve") else (job, "short")
        validation_s = measure_validation_s(work) if kind == "curve" else 0.0
        with open(work / f"{job}.log", "w") as handle:
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--work",
                    str(work),
                    "--curve",
                    args.curve,
                    "--short",
                    args.short,
                    "--child",
                    name,
                    kind,
                    str(validation_s),
                ],
                check=True,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )


if __name__ == "__main__":
    main()
