"""The train command's settings are TrainConfig's fields, generated: one option per field."""

import dataclasses
import sys
from typing import Literal

import pytest
import typer
from typer.testing import CliRunner

from tunedlens.cli import main
from tunedlens.cli.app import app
from tunedlens.cli.config_options import (
    FieldType,
    OptionValueError,
    config_parameters,
    plain_text,
    with_parameters,
)
from tunedlens.train.config import TrainConfig, field_docs, recipe_config

TRAIN = typer.main.get_command(app).commands["train"]
OPTIONS = {p.name: p for p in TRAIN.params if p.param_type_name == "option"}


def test_every_field_has_an_option_that_restates_no_default():
    for field in dataclasses.fields(TrainConfig):
        option = OPTIONS[field.name]
        if field.name == "recipe":
            continue
        assert option.default is None, f"--{field.name} restates a default"
        doc = plain_text(field_docs()[field.name])
        if field.name == "time_budget_s":  # the field holds seconds, the option a duration
            doc = doc.replace("Wall-time budget in seconds", "Wall-time budget")
            assert "1h30m" in option.help and "in seconds" not in option.help
        assert option.help.startswith(doc), field.name
        if field.name != "time_budget_s":
            assert "[default recipe: " in option.help, field.name
    assert OPTIONS["time_budget_s"].opts == ["--time-budget"]


def test_choices_come_from_the_literal():
    assert OPTIONS["translator"].metavar == "CHOICE"
    assert OPTIONS["translator"].help.endswith("Choices: affine, lowrank, diagonal, mlp.")
    assert OPTIONS["points"].metavar == "block|mid|both"
    assert OPTIONS["grad_clip"].metavar == "FLOAT|none"
    assert OPTIONS["position_range"].metavar == "INT,INT|none"


def test_a_new_field_gets_an_option_with_no_other_edit():
    @dataclasses.dataclass(frozen=True)
    class Settings:
        width: int = 3
        """How wide."""
        mode: Literal["a", "b"] = "a"
        """Which mode."""
        limit: float | None = None
        """An optional limit."""

    def command(name: str, **settings):
        print(sorted(settings.items()))

    new = typer.Typer()
    new.command()(
        with_parameters(command, config_parameters(Settings, docs={"width": "How wide."}))
    )
    result = CliRunner().invoke(new, ["x", "--width", "5", "--mode", "b", "--limit", "none"])
    assert result.exit_code == 0, result.output
    assert "('limit', None), ('mode', 'b'), ('width', 5)" in result.output
    assert "--width" in CliRunner().invoke(new, ["--help"]).output


def test_values_are_parsed_by_the_field_type():
    betas = FieldType("betas", tuple[float, float])
    assert betas.parse_text("0.9, 0.95") == (0.9, 0.95)
    assert FieldType("grad_clip", float | None).parse_text("none") is None
    with pytest.raises(OptionValueError, match="--translator: 'conv' is not one of"):
        FieldType("translator", Literal["affine", "mlp"]).parse_text("conv")
    with pytest.raises(OptionValueError, match="--tokens: expected an integer"):
        FieldType("tokens", int).parse_text("lots")


def test_the_command_line_reaches_the_config(monkeypatch, tmp_path):
    seen = {}

    def fake_run_training(model, config, out, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr("tunedlens.commands.train.run", fake_run_training)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "tunedlens",
            "train",
            "demo",
            "--out",
            str(tmp_path / "o"),
            "--grad-clip",
            "none",
            "--betas",
            "0.8,0.9",
            "--lstsq-init",
            "false",
            "--schedule",
            "constant",
        ],
    )
    with pytest.raises(SystemExit):
        main()
    expected = recipe_config(
        "default",
        explicit={
            "grad_clip": None,
            "betas": (0.8, 0.9),
            "lstsq_init": False,
            "schedule": "constant",
            "tokens": 65536,  # the demo's tokens when none are given
        },
    )
    assert seen["config"] == expected
    assert expected.grad_clip is None and expected.positions_per_sequence == 16  # recipe kept
