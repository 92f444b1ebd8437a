"""``--force`` replaces an earlier run's output of the same kind, and never anything else.

One table for every command that replaces its output (train, fit-jlens, eval, lens convert of a
tuned lens and of a J-lens, lens merge, hub package --update): an output folder that is the
current folder, a parent of it, the current folder by its absolute path, a relative path or a
symbolic link, the parent of an input, an input itself, or a folder holding files tunedlens did
not write is refused with exit code 2 and one ``error:`` line, and every file and folder is
byte for byte what it was. Then: ``--force`` over an earlier run of the same kind replaces it
(its files gone, the new ones there), and a failure while writing leaves the earlier run whole.
"""

import hashlib
import json
import os
import shutil
import sys

import pytest
import torch
from typer.testing import CliRunner

from tiny_models import random_lens, tiny_model, tiny_tokenizer, word_text
from tunedlens.cli import main
from tunedlens.cli.app import app
from tunedlens.hub.collection import package_lenses, verify_collection
from tunedlens.jacobian.fit import fit_jacobian_lens
from tunedlens.lenses import read_lens
from tunedlens.lenses.io.jlens_files import read_artifact, read_native

runner = CliRunner()
HUB_MODEL = "org/tiny"


def _jlens(path, seed=1):
    ids = torch.randint(4, 120, (2, 12), generator=torch.Generator().manual_seed(seed))
    fit_jacobian_lens(tiny_model("llama"), ids, skip_first=2).save(path)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """in/: the inputs (model, text, lens, J-lens, a collection); home/: the user's folders.

    home/work holds notes.txt, sub/, copies of a tuned lens, a J-lens and two J-lens parts (the
    folder of the reported bug); home/link is a symbolic link to it; home/mixed holds a tuned lens
    and the user's notes.txt and sub/.
    """
    root = tmp_path_factory.mktemp("force")
    inputs, work = root / "in", root / "home" / "work"
    model = tiny_model("llama")
    model.save_pretrained(inputs / "model")
    tiny_tokenizer().save_pretrained(inputs / "model")
    word_text(inputs / "text.txt", 2000)
    random_lens(model).save(inputs / "lens")
    _jlens(inputs / "jl")
    hub_model = tiny_model("llama")
    hub_model.config.name_or_path = HUB_MODEL
    random_lens(hub_model).save(inputs / "hubsrc" / "lens-a")
    package_lenses([inputs / "hubsrc" / "lens-a"], inputs / "coll")
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("my notes")
    (work / "sub" / "draft.txt").write_text("a draft")
    shutil.copytree(inputs / "lens", work / "lens-copy")
    for name in ("jl-copy", "jp0", "jp1"):
        shutil.copytree(inputs / "jl", work / name)
    shutil.copytree(inputs / "lens", root / "home" / "mixed")
    shutil.copytree(work / "sub", root / "home" / "mixed" / "sub")
    shutil.copyfile(work / "notes.txt", root / "home" / "mixed" / "notes.txt")
    return root


@pytest.fixture
def world(template, tmp_path):
    """A fresh copy of the template (see there), with home/link made here."""
    root = tmp_path / "world"
    shutil.copytree(template, root)
    (root / "home" / "link").symlink_to(root / "home" / "work", target_is_directory=True)
    return root


M = "{root}/in/model"
TRAIN = f"train {M} --data {{root}}/in/text.txt --seq-len 16 --batch-size 4 --tokens-per-step 64 --val-tokens 64 --force"
FIT = f"fit-jlens {M} --data {{root}}/in/text.txt --seq-len 20 --skip-first 4 --force"
EVAL = f"eval {M} --lens {{root}}/in/lens --data {{root}}/in/text.txt --tokens 64 --seq-len 16 --no-plots --force"
MERGE = f"lens merge {M} {{root}}/home/work/jp0 {{root}}/home/work/jp1 --force --out"
HERE, PARENT = "the current folder", "a parent of the current folder"
# Where each command is told to write: (folder to run in, output, what the refusal says).
PLACES = {
    ".": ("home/work", ".", HERE),
    "..": ("home/work/sub", "..", PARENT),
    "$PWD": ("home/work", "{root}/home/work", HERE),
    "relative": ("home/work/sub", "../../work", PARENT),
    "symlink": ("home/work", "{root}/home/link", HERE),
    "input's parent": ("home", "{root}/in", "holds the input"),
    "foreign files": ("home", "mixed", "notes.txt"),
}
COMMANDS = {  # the command line, with OUT where the output goes
    "train": f"{TRAIN} --tokens 128 --out OUT",
    "fit-jlens": f"{FIT} --out OUT",
    "eval": f"{EVAL} --out OUT",
    "convert tuned": "lens convert {root}/in/lens OUT --force",
    "convert jlens": "lens convert {root}/in/jl OUT --force",
    "merge": f"{MERGE} OUT",
}
CASES = {
    f"{command} {place}": (cwd, line.replace("OUT", out), message)
    for command, line in COMMANDS.items()
    for place, (cwd, out, message) in PLACES.items()
}
CASES |= {
    # The input itself.
    "train model": ("home", COMMANDS["train"].replace("OUT", M), "is the input"),
    "train data": ("home", COMMANDS["train"].replace("OUT", "{root}/in/text.txt"), "is a file"),
    "fit-jlens model": ("home", f"{FIT} --out {M}", "is the input"),
    "eval lens": ("home", f"{EVAL} --out {{root}}/in/lens", "is the input"),
    "eval model": ("home", f"{EVAL} --out {M}", "is the input"),
    "convert tuned itself": ("home", "lens convert {root}/in/lens {root}/in/lens --force", "same"),
    "convert jlens itself": ("home", "lens convert {root}/in/jl {root}/in/jl --force", "same"),
    "merge part": ("home", f"{MERGE} {{root}}/home/work/jp0", "is the input"),
    "merge part relative": ("home/work", f"{MERGE} jp1", "is the input"),
    # The reported bug, as typed: the input in the current folder.
    "convert jlens here": ("home/work", "lens convert jl-copy . --force", HERE),
    "merge here": ("home/work", f"lens merge {M} jp0 jp1 --out . --force", HERE),
    # Another command's output is foreign too.
    "fit-jlens over a tuned lens": ("home", f"{FIT} --out {{root}}/in/lens", "lens.safetensors"),
    "convert tuned over a J-lens": (
        "home",
        "lens convert {root}/in/lens {root}/in/jl --force",
        "jlens.safetensors",
    ),
    "eval over a lens": (
        "home",
        f"{EVAL} --out {{root}}/home/work/lens-copy",
        "config.json, lens.safetensors",
    ),
    "convert artifact over a text": (
        "home",
        "lens convert {root}/in/jl {root}/home/work/notes.pt --format artifact --force",
        "not a J-lens artifact",
    ),
    # hub package --update: the root must be a collection; a lens folder it replaces must hold
    # only the files the index lists, and must not be the current folder.
    "hub .": ("home/work", "hub package lens-copy --update --out .", "not a lens collection"),
    "hub ..": (
        "home/work/sub",
        "hub package ../lens-copy --update --out ..",
        "not a lens collection",
    ),
    "hub $PWD": (
        "home/work",
        "hub package lens-copy --update --out {root}/home/work",
        "not a lens collection",
    ),
    "hub symlink": (
        "home/work",
        "hub package lens-copy --update --out {root}/home/link",
        "not a lens collection",
    ),
    "hub input's parent": (
        "home",
        "hub package {root}/in/hubsrc/lens-a --update --out {root}/in/hubsrc",
        "not a lens collection",
    ),
    "hub input itself": (
        "home",
        "hub package {root}/in/hubsrc/lens-a --update --out {root}/in/hubsrc/lens-a",
        "not a lens collection",
    ),
    "hub foreign files": (
        "home",
        "hub package {root}/in/hubsrc/lens-a --update --out mixed",
        "notes.txt",
    ),
    "hub replaced lens is here": (
        "in/coll/lenses/org/tiny/lens-a",
        "hub package {root}/in/hubsrc/lens-a --update --out ../../../..",
        HERE,
    ),
    "hub replaced lens holds foreign files": (
        "home",
        "hub package {root}/in/hubsrc/lens-a --update --out {root}/in/coll",
        "my-notes.txt",
    ),
}


def _snapshot(root) -> dict:
    """sha256 of every file, and every folder and link, under ``root``."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = "link to " + os.readlink(path)
        elif path.is_dir():
            found[key] = "folder"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_force_refuses(case, world, monkeypatch, capsys):
    cwd, args, message = CASES[case]
    if case == "hub replaced lens holds foreign files":
        (world / "in/coll/lenses/org/tiny/lens-a/my-notes.txt").write_text("mine")
    if case == "convert artifact over a text":
        (world / "home/work/notes.pt").write_text("not a tensor file")
    before = _snapshot(world)
    monkeypatch.chdir(world / cwd)
    monkeypatch.setattr(sys, "argv", ["tunedlens", *args.format(root=world).split()])
    with pytest.raises(SystemExit) as caught:
        main()
    out = capsys.readouterr()
    assert caught.value.code == 2, out
    assert "Traceback" not in out.err + out.out
    assert message in out.err, out.err
    error_lines = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, out.err
    assert "--force" not in error_lines[0] or "--force replaces only" in error_lines[0], out.err
    assert _snapshot(world) == before, "a file or folder was changed, written or removed"


def test_without_force_suggests_it_only_where_allowed(world, monkeypatch, capsys):
    """An earlier output of the same kind: pass --force; anywhere --force is refused: never."""
    (world / "home" / "work" / "jlens_fit_state.safetensors").write_bytes(b"an unfinished fit")

    def error(cwd, line):
        monkeypatch.chdir(world / cwd)
        argv = line.replace(" --force", "").format(root=world).split()
        monkeypatch.setattr(sys, "argv", ["tunedlens", *argv])
        with pytest.raises(SystemExit):
            main()
        return capsys.readouterr().err

    for line in ("lens convert {root}/in/lens {root}/home/work/lens-copy", f"{EVAL} --out report"):
        (world / "home" / "report").mkdir(exist_ok=True)
        (world / "home" / "report" / "metrics.json").write_text("{}")
        assert "pass --force to replace it" in error("home", line)
    for cwd, line in [
        *(
            (cwd, line.replace("OUT", out))
            for cwd, out, _ in PLACES.values()
            for line in COMMANDS.values()
        ),
        ("home/work", f"{FIT} --out ."),
        ("home", f"{FIT} --out mixed"),
    ]:
        message = error(cwd, line)
        assert message.startswith("error:") or "\nerror:" in message, message
        assert "pass --force" not in message and "--force to" not in message, message


def _invoke(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def _command(world, base, *args, force=False):
    """``base`` (TRAIN, FIT, EVAL) for ``world``, with or without --force, then ``args``."""
    filled = [arg for arg in base.format(root=world).split() if arg != "--force"]
    return [*filled, *map(str, args), *(["--force"] if force else [])]


def _leftovers(folder):
    """Hidden staging or set-aside folders beside an output."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_train_force_replaces_an_earlier_run(world):
    out = world / "home" / "run"
    _invoke(*_command(world, TRAIN, "--tokens", "128", "--out", out, "--checkpoint-every", "1"))
    assert (out / "checkpoint.pt").exists()
    (out / "curves.html").write_text("drawn from the earlier run")
    (out / "plotly-2.0.0.min.js").write_text("its plotly.js (lens curves --out RUN/curves.html)")
    _invoke(*_command(world, TRAIN, "--tokens", "256", "--out", out, force=True))
    assert sorted(path.name for path in out.iterdir()) == [
        "config.json",
        "lens.safetensors",
        "provenance.json",
        "train_log.jsonl",
    ]
    steps = [
        json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]  # the new run's log only, not appended to the earlier one
    assert json.loads((out / "provenance.json").read_text())["training"]["train_tokens"] == 256
    assert _leftovers(out.parent) == []


def test_fit_jlens_force_replaces_an_earlier_fit(world):
    out = world / "home" / "fit"
    _invoke(*_command(world, FIT, "--prompts", "2", "--out", out))
    (out / "jlens_fit_state.rank1.safetensors").write_bytes(b"sums of an unfinished fit")
    _invoke(
        *_command(world, FIT, "--prompts", "3", "--out", out, "--checkpoint-every", "1", force=True)
    )
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "jlens.safetensors"]
    assert json.loads((out / "config.json").read_text())["n_prompts"] == 3
    assert _leftovers(out.parent) == []


def test_eval_force_replaces_an_earlier_report(world):
    out = world / "home" / "report"
    _invoke(*_command(world, EVAL, "--out", out, "--bootstrap", "0"))
    assert (out / "records.csv").exists()
    (out / "kl.png").write_bytes(b"a figure of the earlier report")
    _invoke(
        *_command(world, EVAL, "--out", out, "--bootstrap", "0", "--prompts", "none", force=True)
    )
    assert sorted(path.name for path in out.iterdir()) == ["metrics.json", "summary.md"]
    assert _leftovers(out.parent) == []


def test_convert_force_replaces_an_earlier_conversion(world):
    out = world / "home" / "converted"
    _invoke("lens", "convert", world / "in" / "lens", out)
    assert (out / "lens.safetensors").exists()
    _invoke("lens", "convert", world / "in" / "lens", out, "--format", "tuned-lens", "--force")
    assert sorted(path.name for path in out.iterdir()) == [
        "config.json",
        "params.pt",
        "provenance.json",
    ]
    assert read_lens(out).format == "tuned-lens"
    jout = world / "home" / "jconverted"
    shutil.copytree(world / "home" / "work" / "jp0", jout)
    (jout / ".jlens.safetensors.tmp1234").write_bytes(b"left by a killed write")
    _invoke("lens", "convert", world / "in" / "jl", jout, "--force")
    assert sorted(path.name for path in jout.iterdir()) == ["config.json", "jlens.safetensors"]
    artifact, other = world / "home" / "j.pt", world / "home" / "other-jl"
    _invoke("lens", "convert", world / "in" / "jl", artifact, "--format", "artifact")
    _jlens(other, seed=2)
    _invoke("lens", "convert", other, artifact, "--format", "artifact", "--force")
    written, _, _ = read_artifact(artifact)
    expected, _, _, _ = read_native(other)
    assert all(torch.allclose(written[row].float(), expected[row], atol=1e-2) for row in written)
    assert _leftovers(world / "home") == []


def test_merge_force_replaces_an_earlier_merge(world):
    parts = [world / "home" / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        _invoke(*_command(world, FIT, "--prompts", "4", "--part", f"{i}/2", "--out", part))
    out = world / "home" / "merged"
    shutil.copytree(world / "in" / "jl", out)  # an earlier J-lens (2 prompts)
    _invoke("lens", "merge", world / "in" / "model", *parts, "--out", out, "--force")
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "jlens.safetensors"]
    assert json.loads((out / "config.json").read_text())["n_prompts"] == 4
    assert _leftovers(world / "home") == []


def test_hub_update_repackages_a_lens_from_its_own_folder(world, monkeypatch, capsys):
    """The reported bug: the lens was deleted before it was copied from."""
    coll = world / "in" / "coll"
    lens_dir = coll / "lenses" / "org" / "tiny" / "lens-a"
    report = world / "in" / "report"
    report.mkdir()
    (report / "metrics.json").write_text(
        json.dumps({"lenses": {"lens-a": {"kl_bits": [1.0, 3.0]}}})
    )
    package_lenses(
        [world / "in" / "hubsrc" / "lens-a"], coll, evals={"lens-a": report}, update=True
    )
    before = {name: (lens_dir / name).read_bytes() for name in ("lens.safetensors", "config.json")}
    for out in (coll, "."):  # from outside, and from inside the collection
        monkeypatch.chdir(world / "home" if out == coll else coll)
        _invoke("hub", "package", lens_dir, "--out", out, "--update")
        index = verify_collection(coll)
        entry = index["lenses"][f"lenses/{HUB_MODEL}/lens-a"]
        assert entry["metrics"]["mean_kl_bits"] == 2.0  # its evaluation stays attached
        assert {name: (lens_dir / name).read_bytes() for name in before} == before
        assert _leftovers(lens_dir.parent) == []


def test_a_failed_write_leaves_the_earlier_output(world, monkeypatch):
    import tunedlens.commands.train as run
    import tunedlens.evaluation.report as report_module
    import tunedlens.lenses.io.files as files
    from tunedlens.lenses.jacobian import JacobianLens

    home = world / "home"
    monkeypatch.chdir(home)
    _invoke("lens", "convert", world / "in" / "lens", home / "converted")
    report_args = ("--prompts", "none", "--bootstrap", "0", "--out", "report")
    _invoke(*_command(world, EVAL, *report_args))
    _invoke(*_command(world, TRAIN, "--tokens", "128", "--out", "run"))
    _invoke(*_command(world, FIT, "--prompts", "2", "--out", "fit"))
    before = _snapshot(home)

    def half_written(lens, path, format="native"):
        (path / "params.pt").write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_lens", half_written)
    convert = f"lens convert {world}/in/lens converted --format tuned-lens --force"
    failed = runner.invoke(app, convert.split())
    assert isinstance(failed.exception, OSError)

    def report_then_fail(report, out, **_options):
        (out / "metrics.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "save_report", report_then_fail)
    failed = runner.invoke(app, _command(world, EVAL, *report_args, force=True))
    assert isinstance(failed.exception, OSError)

    def stopped(*args, on_step=None, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train_lens", stopped)
    failed = runner.invoke(
        app, _command(world, TRAIN, "--tokens", "128", "--out", "run", force=True)
    )
    assert failed.exit_code == 130 and "run is as it was" in failed.output

    def saved_in_part(lens, path, format="native"):
        (path / "jlens.safetensors").write_bytes(b"the first bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(JacobianLens, "save", saved_in_part)
    fit = _command(world, FIT, "--prompts", "3", "--out", "fit", "--checkpoint-every", "1")
    failed = runner.invoke(app, [*fit, "--force"])
    assert isinstance(failed.exception, OSError)
    assert _snapshot(home) == before


def test_publish_puts_the_earlier_output_back_when_the_rename_fails(tmp_path, monkeypatch):
    import tunedlens.outputs as outputs

    kind = outputs.OutputKind("a test output", ("a.txt", "b.txt"))
    target, staging = tmp_path / "out", tmp_path / "new"
    target.mkdir()
    (target / "a.txt").write_text("earlier")
    staging.mkdir()
    (staging / "b.txt").write_text("new")
    real = os.replace

    def failing(source, destination):
        if os.fspath(source) == os.fspath(staging):
            raise OSError(5, "Input/output error")
        real(source, destination)

    monkeypatch.setattr(outputs.os, "replace", failing)
    with pytest.raises(OSError):
        outputs.publish_dir(staging, target, kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]
    assert (target / "a.txt").read_text() == "earlier" and not (target / "b.txt").exists()
    monkeypatch.setattr(outputs.os, "replace", real)
    outputs.publish_dir(staging, target, kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    # Files that appear in the output while the command runs stop it from being replaced; the
    # new output is kept beside it.
    staging.mkdir()
    (staging / "a.txt").write_text("newer")
    (target / "notes.txt").write_text("written meanwhile")
    with pytest.raises(outputs.OutputError, match="notes.txt"):
        outputs.publish_dir(staging, target, kind)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt", "notes.txt"]
    assert (tmp_path / "out.new" / "a.txt").read_text() == "newer"


def test_what_counts_as_an_earlier_output(tmp_path):
    from tunedlens.outputs import OutputKind

    kind = OutputKind("a run", ("config.json", "state*.pt"), folders=("tensorboard",))
    (tmp_path / "tensorboard").mkdir()
    for name in ("config.json", "state.rank1.pt", ".config.json.x8k2a", ".state.pt.q1"):
        (tmp_path / name).write_text("")
    assert kind.foreign(tmp_path) == []
    (tmp_path / "state.pt").mkdir()  # a folder where the run writes a file
    (tmp_path / "tensorboard.txt").write_text("")
    (tmp_path / "config.json.bak").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "tensorboard")
    assert kind.foreign(tmp_path) == ["config.json.bak", "link/", "state.pt/", "tensorboard.txt"]


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_an_interrupted_fresh_run_leaves_nothing_to_refuse_the_next(
    tiny_model_dir, tmp_path, monkeypatch, how
):
    """A run stopped before its first checkpoint wrote only its own files into a new --out: they
    are removed, so the same command runs again without --force."""
    import signal

    import tunedlens.commands.train as command

    text = word_text(tmp_path / "text.txt", 4000)
    real = command.train_lens

    def stopped(*args, on_step=None, **kwargs):
        def stop(stats):
            on_step(stats)  # the log line of the step is written first
            if how == "kill":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt

        return real(*args, on_step=stop, **kwargs)

    monkeypatch.setattr(command, "train_lens", stopped)
    out = tmp_path / "run"
    args = [str(tiny_model_dir), "--data", str(text), "--seq-len", "16", "--batch-size", "4"]
    args += ["--tokens-per-step", "64", "--tokens", "128", "--val-tokens", "64", "--out", str(out)]
    if how == "ctrl-c":
        result = runner.invoke(app, ["train", *args])
        assert result.exit_code == 130 and "is removed" in result.output
    else:
        from tunedlens.cli.app import _terminated

        # The handler records the signal for main(); this test's record must not outlive it.
        monkeypatch.setattr("tunedlens.cli.app._TERMINATED", [])
        previous = signal.signal(signal.SIGTERM, _terminated)
        try:
            result = runner.invoke(app, ["train", *args])
        finally:
            signal.signal(signal.SIGTERM, previous)
        assert result.exit_code == 128 + signal.SIGTERM
    assert not out.exists()
    monkeypatch.setattr(command, "train_lens", real)
    again = runner.invoke(app, ["train", *args])
    assert again.exit_code == 0, again.output
