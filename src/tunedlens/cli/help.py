"""Help texts are plain text: brackets in them print as written, whatever rich would make of them."""

from __future__ import annotations

import typer


def escape_markup(command) -> None:
    """Escape rich markup in the help of ``command``, its options and its subcommands.

    Help texts are plain text: ``hf:ORG/REPO[/SUB][@REV]`` must print as written, while rich
    would read ``[/SUB]`` as a closing tag (an error) and ``[@REV]`` as a tag (dropped).
    """
    from rich.markup import escape

    for attribute in ("help", "short_help", "epilog"):
        if getattr(command, attribute, None):
            setattr(command, attribute, escape(getattr(command, attribute)))
    for parameter in command.params:
        if getattr(parameter, "help", None):
            parameter.help = escape(parameter.help)
    for subcommand in getattr(command, "commands", {}).values():
        escape_markup(subcommand)


class PlainHelpGroup(typer.core.TyperGroup):
    """The root command group; its help, and that of every command under it, is plain text."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        escape_markup(self)
