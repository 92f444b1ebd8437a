"""A bug is not a usage mistake: the CLI shows its traceback and asks for a report, exit code 1.

User errors (``TunedLensError``) stay one ``error:`` line with exit code 2 (the bad-input table,
test_bad_input.py); ``TUNEDLENS_DEBUG=1`` adds their traceback. The source test keeps every
user-input check a ``TunedLensError``: a plain ``raise ValueError`` would now read as a bug.
"""

import ast
import sys
from pathlib import Path

import pytest

from tiny_models import random_lens, tiny_model
from tunedlens.cli import main
from tunedlens.cli.app import REPORT_BUG
from tunedlens.errors import InputError, InputTypeError, OutOfRange, TunedLensError

SRC = Path(__file__).resolve().parents[3] / "src" / "tunedlens"
BUILTINS = ("ValueError", "IndexError", "TypeError")

ALLOWED: dict[tuple[str, str], str] = {}
"""``(path under src/tunedlens, enclosing function) -> why`` for each built-in raise that only a
bug can reach (an internal invariant, not a check of what a user or caller passed). Keep it short;
a check of input raises a ``TunedLensError`` subclass (errors.py: InputError, OutOfRange,
InputTypeError, or a more specific one)."""


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["tunedlens", *args])
    with pytest.raises(SystemExit) as caught:
        main()
    return caught.value.code, capsys.readouterr()


def _fail(error):
    def broken(*args, **kwargs):
        raise error

    return broken


@pytest.mark.parametrize("error", [ValueError("rows and columns disagree"), KeyError("stat")])
def test_an_internal_error_prints_its_traceback_and_asks_for_a_report(
    error, monkeypatch, capsys, tmp_path
):
    random_lens(tiny_model("llama")).save(tmp_path / "lens")
    monkeypatch.setattr("tunedlens.commands.lens_info.describe_lens", _fail(error))
    code, out = run_main(monkeypatch, capsys, "lens", "info", str(tmp_path / "lens"))
    assert code == 1, out
    assert "Traceback (most recent call last)" in out.err
    assert f"{type(error).__name__}: {error}" in out.err  # the bug's own line, as Python prints it
    assert out.err.strip().splitlines()[-1] == REPORT_BUG
    assert (
        "please report this as a bug, with the command line and the traceback above" in REPORT_BUG
    )
    assert not [line for line in out.err.splitlines() if line.startswith("error:")]


def test_an_internal_error_after_the_model_loads_is_a_bug_too(monkeypatch, capsys, tiny_model_dir):
    monkeypatch.setattr(
        "tunedlens.commands.predict.predict_layers",
        _fail(IndexError("index 7 is out of bounds for dimension 0 with size 7")),
    )
    code, out = run_main(monkeypatch, capsys, "predict", str(tiny_model_dir), "w1 w2")
    assert code == 1, out
    assert "Traceback (most recent call last)" in out.err
    assert "IndexError: index 7 is out of bounds" in out.err
    assert out.err.strip().splitlines()[-1] == REPORT_BUG


@pytest.mark.parametrize("debug", ["1", "0", ""])
def test_tunedlens_debug_shows_the_traceback_of_a_user_error(
    debug, monkeypatch, capsys, tiny_model_dir
):
    monkeypatch.setenv("TUNEDLENS_DEBUG", debug)
    code, out = run_main(monkeypatch, capsys, "predict", str(tiny_model_dir), "w1", "--top-k", "0")
    lines = out.err.strip().splitlines()
    assert code == 2, out
    assert lines[-1] == "error: --top-k must be at least 1, got 0"
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert REPORT_BUG not in out.err
    if debug == "1":
        assert lines[0] == "Traceback (most recent call last):"
        assert "tunedlens.errors.InputError: --top-k must be at least 1, got 0" in lines
    else:
        assert "Traceback" not in out.err


def test_user_errors_are_also_the_builtin_exceptions_python_callers_catch(tiny_model_dir):
    from tunedlens.engine.core import name_lenses
    from tunedlens.lenses import LogitLens
    from tunedlens.predict import parse_layers

    with pytest.raises(InputError, match="cannot parse layer selection") as caught:
        parse_layers("x", 4)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(OutOfRange, match="layer must be an int in 0..2") as caught:
        LogitLens(tiny_model("llama")).check_row(3)
    assert isinstance(caught.value, IndexError)
    with pytest.raises(InputTypeError, match="lenses must be a Lens") as caught:
        name_lenses("logit")
    assert isinstance(caught.value, TypeError)
    assert all(
        issubclass(kind, TunedLensError) for kind in (InputError, OutOfRange, InputTypeError)
    )


def _builtin_raises() -> dict[tuple[str, str], list[int]]:
    """``(path, enclosing function) -> lines`` of every ``raise ValueError|IndexError|TypeError``."""
    found: dict[tuple[str, str], list[int]] = {}

    def visit(node, where):
        for child in ast.iter_child_nodes(node):
            inside = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inside = f"{where}.{child.name}" if where else child.name
            if isinstance(child, ast.Raise) and child.exc is not None:
                raised = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                if isinstance(raised, ast.Name) and raised.id in BUILTINS:
                    found.setdefault((path, where or "<module>"), []).append(child.lineno)
            visit(child, inside)

    for file in sorted(SRC.rglob("*.py")):
        path = file.relative_to(SRC).as_posix()
        visit(ast.parse(file.read_text(encoding="utf-8")), "")
    return found


def test_user_input_checks_do_not_raise_plain_builtins():
    found = _builtin_raises()
    unlisted = {
        f"{path}:{lines[0]} (in {where})"
        for (path, where), lines in found.items()
        if (path, where) not in ALLOWED
    }
    assert not unlisted, (
        "these raise a plain ValueError/IndexError/TypeError, which the CLI reports as a bug; a "
        "check of user or caller input raises a TunedLensError subclass (tunedlens.errors: "
        "InputError, OutOfRange, InputTypeError, or a more specific one), an internal invariant "
        f"goes in ALLOWED with its reason: {sorted(unlisted)}"
    )
    assert not set(ALLOWED) - set(found), "ALLOWED lists raises that are gone: remove them"
    assert all(reason.strip() for reason in ALLOWED.values())


def test_the_source_scan_finds_builtin_raises(tmp_path, monkeypatch):
    module = tmp_path / "module.py"
    module.write_text(
        "def check(x):\n"
        "    if x < 0:\n"
        "        raise ValueError(f'x must be >= 0, got {x}')\n"
        "    raise InputError('fine')\n"
        "class Box:\n"
        "    def get(self, i):\n"
        "        raise IndexError\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert _builtin_raises() == {("module.py", "check"): [3], ("module.py", "Box.get"): [7]}


def test_a_kill_whose_clean_up_raises_anew_is_still_a_kill(monkeypatch, capsys, tmp_path):
    """SIGTERM inside ``torch.save``: the file's ``__exit__`` raises over the exit; not a bug."""
    import os
    import signal

    class ClosingRaises:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            raise RuntimeError("unexpected pos 4096 vs 3986")

    def killed(*_args, **_kwargs):
        with ClosingRaises():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 5)  # the handler runs before this returns

    monkeypatch.setattr("tunedlens.commands.lens_info.describe_lens", killed)
    monkeypatch.setattr("tunedlens.cli.app._TERMINATED", [])
    random_lens(tiny_model("llama")).save(tmp_path / "lens")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code, out = run_main(monkeypatch, capsys, "lens", "info", str(tmp_path / "lens"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 128 + signal.SIGTERM, out
    assert REPORT_BUG not in out.err and "stopped by signal 15" in out.err
