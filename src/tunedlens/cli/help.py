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


def fold_long_words() -> None:
    """Let an option's help fold a word wider than its column instead of cutting it with "…".

    Lens locations (``hf:datasets/ORG/REPO/lenses/MODEL/NAME``) and metavars are single words
    wider than the help column of an 80-column terminal; rich crops them by default, hiding
    the syntax they show. typer builds each option's help in ``rich_utils._get_parameter_help``
    (a private function): its texts are marked to fold. If typer renames it, help is as before.
    """
    from typer import rich_utils

    build = getattr(rich_utils, "_get_parameter_help", None)
    if build is None or getattr(build, "folds", False):
        return

    def folding(*args, **kwargs):
        columns = build(*args, **kwargs)
        for item in getattr(columns, "renderables", ()):
            if getattr(item, "overflow", "") is None:
                item.overflow = "fold"
        return columns

    folding.folds = True
    rich_utils._get_parameter_help = folding


class PlainHelpGroup(typer.core.TyperGroup):
    """The root command group; its help, and that of every command under it, is plain text."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        escape_markup(self)
        fold_long_words()
