"""Peak memory per process: one process, two replicated processes, two sharded ones (issue #29).

A random Llama of ~400M parameters (float32, untied head, SmolLM2's tokenizer) is saved as
safetensors in several files with an index in a temporary folder. ``tunedlens train`` (a few
tokens) and ``tunedlens fit-jlens`` (two short prompts) run on it in three ways:

- ``1 process``: ``python -m tunedlens ...`` (the whole model in one process);
- ``2 processes, replicated``: ``torchrun --nproc-per-node 2 -m tunedlens ...`` without ``--fsdp``
  (what a job of two processes holds today: one whole model each);
- ``2 processes, sharded``: the same with ``--fsdp``: each process builds the model on ``meta``,
  shards the decoder blocks with FSDP2 and reads only its rows from the safetensors files.

Each process runs ``tunedlens``'s ``main()`` inside a small wrapper (this file's ``child``
mode) that writes its peak resident set (``VmHWM``: the kernel's high-water mark of its
resident pages) to a JSON file when it is done. A ``baseline`` child imports the same libraries and joins the gloo group without a model: the
runtime's fixed cost per process, so the model's share is ``peak - baseline``.

Runs are sequential, one thread per process (``OMP_NUM_THREADS=1``), under whatever else the
machine runs: peak memory does not depend on the load, wall times do (they are recorded, not
compared).

    nice -n 10 python benchmarks/fsdp_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SRC = HERE.parents[1] / "src"
sys.path[:0] = [str(SRC), str(HERE.parent)]  # this checkout's tunedlens; benchmarks/common.py

# ~403M parameters: 18 blocks of 16.8M (302M) + embeddings and head of 50.3M each (untied).
CONFIG = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=18,
    num_attention_heads=16,
    num_key_value_heads=16,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
TRAIN = [
    "--seq-len", "64", "--tokens", "512", "--tokens-per-step", "256", "--batch-size", "2",
    "--val-tokens", "128",
]  # fmt: skip
FIT = ["--prompts", "2", "--seq-len", "8", "--skip-first", "2", "--dim-batch", "256"]
MODES = {
    "1 process": (1, []),
    "2 processes, replicated": (2, []),
    "2 processes, sharded": (2, ["--fsdp"]),
}


def child(out: str, args: list[str]) -> None:
    """Run ``tunedlens args`` (or the baseline) here and write this process's peak RSS."""
    started = time.perf_counter()
    code = 0
    if args == ["baseline"]:
        import transformers  # noqa: F401  (what every command imports)

        import tunedlens.commands.fit_jlens
        import tunedlens.commands.train
        import tunedlens.sharding  # noqa: F401
        from tunedlens.distributed import init_world

        init_world().close()
    elif args[:1] == ["load"]:  # the model only: what a process holds once it has run
        from tunedlens.distributed import init_world

        world = init_world()
        if "--fsdp" in args:
            from tunedlens.sharding import load_sharded, plan_sharded_load

            _model, _ = load_sharded(plan_sharded_load(args[1], world), world)
        else:
            from tunedlens.models import load_model

            _model, _ = load_model(args[1])
        import torch

        # One token through the model: unsharded weights are memory maps of the safetensors
        # files, resident (in the page cache, counted in RSS) only once a forward reads them.
        with torch.no_grad():
            _model(input_ids=torch.tensor([[1]]))
        resident = rss_mib()
        world.close()
    else:
        from tunedlens.cli import main

        sys.argv = ["tunedlens", *args]
        try:
            main()
        except SystemExit as stop:
            code = stop.code or 0
    rank = int(os.environ.get("RANK", "0"))
    record = {
        "resident_after_load_mib": resident if args[:1] == ["load"] else None,
        "rank": rank,
        "exit": code,
        "peak_rss_mib": peak_rss_mib(),
        "wall_s": time.perf_counter() - started,
    }
    Path(f"{out}-{rank}.json").write_text(json.dumps(record))


def rss_mib() -> dict:
    """This process's resident set now, in MiB: all, anonymous, file-backed (memory maps)."""
    fields = {"VmRSS:": "all", "RssAnon:": "anonymous", "RssFile:": "file"}
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name = line.split()[0] if line.strip() else ""
        if name in fields:
            found[fields[name]] = int(line.split()[1]) / 1024
    return found


def peak_rss_mib() -> float:
    """This process's peak resident set (``VmHWM``), in MiB.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that over ``execve`` from the process that
    started this one (the launcher's, or this script's parent holding the model it saved).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


REUSE = False
"""``--reuse``: keep the records an earlier run left in ``--work`` (delete one to rerun it)."""


def launch(processes: int, args: list[str], out: Path, log: Path) -> list[dict]:
    """Run the child in ``processes`` processes; their records, by rank."""
    paths = [Path(f"{out}-{rank}.json") for rank in range(processes)]
    if REUSE and all(path.exists() for path in paths):
        return [json.loads(path.read_text()) for path in paths]
    for path in paths:
        path.unlink(missing_ok=True)
    wrapper = [str(HERE), "child", str(out)]
    if processes == 1:
        command = [sys.executable, *wrapper, *args]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
            "--master-port", str(free_port()), *wrapper, *args,
        ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SRC))
    started = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - started
    records = []
    for rank in range(processes):
        path = Path(f"{out}-{rank}.json")
        if done.returncode != 0 or not path.exists():
            tail = log.read_text()[-3000:]
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{tail}")
        records.append(json.loads(path.read_text()) | {"job_wall_s": wall})
        path.write_text(json.dumps(records[-1]))
    return records


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_model(folder: Path) -> dict:
    """The random Llama, saved as safetensors (several files and an index) with a tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tunedlens.models import load_tokenizer, model_source

    tokenizer = load_tokenizer(model_source("demo"), None)
    config = LlamaConfig(vocab_size=len(tokenizer), **CONFIG)
    if (folder / "model.safetensors.index.json").exists():  # made by an earlier run (--work)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(folder, max_shard_size="500MB")
        tokenizer.save_pretrained(folder)
    blocks = sum(p.numel() for p in model.model.layers.parameters())
    total = sum(p.numel() for p in model.parameters())
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    del model
    return {
        "config": {**CONFIG, "vocab_size": config.vocab_size},
        "parameters": total,
        "block_parameters": blocks,
        "whole_parameters": total - blocks,
        "files": files,
        "index": (folder / "model.safetensors.index.json").exists(),
    }


def data_file(work: Path) -> Path:
    from common import first_documents

    return first_documents("train", 400, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="keep files here (default: temp)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model; nothing is saved")
    parser.add_argument("--reuse", action="store_true", help="keep the records left in --work")
    options = parser.parse_args()
    global REUSE
    REUSE = options.reuse
    if options.smoke:
        CONFIG.update(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    work = options.work or Path(tempfile.mkdtemp(prefix="fsdp_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(work)
    finally:
        if options.work is None:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> None:
    from common import machine, save

    folder = work / "model"
    model = make_model(folder)
    print(f"model: {model['parameters'] / 1e6:.1f}M parameters in {model['files']}", flush=True)
    data = data_file(work)
    results = {"baseline": {}}
    launch(1, ["baseline"], work / "warm-up", work / "warm-up.log")  # compiles the .pyc files
    for processes in (1, 2):
        tag = f"baseline-{processes}p"
        records = launch(processes, ["baseline"], work / tag, work / f"{tag}.log")
        results["baseline"][str(processes)] = records
        print("baseline", processes, [round(r["peak_rss_mib"]) for r in records], flush=True)
    results["load"] = {}
    for mode, (processes, extra) in MODES.items():
        tag = f"load-{mode.replace(' ', '_').replace(',', '')}"
        records = launch(processes, ["load", str(folder), *extra], work / tag, work / f"{tag}.log")
        results["load"][mode] = {"records": records}
        print("load", mode, [round(r["peak_rss_mib"]) for r in records], flush=True)
    commands = {
        "train": lambda out: ["train", str(folder), "--data", str(data), "--out", out, *TRAIN],
        "fit-jlens": lambda out: [
            "fit-jlens",
            str(folder),
            "--data",
            str(data),
            "--out",
            out,
            *FIT,
        ],
    }
    for command, arguments in commands.items():
        results[command] = {}
        for mode, (processes, extra) in MODES.items():
            tag = f"{command}-{mode.replace(' ', '_').replace(',', '')}"
            args = arguments(str(work / tag)) + extra
            records = launch(processes, args, work / tag, work / f"{tag}.log")
            log = (work / f"{tag}.log").read_text()
            results[command][mode] = {"records": records, "fallback": "loaded whole" in log}
            print(command, mode, [round(r["peak_rss_mib"]) for r in records], flush=True)
            shutil.rmtree(work / tag, ignore_errors=True)
    payload = {"model": model, "train_args": TRAIN, "fit_args": FIT, "machine": machine()}
    payload["results"] = results
    if CONFIG["num_hidden_layers"] == 2:  # --smoke
        print(table(payload))
        return
    save("fsdp_memory", payload, table(payload))


def table(payload: dict) -> str:
    model, results = payload["model"], payload["results"]
    n, blocks, whole = model["parameters"], model["block_parameters"], model["whole_parameters"]
    base1 = results["baseline"]["1"][0]["peak_rss_mib"]
    base2 = max(r["peak_rss_mib"] for r in results["baseline"]["2"])
    mib = 4 / 2**20  # float32 bytes per parameter, in MiB
    held = {
        "1 process": n * mib,
        "2 processes, replicated": n * mib,
        "2 processes, sharded": (whole + blocks / 2) * mib,
    }
    lines = [
        "# Peak memory per process: replicated vs sharded loading (FSDP2, gloo, CPU)",
        "",
        f"Random Llama, {n / 1e6:.1f}M parameters in float32 ({n * mib:,.0f} MiB): "
        f"{model['config']['num_hidden_layers']} decoder blocks of {blocks / 1e6:.1f}M in all "
        f"(sharded under --fsdp) and {whole / 1e6:.1f}M held whole by every process "
        f"(embeddings, final norm, untied head; vocabulary {model['config']['vocab_size']:,}). "
        f"Saved as safetensors: {', '.join(model['files'])} and an index.",
        "",
        "Measured with `python benchmarks/fsdp_memory.py`: every process reports its peak "
        "resident set (`VmHWM` in `/proc/self/status`, the kernel's high-water mark); processes of a "
        "job are started by `torchrun` (gloo) and run one thread each, on a shared 2-core CPU "
        "with other work running, so wall times are noisy and only memory is compared. "
        f"Baseline: a process that imports torch, transformers and tunedlens and joins the "
        f"group, without a model: {base1:,.0f} MiB alone, {base2:,.0f} MiB under torchrun.",
        "",
        f"train: `{' '.join(payload['train_args'])}`; fit-jlens: `{' '.join(payload['fit_args'])}`.",
        "",
        "| command | processes | peak RSS per process (MiB) | peak minus baseline | resident "
        "after loading and one token, minus baseline | weights held (MiB, predicted) | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, (processes, _) in MODES.items():
        records = results["load"][mode]["records"]
        base = base1 if processes == 1 else base2
        peaks = [r["peak_rss_mib"] for r in records]
        resident = [r["resident_after_load_mib"]["all"] for r in records]
        files = [r["resident_after_load_mib"]["file"] for r in records]
        wall = records[0].get("job_wall_s", records[0]["wall_s"])
        lines.append(
            f"| load only | {mode} | {' / '.join(f'{p:,.0f}' for p in peaks)} | "
            f"{' / '.join(f'{p - base:,.0f}' for p in peaks)} | "
            f"{' / '.join(f'{r - base:,.0f}' for r in resident)} "
            f"(file-backed: {' / '.join(f'{f:,.0f}' for f in files)}) | {held[mode]:,.0f} | "
            f"{wall:.0f} |"
        )
    for command in ("train", "fit-jlens"):
        for mode, (processes, _) in MODES.items():
            entry = results[command][mode]
            peaks = [r["peak_rss_mib"] for r in entry["records"]]
            base = base1 if processes == 1 else base2
            extra = " (fell back to whole loading)" if entry["fallback"] else ""
            lines.append(
                f"| {command} | {mode}{extra} | {' / '.join(f'{p:,.0f}' for p in peaks)} | "
                f"{' / '.join(f'{p - base:,.0f}' for p in peaks)} | | {held[mode]:,.0f} | "
                f"{entry['records'][0].get('job_wall_s', entry['records'][0]['wall_s']):.0f} |"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3:])
    else:
        main()
