"""Every ``tunedlens`` command line of the README and the documentation site is accepted by the CLI.

The console blocks (``$ tunedlens ...``, ``torchrun ... -m tunedlens ...``) of the README and of
every page under ``docs/``, and the README's two set-up commands, are parsed with the real click
commands (no command runs): an option the CLI does not have, or a missing argument, fails here.
"""

import re
import shlex
from pathlib import Path

import pytest
import typer

from tunedlens.cli.app import app

ROOT = Path(__file__).resolve().parents[3]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _invocations() -> list[str]:
    text = "\n".join(page.read_text() for page in PAGES)
    lines = []
    for block in re.findall(r"```(?:console|bash)\n(.*?)```", text, flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # a command continued over lines is one line
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            for part in re.split(r"\s*&&\s*", line):
                words = shlex.split(part, comments=True) if part else []
                if "tunedlens" in words[:1] or (words[:1] == ["torchrun"] and "tunedlens" in words):
                    lines.append(part)
    return lines


INVOCATIONS = _invocations()


def _args(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    return words[words.index("tunedlens") + 1 :]


def test_the_docs_show_every_command():
    shown = {
        tuple(_args(line)[:2]) if _args(line)[0] == "lens" else _args(line)[0]
        for line in INVOCATIONS
    }
    assert {
        "predict",
        "show",
        "train",
        "eval",
        "serve",
        ("lens", "info"),
        ("lens", "convert"),
    } <= shown


@pytest.mark.parametrize("line", INVOCATIONS)
def test_readme_command_line_is_accepted(line):
    command = typer.main.get_command(app)
    args = _args(line)
    context = command.make_context("tunedlens", list(args), resilient_parsing=False)
    while hasattr(command, "resolve_command"):  # a group (typer ships its own click)
        pending = [*getattr(context, "_protected_args", []), *context.args]
        name, command, rest = command.resolve_command(context, pending)
        context = command.make_context(name, rest, parent=context)
    assert not context.args, f"unparsed arguments {context.args} in {line!r}"
    assert context.command.name == args[-1 if len(args) == 1 else 0] or context.parent is not None


def test_an_unknown_option_is_caught():
    with pytest.raises(Exception, match="No such option: --bogus"):
        test_readme_command_line_is_accepted("tunedlens predict demo hi --bogus")


@pytest.mark.parametrize("name", ["predict", "show", "train", "eval", "serve"])
def test_model_commands_take_device_and_tokenizer(name):
    command = typer.main.get_command(app).commands[name]
    assert {"device", "tokenizer", "dtype"} <= {p.name for p in command.params}
