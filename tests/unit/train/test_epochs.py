"""Epochs over kept residual rows: the first epoch runs the model and keeps the rows it samples;
later epochs train on those rows in a new order without running the model again."""

from pathlib import Path

import pytest
import torch

import tunedlens.train.loop as loop
from tiny_models import tiny_model
from tunedlens.lenses import TunedLens
from tunedlens.train import recipe_config, train_lens
from tunedlens.train.rows import RowCache

SMALL = dict(
    tokens=16 * 32,
    tokens_per_step=16 * 8,
    seq_len=16,
    batch_size=4,
    lstsq_tokens=256,
    lstsq_budget_share=0.5,
    positions_per_sequence=6,
)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", initializer_range=0.2, logit_gain=3.0)


@pytest.fixture(scope="module")
def data():
    return torch.randint(3, 120, (48, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def forwards(monkeypatch):
    """Every forward pass training runs: the positions it reads (``None``: every position)."""
    calls = []
    real = loop.collect_residuals

    def spy(model, ids, **kwargs):
        positions = kwargs.get("positions")
        calls.append(None if positions is None else positions.clone())
        return real(model, ids, **kwargs)

    monkeypatch.setattr(loop, "collect_residuals", spy)
    return calls


def run(model, data, **changes):
    cfg = recipe_config("default", **{**SMALL, **changes})
    lens = TunedLens.from_model(model)
    return train_lens(lens, model, data[:32], cfg)


@pytest.mark.parametrize("recipe", [{}, {"objective": "ce", "lstsq_init": False}])
def test_one_epoch_over_kept_rows_equals_streaming(model, data, forwards, recipe):
    streamed = run(model, data, cache_residuals=False, **recipe)
    streamed_positions = list(forwards)
    forwards.clear()
    kept = run(model, data, cache_residuals=True, **recipe)
    assert kept.resolved.cache_residuals and not streamed.resolved.cache_residuals
    assert len(forwards) == len(streamed_positions) > 0
    for one, other in zip(forwards, streamed_positions, strict=True):
        assert torch.equal(one, other)  # the same positions
    assert len(kept.history) == len(streamed.history) == 4
    for one, other in zip(kept.history, streamed.history, strict=True):
        assert one["loss"] == pytest.approx(other["loss"], rel=1e-5, abs=1e-7)
    for name, value in kept.lens.translator.state_dict().items():
        torch.testing.assert_close(value, streamed.lens.translator.state_dict()[name])


def test_later_epochs_train_on_the_same_rows_without_the_model(model, data, forwards):
    # A learning rate too small to move the lens: each epoch's loss sums the same rows.
    result = run(model, data, epochs=3, lr=1e-12, lstsq_init=False)
    per_epoch = result.resolved.steps_per_epoch
    assert per_epoch == 4 and result.resolved.steps == result.steps_done == 12
    assert len(forwards) == per_epoch * result.resolved.accumulation  # the first epoch only
    losses = [h["loss"] for h in result.history]
    epochs = [sum(losses[e * per_epoch : (e + 1) * per_epoch]) for e in range(3)]
    assert epochs[1] == pytest.approx(epochs[0], rel=1e-5)
    assert epochs[2] == pytest.approx(epochs[0], rel=1e-5)
    # ...in another order: the steps of a later epoch do not repeat the first's one by one.
    assert losses[per_epoch : 2 * per_epoch] != pytest.approx(losses[:per_epoch], rel=1e-6)


def test_epochs_without_kept_rows_run_the_model_again(model, data, forwards):
    result = run(model, data, epochs=2, cache_residuals=False, lstsq_init=False)
    assert result.steps_done == 8 and len(forwards) == 8 * result.resolved.accumulation
    assert not torch.equal(forwards[0], forwards[8])  # new positions of the same sequences


def test_a_cache_over_the_memory_cap_is_a_file_and_trains_alike(model, data, monkeypatch):
    opened = []
    real_init = RowCache.__init__

    def remember(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        opened.append((self, self.on_disk, self.directory and Path(self.directory.name)))

    monkeypatch.setattr(RowCache, "__init__", remember)
    memory = run(model, data, epochs=2)
    on_disk = run(model, data, epochs=2, cache_memory_gib=0)
    assert [disk for _, disk, _ in opened] == [False, True]
    assert not opened[1][2].exists()  # deleted at the end of the run
    for one, other in zip(memory.history, on_disk.history, strict=True):
        assert one["loss"] == other["loss"]
    assert opened[1][0].rows.numel() == 0  # freed at the end of the run
    bf16 = run(model, data, epochs=2, cache_dtype="bfloat16")
    first = len(bf16.history) // 2
    for one, other in zip(bf16.history[:first], memory.history[:first], strict=True):
        assert one["loss"] == other["loss"]  # the first epoch trains on the exact rows
    for one, other in zip(bf16.history[first:], memory.history[first:], strict=True):
        assert one["loss"] == pytest.approx(other["loss"], rel=2e-2)


def test_the_file_is_deleted_when_the_run_fails(model, data, monkeypatch):
    opened = []
    real_init = RowCache.__init__

    def remember(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        file = Path(self.directory.name) / "rows.bin"
        opened.append((self, file.parent, file.stat().st_size))

    monkeypatch.setattr(RowCache, "__init__", remember)

    def fail(stats):
        if stats.step == 5:
            raise KeyboardInterrupt

    cfg = recipe_config("default", **{**SMALL, "epochs": 2, "cache_memory_gib": 0})
    with pytest.raises(KeyboardInterrupt):
        train_lens(TunedLens.from_model(model), model, data[:32], cfg, on_step=fail)
    ((cache, directory, size),) = opened
    assert size == cache.nbytes > 0  # the rows were a file of their own
    assert not directory.exists() and cache.rows.numel() == 0


def test_resume_in_a_later_epoch_equals_uninterrupted(model, data, tmp_path):
    cfg = recipe_config("default", **{**SMALL, "epochs": 2, "checkpoint_every": 1})
    whole = train_lens(TunedLens.from_model(model), model, data[:32], cfg)

    class Interrupt(Exception):
        pass

    def interrupt(stats):
        if stats.step == 6:  # in the second epoch
            raise Interrupt

    with pytest.raises(Interrupt):
        train_lens(
            TunedLens.from_model(model),
            model,
            data[:32],
            cfg,
            on_step=interrupt,
            checkpoint_dir=tmp_path,
        )
    resumed = train_lens(
        TunedLens.from_model(model), model, data[:32], cfg, checkpoint_dir=tmp_path, resume=True
    )
    assert resumed.steps_done == 8
    for name, value in whole.lens.translator.state_dict().items():
        assert torch.equal(resumed.lens.translator.state_dict()[name], value), name


def test_epochs_need_one_epoch_of_data_and_refuse_bad_settings(model, data):
    result = run(model, data, epochs=2)
    assert result.resolved.steps == 8  # 32 sequences of 16 tokens, read twice
    with pytest.raises(ValueError, match="epochs=0"):
        recipe_config("default", **{**SMALL, "epochs": 0})
    with pytest.raises(ValueError, match="cache_memory_gib=-1"):
        recipe_config("default", **{**SMALL, "cache_memory_gib": -1})
    with pytest.raises(ValueError, match="cache_dtype='float16'"):
        recipe_config("default", **{**SMALL, "cache_dtype": "float16"})


def test_the_command_says_what_later_epochs_train_on(tiny_model_dir, tmp_path):
    from tiny_models import word_text
    from tunedlens.commands.train import run as run_training

    text = word_text(tmp_path / "text.txt", 4000)
    said = []
    config = recipe_config("default", **{**SMALL, "tokens": 256, "epochs": 2, "val_tokens": 32})
    result = run_training(
        str(tiny_model_dir), config, tmp_path / "out", data=str(text), on_status=said.append
    )
    assert result.steps_done == 4
    assert any("2 epochs over these tokens: the later ones train on the rows" in s for s in said)
