"""Every ``--help`` renders, through the real typer/rich path, at narrow and wide terminals.

Parsing a command line never renders help, so a help text that rich reads as markup
(``[/SUB]``) crashed ``--help`` while every other test passed. Here each command and group of
the real application prints its help as a user's terminal would, and every option is named.
"""

import re
import sys

import pytest
import typer

from tunedlens.cli import main
from tunedlens.cli.app import app


def _commands(command, path=()):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = {
    " ".join(path) or "tunedlens": (path, command)
    for path, command in _commands(typer.main.get_command(app))
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_renders(name, columns, monkeypatch, capsys):
    path, command = COMMANDS[name]
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys, "argv", ["tunedlens", *path, "--help"])
    with pytest.raises(SystemExit) as caught:
        main()
    out = capsys.readouterr()
    assert caught.value.code == 0, out.err
    text = ANSI.sub("", out.out)
    assert "Usage:" in text
    flat = re.sub(r"[\s│]+", " ", text)
    for parameter in command.params:
        if parameter.param_type_name == "option":
            assert parameter.opts[0] in flat, f"{parameter.opts[0]} missing from {name} --help"
    for sub in getattr(command, "commands", {}):
        assert sub in flat
    if columns == 200:
        assert max(len(line) for line in text.splitlines()) <= columns
    else:  # help text folds a word wider than its column (lens locations) instead of cutting it
        cropped = [line for line in text.splitlines() if "…" in line and "--no-" not in line]
        assert not cropped, "\n".join(cropped)
    # Plain text: no reStructuredText from the docstrings the help is made of.
    for markup in ("``", ":func:", ":class:", ":data:", ":mod:", ":meth:"):
        assert markup not in text, f"{markup} in {name} --help"


def _help(monkeypatch, capsys, *path) -> str:
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(sys, "argv", ["tunedlens", *path, "--help"])
    with pytest.raises(SystemExit):
        main()
    return re.sub(r"[\s│]+", " ", ANSI.sub("", capsys.readouterr().out))


def test_help_says_what_durations_and_layer_ranges_mean(monkeypatch, capsys):
    train = _help(monkeypatch, capsys, "train")
    budget = train[train.index("--time-budget") :][:400]
    assert "20m, 1h30m, 90s or 1.5h" in budget and "in seconds" not in budget
    predict = _help(monkeypatch, capsys, "predict")
    assert "'20-29' (both ends included)" in predict and "the end is excluded" in predict
    assert "SmolLM2-135M-Instruct, dequantised from a Q4_1 GGUF" in predict


def test_brackets_in_help_print_as_written(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(sys, "argv", ["tunedlens", "predict", "--help"])
    with pytest.raises(SystemExit):
        main()
    text = ANSI.sub("", capsys.readouterr().out)
    assert "hf:ORG/REPO[/SUB][@REV]" in text
    assert "jlens:NAME[@REV]" in text and ".pt" in text
