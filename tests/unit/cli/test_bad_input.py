"""Bad input on the command line: one line on stderr, exit code 2, no traceback, no file changed.

One table for every command. Each case builds its inputs in a fresh folder (a tiny llama with a
tokenizer, a random lens, text), runs ``tunedlens`` through its entry point, and checks the exit
code, that the message names the offending thing, that no traceback was printed, and that every
file in the folder is byte-for-byte what it was before.
"""

import hashlib
import json
import socket
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_models import random_lens, tiny_model
from tunedlens.cli import main


@pytest.fixture
def world(tmp_path, tiny_tokenizer):
    """model/ (tiny llama + tokenizer), weights/ (no tokenizer), lenses, text.txt, a report."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    model.save_pretrained(tmp_path / "weights")
    random_lens(model).save(tmp_path / "lens")
    random_lens(model).save(tmp_path / "other-lens")
    random_lens(tiny_model("gpt2")).save(tmp_path / "gpt2-lens")
    generator = torch.Generator().manual_seed(0)
    words = torch.randint(4, 128, (3000,), generator=generator).tolist()
    (tmp_path / "text.txt").write_text(" ".join(f"w{i}" for i in words))
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text("{}")
    (tmp_path / "fig.html").mkdir()  # a directory where a figure file is named
    (tmp_path / "afile").write_text("not a directory")
    return tmp_path


def _broken_lens(root, name, change):
    """A copy of lens/ with ``change(config, tensors)`` applied."""
    import shutil

    path = root / name
    shutil.copytree(root / "lens", path)
    config = json.loads((path / "config.json").read_text())
    tensors = load_file(path / "lens.safetensors")
    change(config, tensors)
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors, path / "lens.safetensors")
    return path


def _nan(config, tensors):
    tensors["weight"][1, 3, 4] = float("nan")


def _bias_yes(config, tensors):
    config["use_bias"] = "yes"


def _bad_hash(config, tensors):
    config["unembed_hash"] = "not-a-hash"


def _checkpoint(root):
    (root / "run").mkdir()
    (root / "run" / "checkpoint.pt").write_bytes(b"checkpoint of an earlier run")


def _jlens_checkpoint(root):
    (root / "jrun").mkdir()
    (root / "jrun" / "jlens_fit_state.safetensors").write_bytes(b"running sums of an earlier fit")


def _busy_port(root):
    """A socket listening on a free port, as another program serving there would."""
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    return other


def _collection(root):
    """tree/: a lens collection of one tuned lens, lenses/org/tiny/named-lens."""
    from tunedlens.hub.collection import package_lenses

    model = tiny_model("llama")
    model.config.name_or_path = "org/tiny"
    random_lens(model).save(root / "named-lens")
    package_lenses([root / "named-lens"], root / "tree")
    return root / "tree"


def _edit_index(root, change):
    index = json.loads((_collection(root) / "INDEX.json").read_text())
    change(index["lenses"])
    (root / "tree" / "INDEX.json").write_text(json.dumps(index))


def _index_entry_list(root):
    _edit_index(root, lambda lenses: lenses.update({"lenses/org/tiny/named-lens": ["config.json"]}))


def _index_size_text(root):
    def change(lenses):
        spec = lenses["lenses/org/tiny/named-lens"]["files"]["config.json"]
        spec["size"] = str(spec["size"])

    _edit_index(root, change)


def _linked_folder(root):
    tree = _collection(root)
    (tree / "attic").mkdir()
    (tree / "attic" / "notes.txt").write_text("not listed")
    (tree / "lenses/org/tiny/named-lens/attic").symlink_to(
        "../../../../attic", target_is_directory=True
    )


def _link_out(root):
    (_collection(root) / "lenses/org/tiny/named-lens/outside").symlink_to(root / "report")


def _jlens(root):
    from tunedlens.jacobian.fit import fit_jacobian_lens

    ids = torch.randint(4, 120, (2, 12), generator=torch.Generator().manual_seed(1))
    fit_jacobian_lens(tiny_model("llama"), ids, skip_first=2).save(root / "jlens")


def _fit_part(root, name, part, seq_len=16, **options):
    """A J-lens part fitted as ``fit-jlens`` fits it (on text.txt, 4 prompts)."""
    from tunedlens.commands.fit_jlens import run as run_fit_jlens

    text = str(root / "text.txt")
    options.update(prompts=4, seq_len=seq_len, skip_first=2, part=part)
    return run_fit_jlens(str(root / "model"), root / name, data=text, **options)


def _jlens_copy(root):
    import shutil

    _jlens(root)
    shutil.copytree(root / "jlens", root / "jlens-copy")


def _parts_same(root):
    _fit_part(root, "p0", (0, 2))
    _fit_part(root, "p0-again", (0, 2))


def _parts_overlap(root):
    _fit_part(root, "p0", (0, 2))
    _fit_part(root, "p1of4", (1, 4))


def _parts_seq_len(root):
    _fit_part(root, "p0", (0, 2))
    _fit_part(root, "p1", (1, 2), seq_len=20)


def _parts_other_model(root):
    from tunedlens.jacobian.fit import fit_jacobian_lens

    ids = torch.randint(4, 120, (4, 12), generator=torch.Generator().manual_seed(1))
    other = tiny_model("llama", seed=9)
    for i in range(2):
        fit_jacobian_lens(other, ids[2 * i : 2 * i + 2], skip_first=2).save(root / f"q{i}")


def _random_file(root):
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (2000,), generator=generator, dtype=torch.uint8)
    (root / "random.pt").write_bytes(data.numpy().tobytes())


def _jlens_config(**changes):
    def prepare(root):
        _jlens(root)
        config = json.loads((root / "jlens" / "config.json").read_text())
        (root / "jlens" / "config.json").write_text(json.dumps({**config, **changes}))

    return prepare


_layers_thirty = _jlens_config(num_hidden_layers="thirty")
_prompts_many = _jlens_config(n_prompts="many")
_numeric_hash = _jlens_config(unembed_hash=12345)


def _stopped_fit(root):
    """An interrupted fit-jlens in jstop/ (--seq-len 16, checkpoint every prompt), other.txt."""

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        _fit_part(root, "jstop", None, checkpoint_every=1, progress=stop)
    (root / "other.txt").write_text((root / "text.txt").read_text()[::-1])


def _held_out_text(root):
    (root / "test.txt").write_text(" ".join(f"w{i % 120 + 4}" for i in range(3000)))
    (root / "short.txt").write_text("w5 w6 w7")


def _task(root, name, lines):
    (root / name).write_text("\n".join(json.dumps(line) for line in lines))


def _tasks(root):
    normal = {"prompt": "w9 w10", "choices": [" w5", " w6"], "label": " w5", "anomalous": False}
    _task(root, "one-class.jsonl", [normal] * 4)
    _task(root, "no-label.jsonl", [{k: v for k, v in normal.items() if k != "label"}])
    _task(root, "bad-label.jsonl", [{**normal, "label": " w7"}, {**normal, "anomalous": True}])
    _task(
        root,
        "multi.jsonl",
        [
            {**normal, "choices": [" w5 w7", " w6"], "label": " w6", "anomalous": anomalous}
            for anomalous in (False, False, False, False, True)
        ],
    )


SELF = ["--data", "self", "--self-cache", "{root}/selfcache", "--self-doc-tokens", "8"]
FIT_SELF = ["fit-jlens", "{root}/model", "--out", "{root}/jout", *SELF, "--prompts", "2"]
FIT_SELF += ["--seq-len", "16", "--skip-first", "2"]


def _self_cache(root, sampler):
    """A self-text cache sampled from ``sampler`` where ``model/``'s text (of SELF) is looked for."""
    from tunedlens.data import SelfTextSettings, sample_self_text
    from tunedlens.data.self_text import cache_path
    from tunedlens.models import load_model

    model, tokenizer = load_model(root / "model")
    settings = SelfTextSettings(cache_dir=root / "selfcache", doc_tokens=8)
    sampled = sample_self_text(sampler or model, tokenizer, settings, tokens_needed=10)
    target = cache_path(model, tokenizer, settings)
    sampled.path.rename(target)
    return target


def _other_model_cache(root):
    _self_cache(root, tiny_model("llama", seed=9))


def _other_settings_cache(root):
    import gzip

    path = _self_cache(root, None)
    with gzip.open(path, "rt") as handle:
        lines = [json.loads(line) for line in handle]
    lines[0]["sampling"]["seed"] = 5
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(line) + "\n" for line in lines)


PREPARED = (
    *(_checkpoint, _jlens_checkpoint, _jlens, _jlens_copy, _parts_same, _parts_overlap),
    *(_parts_seq_len, _parts_other_model, _random_file, _layers_thirty, _prompts_many),
    *(_numeric_hash, _stopped_fit),
    *(_index_entry_list, _index_size_text, _linked_folder, _link_out),
    *(_held_out_text, _tasks, _other_model_cache, _other_settings_cache),
)
"""Prepare functions that build their own inputs (the others change a copy of lens/)."""


M, P = "{root}/model", "w1 w2 w3"
EXIT = ["analyze", "early-exit", M, "--data", "{root}/text.txt", "--seq-len", "32"]
TRAIN = [
    "--data",
    "{root}/text.txt",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--tokens-per-step",
    "64",
    "--tokens",
    "128",
    "--val-tokens",
    "64",
]
CASES = {
    # --data self (text sampled from the model)
    "self without a tokenizer": (
        ["train", "{root}/weights", "--out", "{root}/srun", *SELF, *TRAIN[2:]],
        "--data self samples text from the model and needs its tokenizer",
        None,
    ),
    "self temperature zero": (
        ["eval", M, "--data", "self", "--self-temperature", "0"],
        "--self-temperature must be > 0",
        None,
    ),
    "self temperature negative": (
        [*FIT_SELF, "--self-temperature", "-0.5"],
        "--self-temperature must be > 0",
        None,
    ),
    "self top-p above one": (
        ["train", M, "--out", "{root}/srun", *SELF, "--self-top-p", "1.5", *TRAIN[2:]],
        "--self-top-p must be in (0, 1]",
        None,
    ),
    "self top-p zero": (
        ["eval", M, "--data", "self", "--self-top-p", "0"],
        "--self-top-p must be in (0, 1]",
        None,
    ),
    "self cache is a file": (
        ["eval", M, "--data", "self", "--self-cache", "{root}/afile"],
        "is a file, not a directory",
        None,
    ),
    "self cache of another model": (FIT_SELF, "was sampled from another model", _other_model_cache),
    "self cache of other settings": (
        FIT_SELF,
        "was sampled with other settings: --self-seed 5 (this run: 0)",
        _other_settings_cache,
    ),
    "self options without self data": (
        ["eval", M, "--data", "{root}/text.txt", "--self-seed", "3"],
        "drop them or pass --data self",
        None,
    ),
    "self validation data": (
        ["train", M, "--out", "{root}/srun", *SELF, "--val-data", "self", *TRAIN[2:]],
        "--val-data self would sample the very text trained on",
        None,
    ),
    "self time budget without self tokens": (
        ["train", M, "--out", "{root}/srun", *SELF, "--time-budget", "60", *TRAIN[2:8]],
        "--time-budget with --data self needs --self-tokens",
        None,
    ),
    # predict
    "nan lens": (["predict", M, P, "--lens", "{root}/nan-lens"], "holds NaN or Inf", _nan),
    "nan lens json": (["predict", M, P, "--lens", "{root}/nan-lens", "--json"], "layer 1", _nan),
    "bias yes": (
        ["predict", M, P, "--lens", "{root}/nan-lens"],
        "'use_bias' must be true or false",
        _bias_yes,
    ),
    "hash not hex": (
        ["predict", M, P, "--lens", "{root}/nan-lens"],
        "sha256 hex digest",
        _bad_hash,
    ),
    "layers beyond": (["predict", M, P, "--layers", "99:200"], "selects no layer", None),
    "layers reversed": (["predict", M, P, "--layers", "10:5"], "selects no layer", None),
    "layers out of range": (["predict", M, P, "--layers", "7"], "out of range", None),
    "position": (["predict", M, P, "--position", "1000"], "--position", None),
    "top-k": (["predict", M, P, "--top-k", "0"], "--top-k", None),
    "empty prompt": (["predict", M, ""], "prompt is empty", None),
    "missing lens": (["predict", M, P, "--lens", "{root}/nowhere"], "no lens directory", None),
    "lens of another model": (["predict", M, P, "--lens", "{root}/gpt2-lens"], "fingerprint", None),
    "no tokenizer": (["predict", "{root}/weights", P], "--tokenizer", None),
    "bad dtype": (["predict", M, P, "--dtype", "float8"], "dtype", None),
    # show
    "show suffix": (["show", M, P, "--out", "{root}/fig.pdf"], ".html or .png", None),
    "show out is a directory": (["show", M, P, "--out", "{root}/fig.html"], "is a directory", None),
    "show missing folder": (
        ["show", M, P, "--out", "{root}/no/such/fig.png"],
        "does not exist",
        None,
    ),
    "show stride": (["show", M, P, "--stride", "0", "--out", "{root}/new.png"], "--stride", None),
    "show stat": (
        ["show", M, P, "--stat", "perplexity", "--out", "{root}/new.png"],
        "perplexity",
        None,
    ),
    "show plotly mode": (
        ["show", M, P, "--plotly", "offline", "--out", "{root}/new.html"],
        "unknown --plotly 'offline'; choose one of directory, inline, cdn",
        None,
    ),
    "show compare length": (
        ["show", M, P, "--compare", "w1 w2", "--out", "{root}/new.png"],
        "same token length",
        None,
    ),
    # train
    "train out is a file": (["train", M, "--out", "{root}/afile", *TRAIN], "is a file", None),
    "train lens format": (
        ["train", M, "--out", "{root}/fmt", *TRAIN, "--format", "bogus"],
        "--format must be 'native' or 'tuned-lens', got 'bogus'",
        None,
    ),
    "train over a lens": (
        ["train", M, "--out", "{root}/lens", *TRAIN],
        "already holds a lens",
        None,
    ),
    "train resume nothing": (
        ["train", M, "--out", "{root}/fresh", "--resume", *TRAIN],
        "holds no checkpoint",
        None,
    ),
    "train resume no every": (
        ["train", M, "--out", "{root}/run", "--resume", *TRAIN],
        "--checkpoint-every",
        _checkpoint,
    ),
    "train over a checkpoint": (
        ["train", M, "--out", "{root}/run", *TRAIN],
        "--resume",
        _checkpoint,
    ),
    "train lr nan": (["train", M, "--out", "{root}/fresh", *TRAIN, "--lr", "nan"], "lr=nan", None),
    "train no tokenizer": (
        ["train", "{root}/weights", "--out", "{root}/fresh", *TRAIN],
        "--tokenizer",
        None,
    ),
    "train too little data": (
        ["train", M, "--out", "{root}/fresh", *TRAIN[:-6], "--tokens", "1000000"],
        "needed",
        None,
    ),
    "train time budget huge": (
        ["train", M, "--out", "{root}/fresh", *TRAIN[:-4], "--time-budget", "1e9h"],
        "longer than 30 days",
        None,
    ),
    # eval
    "eval over a report": (
        ["eval", M, "--out", "{root}/report", "--data", "{root}/text.txt"],
        "already holds metrics.json",
        None,
    ),
    "eval tokens": (
        ["eval", M, "--out", "{root}/new", "--tokens", "8", "--seq-len", "16"],
        "--seq-len",
        None,
    ),
    "eval plotly mode": (
        ["eval", M, "--out", "{root}/new", "--plotly", "file"],
        "unknown --plotly 'file'",
        None,
    ),
    "eval nan lens": (["eval", M, "--out", "{root}/new", "--lens", "{root}/nan-lens"], "NaN", _nan),
    "eval missing data": (
        ["eval", M, "--out", "{root}/new", "--data", "{root}/none.txt"],
        "does not exist",
        None,
    ),
    "train missing data": (
        ["train", M, "--out", "{root}/fresh", *TRAIN[2:], "--data", "{root}/none.jsonl"],
        "does not exist",
        None,
    ),
    "train fsdp one process": (
        ["train", M, "--out", "{root}/fresh", *TRAIN, "--fsdp"],
        "launch with torchrun --nproc-per-node N",
        None,
    ),
    "show missing lens": (
        ["show", M, P, "--lens", "{root}/nowhere", "--out", "{root}/new.png"],
        "no lens directory",
        None,
    ),
    # fit-jlens
    "fit-jlens seq-len": (
        ["fit-jlens", M, "--out", "{root}/j", "--data", "{root}/text.txt", "--seq-len", "10"],
        "--skip-first",
        None,
    ),
    "fit-jlens fsdp one process": (
        ["fit-jlens", M, "--out", "{root}/j", "--data", "{root}/text.txt", "--fsdp"],
        "launch with torchrun --nproc-per-node N",
        None,
    ),
    "fit-jlens over a lens": (
        ["fit-jlens", M, "--out", "{root}/lens", "--data", "{root}/text.txt"],
        "already holds",
        None,
    ),
    "fit-jlens missing data": (
        ["fit-jlens", M, "--out", "{root}/j", "--data", "{root}/none.txt"],
        "does not exist",
        None,
    ),
    "fit-jlens part order": (
        ["fit-jlens", M, "--out", "{root}/j", "--data", "{root}/text.txt", "--part", "3/2"],
        "0 <= I < N",
        None,
    ),
    "fit-jlens part form": (
        ["fit-jlens", M, "--out", "{root}/j", "--data", "{root}/text.txt", "--part", "half"],
        "I/N",
        None,
    ),
    "fit-jlens resume nothing": (
        [
            "fit-jlens",
            M,
            "--out",
            "{root}/j",
            "--data",
            "{root}/text.txt",
            "--resume",
            "--checkpoint-every",
            "1",
        ],
        "no J-lens fit checkpoint",
        None,
    ),
    "fit-jlens resume no every": (
        ["fit-jlens", M, "--out", "{root}/jrun", "--data", "{root}/text.txt", "--resume"],
        "--checkpoint-every",
        _jlens_checkpoint,
    ),
    "fit-jlens over a checkpoint": (
        ["fit-jlens", M, "--out", "{root}/jrun", "--data", "{root}/text.txt"],
        "--resume",
        _jlens_checkpoint,
    ),
    "fit-jlens damaged checkpoint": (
        [
            "fit-jlens",
            M,
            "--out",
            "{root}/jrun",
            "--data",
            "{root}/text.txt",
            "--resume",
            "--checkpoint-every",
            "1",
        ],
        "damaged",
        _jlens_checkpoint,
    ),
    "unknown published jlens": (
        ["predict", M, P, "--lens", "jlens:qwen9"],
        "no published J-lens",
        None,
    ),
    "fit-jlens skip-first": (
        ["fit-jlens", M, "--out", "{root}/j", "--data", "{root}/text.txt", "--skip-first", "-1"],
        "--skip-first (positions left out",
        None,
    ),
    "fit-jlens dim-batch": (
        ["fit-jlens", M, "--out", "{root}/j", "--data", "{root}/text.txt", "--dim-batch", "0"],
        "--dim-batch (output dimensions",
        None,
    ),
    "fit-jlens prompts": (
        ["fit-jlens", M, "--out", "{root}/j", "--data", "{root}/text.txt", "--prompts", "0"],
        "--prompts must be at least 1",
        None,
    ),
    "fit-jlens device": (
        ["fit-jlens", M, "--out", "{root}/j", "--data", "{root}/text.txt", "--device", "gpu"],
        "--device 'gpu' is not a device",
        None,
    ),
    "fit-jlens too little data": (
        ["fit-jlens", M, "--out", "{root}/j", "--data", "{root}/text.txt", "--prompts", "100000"],
        "Lower --prompts or --seq-len",
        None,
    ),
    "fit-jlens resume seq-len": (
        [
            "fit-jlens",
            M,
            "--out",
            "{root}/jstop",
            "--data",
            "{root}/text.txt",
            "--prompts",
            "4",
            "--skip-first",
            "2",
            "--checkpoint-every",
            "1",
            "--resume",
            "--seq-len",
            "20",
        ],
        "seq_len (--seq-len): 16 -> 20",
        _stopped_fit,
    ),
    "fit-jlens resume data": (
        [
            "fit-jlens",
            M,
            "--out",
            "{root}/jstop",
            "--data",
            "{root}/other.txt",
            "--prompts",
            "4",
            "--skip-first",
            "2",
            "--checkpoint-every",
            "1",
            "--resume",
            "--seq-len",
            "16",
        ],
        "data (--data)",
        _stopped_fit,
    ),
    # lens merge
    "merge one part": (
        ["lens", "merge", M, "{root}/jlens", "--out", "{root}/merged"],
        "at least two",
        _jlens,
    ),
    "merge a tuned lens": (
        ["lens", "merge", M, "{root}/jlens", "{root}/lens", "--out", "{root}/merged"],
        "holds no J-lens",
        _jlens,
    ),
    "convert jlens to tuned-lens": (
        ["lens", "convert", "{root}/jlens", "{root}/conv", "--format", "tuned-lens"],
        "affine translators only",
        _jlens,
    ),
    "convert jlens artifact name": (
        ["lens", "convert", "{root}/jlens", "{root}/conv", "--format", "artifact"],
        ".pt",
        _jlens,
    ),
    "merge the same part twice": (
        ["lens", "merge", M, "{root}/jlens", "{root}/jlens", "--out", "{root}/merged"],
        "jlens is given twice",
        _jlens,
    ),
    "merge a copy of a part": (
        ["lens", "merge", M, "{root}/jlens", "{root}/jlens-copy", "--out", "{root}/merged"],
        "fitted on the same prompts",
        _jlens_copy,
    ),
    "merge a part fitted twice": (
        ["lens", "merge", M, "{root}/p0", "{root}/p0-again", "--out", "{root}/merged"],
        "fitted on the same prompts",
        _parts_same,
    ),
    "merge overlapping parts": (
        ["lens", "merge", M, "{root}/p0", "{root}/p1of4", "--out", "{root}/merged"],
        "share prompt 1 of the fit",
        _parts_overlap,
    ),
    "merge other settings": (
        ["lens", "merge", M, "{root}/p0", "{root}/p1", "--out", "{root}/merged"],
        "seq_len=16",
        _parts_seq_len,
    ),
    "merge parts of another model": (
        ["lens", "merge", M, "{root}/q0", "{root}/q1", "--out", "{root}/merged"],
        "pass as MODEL the model the parts",
        _parts_other_model,
    ),
    "merge device": (
        [
            "lens",
            "merge",
            M,
            "{root}/jlens",
            "{root}/jlens-copy",
            "--out",
            "{root}/merged",
            "--device",
            "gpu",
        ],
        "--device 'gpu'",
        _jlens_copy,
    ),
    "info random bytes": (
        ["lens", "info", "{root}/random.pt"],
        "is not a torch file",
        _random_file,
    ),
    "jlens layers not a number": (
        ["lens", "info", "{root}/jlens"],
        "'num_hidden_layers' must be a positive integer",
        _layers_thirty,
    ),
    "jlens prompts not a number": (
        ["lens", "info", "{root}/jlens"],
        "'n_prompts' must be an integer >= 0",
        _prompts_many,
    ),
    "jlens numeric fingerprint": (
        ["predict", M, P, "--lens", "{root}/jlens"],
        "'unembed_hash' must be a sha256 hex digest",
        _numeric_hash,
    ),
    # analyze prune
    "prune max-remove": (
        [
            "analyze",
            "prune",
            M,
            "--data",
            "{root}/text.txt",
            "--test-data",
            "{root}/test.txt",
            "--max-remove",
            "0",
        ],
        "--max-remove",
        _held_out_text,
    ),
    "prune same data": (
        ["analyze", "prune", M, "--data", "{root}/text.txt", "--test-data", "{root}/text.txt"],
        "--allow-same-data",
        None,
    ),
    "prune every block": (
        [
            "analyze",
            "prune",
            M,
            "--data",
            "{root}/text.txt",
            "--test-data",
            "{root}/test.txt",
            "--max-remove",
            "2",
            "--tokens",
            "64",
            "--test-tokens",
            "64",
            "--seq-len",
            "16",
        ],
        "every block",
        _held_out_text,
    ),
    "prune lens of another model": (
        [
            "analyze",
            "prune",
            M,
            "--data",
            "{root}/text.txt",
            "--test-data",
            "{root}/test.txt",
            "--lens",
            "{root}/gpt2-lens",
        ],
        "fingerprint",
        _held_out_text,
    ),
    "prune short test data": (
        [
            "analyze",
            "prune",
            M,
            "--data",
            "{root}/text.txt",
            "--test-data",
            "{root}/short.txt",
            "--tokens",
            "64",
            "--test-tokens",
            "64",
            "--seq-len",
            "16",
        ],
        "needed",
        _held_out_text,
    ),
    # analyze detect
    "detect one class": (
        ["analyze", "detect", M, "--task", "{root}/one-class.jsonl"],
        "one class",
        _tasks,
    ),
    "detect missing field": (
        ["analyze", "detect", M, "--task", "{root}/no-label.jsonl"],
        "label",
        _tasks,
    ),
    "detect label outside": (
        ["analyze", "detect", M, "--task", "{root}/bad-label.jsonl"],
        "not one of its choices",
        _tasks,
    ),
    "detect multi-token choices": (
        ["analyze", "detect", M, "--task", "{root}/multi.jsonl"],
        "single token",
        _tasks,
    ),
    "detect shots": (
        ["analyze", "detect", M, "--task", "capitals", "--shots", "100000"],
        "shots=100000 is more than",
        None,
    ),
    # analyze early-exit
    "early-exit threshold outside its range": (
        [*EXIT, "--threshold", "max-prob=0.5,1.5"],
        "max-prob threshold 1.5 is outside its range",
        None,
    ),
    "early-exit threshold not a number": (
        [*EXIT, "--threshold", "entropy=low"],
        "'low' is not a number",
        None,
    ),
    "early-exit threshold of a measure not run": (
        [*EXIT, "--measure", "margin", "--threshold", "entropy=1"],
        "not among the measures",
        None,
    ),
    "early-exit unknown measure": ([*EXIT, "--measure", "confidence"], "unknown measure", None),
    "early-exit delta": ([*EXIT, "--delta", "1.5"], "--delta must lie strictly between", None),
    "early-exit epsilon": ([*EXIT, "--epsilon", "0"], "--epsilon must lie strictly between", None),
    "early-exit check every 0": ([*EXIT, "--check-every", "0"], "--check-every must be", None),
    "early-exit two schedules": (
        [*EXIT, "--check-every", "2", "--check-rows", "1"],
        "pass one of them",
        None,
    ),
    "early-exit check rows not numbers": ([*EXIT, "--check-rows", "a,b"], "--check-rows", None),
    "early-exit check row past the blocks": (
        [*EXIT, "--check-rows", "0,2"],
        "--check-rows 2: outside 0..1",
        None,
    ),
    "early-exit tokens under one sequence": (
        [*EXIT, "--tokens", "16"],
        "shorter than one sequence",
        None,
    ),
    "early-exit data shorter than asked": (
        ["analyze", "early-exit", M, "--data", "{root}/short.txt", "--seq-len", "16"],
        "needed",
        _held_out_text,
    ),
    "early-exit lens of another model": (
        [*EXIT, "--lens", "{root}/gpt2-lens"],
        "fingerprint",
        None,
    ),
    "early-exit generate without a tokenizer": (
        ["analyze", "early-exit", "{root}/weights", "--data", "{root}/text.txt", "--generate", "4"],
        "no tokenizer",
        None,
    ),
    "early-exit generate delta": (
        [*EXIT, "--generate", "4", "--generate-delta", "0.2"],
        "--generate-delta 0.2 must be one of",
        None,
    ),
    "early-exit prompts as long as a sequence": (
        [*EXIT, "--generate", "4", "--prompt-tokens", "32"],
        "--prompt-tokens (32) must be shorter",
        None,
    ),
    "early-exit out holds user files": (
        [*EXIT, "--out", "{root}/report"],
        "which tunedlens did not write",
        None,
    ),
    # serve (every check happens before the server starts)
    "serve remote host": (["serve", M, "--host", "0.0.0.0"], "--allow-remote", None),
    "serve lens of another model": (
        ["serve", M, "--lens", "{root}/gpt2-lens"],
        "fingerprint",
        None,
    ),
    "serve max tokens": (["serve", M, "--max-tokens", "0"], "--max-tokens", None),
    "serve eval report": (["serve", M, "--eval", "{root}/nowhere"], "cannot read", None),
    "serve port too large": (
        ["serve", M, "--port", "70000"],
        "--port must be a whole number from 1 to 65535",
        None,
    ),
    "serve port zero": (["serve", M, "--port", "0"], "--port must be a whole number", None),
    "serve port negative": (["serve", M, "--port", "-1"], "--port must be a whole number", None),
    "serve port in use": (["serve", M, "--port", "{port}"], "is in use; pass --port", _busy_port),
    "serve eval folder without a report": (
        ["serve", M, "--eval", "{root}/lens"],
        "holds no metrics.json",
        None,
    ),
    # lens info / convert
    "info nan": (["lens", "info", "{root}/nan-lens"], "holds NaN or Inf", _nan),
    "info missing": (["lens", "info", "{root}/nowhere"], "no lens directory", None),
    "convert over a lens": (
        ["lens", "convert", "{root}/lens", "{root}/other-lens"],
        "already holds",
        None,
    ),
    "convert nan": (["lens", "convert", "{root}/nan-lens", "{root}/converted"], "NaN", _nan),
    "convert same": (["lens", "convert", "{root}/lens", "{root}/lens"], "same directory", None),
    # hub / lens list / lens curves / lens locations
    "verify entry not an object": (
        ["hub", "verify", "{root}/tree"],
        "the entry must be an object",
        _index_entry_list,
    ),
    "list entry not an object": (
        ["lens", "list", "--collection", "{root}/tree"],
        "the entry must be an object",
        _index_entry_list,
    ),
    "verify size as text": (
        ["hub", "verify", "{root}/tree"],
        ".size must be a whole number of bytes",
        _index_size_text,
    ),
    "verify file behind a folder link": (
        ["hub", "verify", "{root}/tree"],
        "named-lens/attic/notes.txt is in the tree but not listed",
        _linked_folder,
    ),
    "verify link out of the tree": (
        ["hub", "verify", "{root}/tree"],
        "outside the collection",
        _link_out,
    ),
    "download out is a file": (
        ["hub", "download", "org/lenses", "--out", "{root}/afile"],
        "is a file, not a directory",
        None,
    ),
    "curves plotly mode": (
        ["lens", "curves", "{root}/lens", "--plotly", "none"],
        "unknown --plotly 'none'",
        None,
    ),
    "curves missing run": (["lens", "curves", "{root}/nosuch-run"], "run folder", None),
    "curves run without a log": (
        ["lens", "curves", "{root}/lens"],
        "holds no train_log.jsonl",
        None,
    ),
    "empty tuned-lens location": (
        ["predict", M, P, "--lens", "tuned-lens:"],
        "has no model id",
        None,
    ),
    "empty jlens location": (["predict", M, P, "--lens", "jlens:"], "has no J-lens", None),
    "empty hf location": (["predict", M, P, "--lens", "hf:"], "has no repository", None),
}


def _snapshot(root) -> dict:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, world, monkeypatch, capsys, request):
    args, message, prepare = CASES[case]
    keys = {"root": world}
    if prepare is _busy_port:
        other = prepare(world)
        request.addfinalizer(other.close)
        keys["port"] = other.getsockname()[1]
    elif prepare in PREPARED:
        prepare(world)
    elif prepare is not None:
        _broken_lens(world, "nan-lens", prepare)
    before = _snapshot(world)
    monkeypatch.setattr(sys, "argv", ["tunedlens", *(a.format(**keys) for a in args)])
    with pytest.raises(SystemExit) as caught:
        main()
    out = capsys.readouterr()
    assert caught.value.code == 2, out
    assert "Traceback" not in out.err + out.out
    assert message in out.err, out.err
    error_lines = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, out.err
    assert _snapshot(world) == before, "a file was changed or written"
