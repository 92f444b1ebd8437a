"""MkDocs hooks: the pages that must not go stale are generated from the code at build time.

- ``reference/cli.md``: every command and group of the real typer app, with its usage, help,
  arguments and options, walked from ``typer.main.get_command(app)``. typer vendors its own click,
  so the tree is read by duck typing (``commands``, ``params``, ``get_help_record``), not through
  a click-only plugin. A new option appears on the next build.
- ``reference/api.md``: one mkdocstrings block per name of ``tunedlens.__all__``, in that order,
  so the page lists exactly the public names.
- ``benchmarks/results/*``: the benchmark reports (and the figures and JSON they link) are
  published from ``benchmarks/results/`` as they are; the benchmarks page lists every report.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_INDEX = "<!-- benchmark-results -->"
ARCHITECTURES = "<!-- architectures -->"


def on_files(files, config):
    """Add the generated reference pages and the benchmark reports to the site."""
    from mkdocs.structure.files import File, InclusionLevel

    files.append(File.generated(config, "reference/cli.md", content=cli_page()))
    files.append(File.generated(config, "reference/api.md", content=api_page()))
    for path in sorted(RESULTS.iterdir()):
        if path.is_file():
            files.append(
                File.generated(
                    config,
                    f"benchmarks/results/{path.name}",
                    abs_src_path=str(path),
                    inclusion=InclusionLevel.NOT_IN_NAV,
                )
            )
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Fill the generated parts of hand-written pages (benchmark reports, architectures)."""
    if ARCHITECTURES in markdown:
        markdown = markdown.replace(ARCHITECTURES, architectures_table())
    if RESULTS_INDEX not in markdown:
        return markdown
    lines = []
    for path in sorted(RESULTS.glob("*.md")):
        title = next(
            (line[2:].strip() for line in path.read_text().splitlines() if line.startswith("# ")),
            path.stem,
        )
        lines.append(
            f"- [{title}](benchmarks/results/{path.name}) (`benchmarks/results/{path.name}`)"
        )
    return markdown.replace(RESULTS_INDEX, "\n".join(lines))


# --- the CLI reference ---------------------------------------------------------------------------


def _plain(text: str) -> str:
    # The app escapes rich markup in its help texts (cli/help.py); the page shows them as written.
    return re.sub(r"\\(\[)", r"\1", text or "").strip()


def _cell(text: str) -> str:
    # Brackets are escaped for Markdown: "[/SUB][@REV]" would read as a reference link.
    text = _plain(text).replace("[", "\\[").replace("]", "\\]")
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return _plain(text).replace("|", "\\|").replace("\n", " ")


def _commands(command, path=()):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            yield from _commands(sub, (*path, name))


def _context(root, path):
    context = root.make_context("tunedlens", [], resilient_parsing=True)
    command = root
    for name in path:
        command = command.commands[name]
        context = command.make_context(name, [], parent=context, resilient_parsing=True)
    return context


def cli_page() -> str:
    """The CLI reference: every command of ``tunedlens.cli.app``, as its ``--help`` describes it."""
    import typer

    from tunedlens.cli.app import app

    root = typer.main.get_command(app)
    out = [
        "# CLI reference",
        "",
        "Generated at build time from the application itself (`tunedlens.cli.app`): every command",
        "and group, with the help, arguments and options that `--help` prints.",
        "",
    ]
    for path, command in _commands(root):
        context = _context(root, path)
        name = " ".join(("tunedlens", *path))
        out += [f"## `{name}`", ""]
        help_text = _plain(command.help).replace("[", "\\[").replace("]", "\\]")
        if help_text:
            out += [help_text, ""]
        pieces = " ".join(command.collect_usage_pieces(context))
        out += ["```text", f"{name} {pieces}".rstrip(), "```", ""]
        subcommands = [
            (sub, getattr(command.commands[sub], "help", "") or "")
            for sub in sorted(getattr(command, "commands", {}))
            if not getattr(command.commands[sub], "hidden", False)
        ]
        if subcommands:
            out += ["| command | what it does |", "| --- | --- |"]
            for sub, text in subcommands:
                anchor = "tunedlens-" + "-".join((*path, sub))
                first = _cell(text.split("\n\n")[0])
                out.append(f"| [`{sub}`](#{anchor}) | {first} |")
            out.append("")
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        if arguments:
            out += ["| argument | description |", "| --- | --- |"]
            for parameter in arguments:
                required = "" if parameter.required else " (optional)"
                label = (parameter.metavar or parameter.name).upper()
                out.append(f"| `{label}`{required} | {_cell(getattr(parameter, 'help', ''))} |")
            out.append("")
        options = [
            p
            for p in command.params
            if p.param_type_name == "option" and not getattr(p, "hidden", False)
        ]
        if options:
            out += ["| option | description |", "| --- | --- |"]
            for parameter in options:
                record = parameter.get_help_record(context)
                if record is None:
                    continue
                names, text = record
                out.append(f"| `{_code(names)}` | {_cell(text)} |")
            out += ["| `--help` | Show this message and exit. |", ""]
    return "\n".join(out) + "\n"


# --- the API reference ---------------------------------------------------------------------------


def api_page() -> str:
    """The API reference: exactly ``tunedlens.__all__``, each from its defining module."""
    import tunedlens

    out = [
        "# API reference",
        "",
        "Generated at build time from `tunedlens.__all__`: every public name, documented from its",
        "docstring. Import them from the package: `from tunedlens import readout, load_lens`.",
        "",
        "| name | defined in |",
        "| --- | --- |",
    ]
    exports = tunedlens._EXPORTS
    for name in tunedlens.__all__:
        out.append(f"| [`{name}`](#{exports[name]}.{name}) | `{exports[name]}` |")
    out.append("")
    for name in tunedlens.__all__:
        out += [f"::: {exports[name]}.{name}", ""]
    return "\n".join(out)


def architectures_table() -> str:
    """One row per registered family of ``tunedlens.arch.ARCHS``."""
    from tunedlens.arch.registry import ARCHS

    def code(value) -> str:
        return f"`{value}`" if value else "—"

    out = [
        "| `model_type` | blocks | final norm | mid point | head extras |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, spec in sorted(ARCHS.items()):
        mid = code(spec.mid) if spec.mid else "none (parallel)"
        if spec.no_mid_if:
            mid += " (none if " + ", ".join(f"`{flag}`" for flag in spec.no_mid_if) + ")"
        extras = [f"`{path}`" for path in spec.pre_unembed]
        extras += [
            f"{label} `{getattr(spec, field)}`"
            for field, label in (
                ("logit_softcap", "soft-cap"),
                ("logit_scale", "scale"),
                ("logit_divisor", "divisor"),
            )
            if getattr(spec, field)
        ]
        out.append(
            f"| `{name}` | {code(spec.layers)} | {code(spec.final_norm)} | {mid} | "
            f"{', '.join(extras) or '—'} |"
        )
    return "\n".join(out)
