"""Command-line options generated from a config dataclass: one option per field, written once.

Each field of :class:`~tunedlens.train.TrainConfig` becomes ``--field-name``: its type and
choices come from the annotation (a ``Literal``'s values via ``get_args``), its help from the
field's docstring, and its default is "not given" — the recipe decides — so no default is
restated here. ``none`` sets an optional field to ``None`` (e.g. ``--grad-clip none``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import typer

from tunedlens.errors import InputError, TunedLensError

NONE = "none"
BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
PANEL = "Training settings (each defaults to the recipe's value)"


def _members(annotation) -> tuple[list, bool]:
    """The non-None members of an annotation and whether ``None`` is one of them."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return members, len(members) < len(get_args(annotation))
    return [annotation], False


class OptionValueError(TunedLensError):
    """An option's text is not a value of its field's type.

    Not a ValueError: typer would turn one raised while parsing into its own usage error.
    """


class FieldType:
    """Parses one config field's value: ints, floats, booleans, choices, pairs ``a,b``, ``none``."""

    def __init__(
        self,
        name: str,
        annotation,
        parse: Callable[[str], Any] | None = None,
        option: str | None = None,
    ):
        self.field = name
        self.option = option or "--" + name.replace("_", "-")
        (self.kind,), self.optional = _members(annotation)
        self.parse = parse
        self.choices = get_args(self.kind) if get_origin(self.kind) is Literal else None
        self.name = self._metavar()

    def _metavar(self) -> str:
        if self.kind is bool:
            text = "true|false"
        elif self.choices:
            # Long lists of choices go to the help text: a wide value column squeezes the names.
            text = "|".join(self.choices) if len("|".join(self.choices)) <= 14 else "CHOICE"
        elif get_origin(self.kind) is tuple:
            text = ",".join(t.__name__.upper() for t in get_args(self.kind))
        elif self.parse is not None:
            text = "DURATION"
        else:
            text = getattr(self.kind, "__name__", "VALUE").upper()
        return f"{text}|{NONE}" if self.optional else text

    def parse_text(self, value):
        """The field's value from the option's text (``None`` for ``none``)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if self.optional and text.lower() == NONE:
            return None
        try:
            return self._convert(text)
        except ValueError as error:
            # A TunedLensError, not click's usage error: bad values of every kind read alike
            # ("error: ..."), whichever layer finds them.
            raise OptionValueError(f"{self.option}: {error}") from None

    def _convert(self, text: str):
        if self.parse is not None:
            return self.parse(text)
        if self.choices:
            if text not in self.choices:
                raise InputError(f"{text!r} is not one of {', '.join(self.choices)}")
            return text
        if self.kind is bool:
            if text.lower() not in BOOLEANS:
                raise InputError(f"expected true or false, got {text!r}")
            return BOOLEANS[text.lower()]
        if get_origin(self.kind) is tuple:
            parts = [part.strip() for part in text.split(",")]
            kinds = get_args(self.kind)
            if len(parts) != len(kinds):
                raise InputError(f"expected {len(kinds)} comma-separated values, got {text!r}")
            return tuple(_scalar(kind, part) for kind, part in zip(kinds, parts, strict=True))
        return _scalar(self.kind, text)


def _scalar(kind, text: str):
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise InputError(f"expected an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)  # nan and inf pass: the config says which fields refuse them
        except ValueError:
            raise InputError(f"expected a number, got {text!r}") from None
    return text


def option_name(field: str, names: dict[str, str]) -> str:
    """``--field-name``, or the name given in ``names``."""
    return names.get(field, "--" + field.replace("_", "-"))


def config_parameters(
    config_class,
    *,
    docs: dict[str, str],
    skip: tuple[str, ...] = (),
    names: dict[str, str] | None = None,
    parsers: dict[str, Callable[[str], Any]] | None = None,
    defaults_note: Callable[[str], str] = lambda field: "",
) -> list[inspect.Parameter]:
    """One keyword-only typer parameter per field of ``config_class`` (all default ``None``).

    Args:
        config_class: A dataclass.
        docs: Field name -> help text (the field's docstring).
        skip: Fields that get no option (e.g. set by a dedicated option).
        names: Field name -> option name, where it is not ``--field-name``.
        parsers: Field name -> a parser of the option's text (e.g. durations).
        defaults_note: Field name -> text appended to its help (e.g. the recipe's value).
    """
    names, parsers = names or {}, parsers or {}
    hints = typing.get_type_hints(config_class)
    parameters = []
    for field in dataclasses.fields(config_class):
        if field.name in skip:
            continue
        annotation = hints[field.name]
        field_type = FieldType(
            field.name, annotation, parsers.get(field.name), option_name(field.name, names)
        )
        help_text = " ".join(
            part for part in (docs.get(field.name, ""), defaults_note(field.name)) if part
        )
        if field_type.name.startswith("CHOICE"):
            help_text += f" Choices: {', '.join(field_type.choices)}."
        option = typer.Option(
            option_name(field.name, names),
            help=help_text,
            rich_help_panel=PANEL,
            parser=field_type.parse_text,
            metavar=field_type.name,
            show_default=False,
        )
        parameters.append(
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[Optional[str], option],
            )
        )
    return parameters


def with_parameters(function: Callable, extra: list[inspect.Parameter]) -> Callable:
    """``function`` with ``extra`` keyword-only parameters added to its signature for typer.

    ``function`` must take ``**settings``; typer passes each extra option there by name.
    """
    signature = inspect.signature(function, eval_str=True)
    fixed = [
        p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    function.__signature__ = signature.replace(parameters=[*fixed, *extra])
    function.__annotations__ = {
        **{p.name: p.annotation for p in fixed},
        **{p.name: p.annotation for p in extra},
    }
    return function


def given(settings: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """The settings the user gave: ``None`` values kept only for options given as ``none``."""
    return {
        name: value for name, value in settings.items() if value is not None or name in explicit
    }


def explicit_options(ctx) -> set[str]:
    """Parameter names given on the command line (not defaulted)."""
    # By name: typer >= 0.24 vendors its own click, whose enum is not click's.
    return {
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    }


MAX_TIME_BUDGET_S = 30 * 24 * 3600
"""Longest --time-budget accepted: beyond it a typo (1e9h) is likelier than a plan."""


def parse_duration(text: str) -> float:
    """``"20m"`` -> 1200.0, ``"1h30m"`` -> 5400.0 seconds (units h, m, s; plain numbers are seconds)."""
    units = {"h": 3600, "m": 60, "s": 1}
    compact = text.strip().lower().replace(" ", "")
    parts = re.findall(r"((?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)([hms]?)", compact)
    usage = f"must look like 20m, 1h30m, 90s or 1.5h (a plain number is seconds), got {text!r}"
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise InputError(usage)
    seen = [unit or "s" for _, unit in parts]
    if len(parts) > 1 and (
        "" in [u for _, u in parts] or seen != sorted(set(seen), key="hms".index)
    ):
        raise InputError(usage)
    seconds = sum(float(number) * units[unit or "s"] for number, unit in parts)
    if not seconds > 0:
        raise InputError(f"must be positive, got {text!r}")
    if seconds > MAX_TIME_BUDGET_S:
        raise InputError(
            f"{text} is longer than 30 days; for a run that long pass --tokens "
            "(with --checkpoint-every to make it resumable)."
        )
    return seconds


def plain_text(doc: str) -> str:
    """A docstring as terminal text: ````x```` -> ``x``, ````None```` -> ``none`` (the option's word)."""
    return re.sub(r"``([^`]+)``", lambda match: "none" if match[1] == "None" else match[1], doc)


def recipe_note(field: str) -> str:
    """What a train option's help says of its default: the default recipe's value."""
    from tunedlens.train.config import recipe_value

    value = recipe_value("default", field)
    if field == "time_budget_s":
        return "Give it as 20m, 1h30m, 90s or 1.5h (a plain number is seconds); replaces --tokens."
    return f"[default recipe: {'none' if value is None else value}]"


def train_settings() -> list:
    """The train command's generated options: one per :class:`TrainConfig` field but ``recipe``."""
    from tunedlens.commands.train import OPTION_NAMES
    from tunedlens.train.config import TrainConfig, field_docs

    docs = {name: plain_text(doc) for name, doc in field_docs().items()}
    # The field holds seconds; the option takes a duration (parse_duration).
    docs["time_budget_s"] = docs["time_budget_s"].replace(
        "Wall-time budget in seconds", "Wall-time budget"
    )
    return config_parameters(
        TrainConfig,
        docs=docs,
        skip=("recipe",),
        names=OPTION_NAMES,
        parsers={"time_budget_s": parse_duration},
        defaults_note=recipe_note,
    )
