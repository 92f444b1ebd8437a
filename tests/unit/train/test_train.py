import pytest
import torch

from tiny_models import tiny_model
from tunedlens.engine import layer_kl
from tunedlens.lenses import LogitLens, TunedLens
from tunedlens.train import TrainConfig, TrainingDiverged, recipe_config, train_lens
from tunedlens.train.checkpoint import CheckpointError
from tunedlens.train.lstsq import lstsq_init

SMALL = dict(
    tokens=16 * 64,
    tokens_per_step=16 * 8,
    seq_len=16,
    batch_size=4,
    lstsq_tokens=512,
    lstsq_budget_share=0.5,
)


@pytest.fixture(scope="module")
def model():
    # Larger initialisation: the blocks really change the residual stream, so there is something
    # for a translator to learn (at 0.02 the stream barely moves).
    return tiny_model("llama", initializer_range=0.2, logit_gain=3.0)


@pytest.fixture(scope="module")
def data():
    return torch.randint(3, 120, (72, 16), generator=torch.Generator().manual_seed(0))


def config(recipe="default", **changes):
    return recipe_config(recipe, **{**SMALL, **changes})


def trained(model, data, cfg, **kwargs):
    lens = TunedLens.from_model(
        model, translator=cfg.translator, use_temperature=cfg.use_temperature
    )
    return train_lens(lens, model, data[:64], cfg, **kwargs)


def test_recipes_are_as_specified():
    paper = recipe_config("paper")
    assert (paper.optimizer, paper.lr, paper.momentum, paper.weight_decay) == (
        "sgd",
        0.1,
        0.9,
        1e-3,
    )
    assert (paper.schedule, paper.warmup_fraction, paper.grad_clip) == ("linear", 0.0, 1.0)
    assert paper.tokens == 250 * 2**18 and paper.tokens_per_step == 2**18
    lowrank = recipe_config("lowrank")
    assert lowrank.translator == "lowrank" and lowrank.use_temperature and lowrank.freeze_last
    assert (lowrank.optimizer, lowrank.lr, lowrank.weight_decay, lowrank.schedule) == (
        "adam",
        1e-3,
        1e-4,
        "cosine",
    )
    assert (lowrank.warmup_fraction, lowrank.l2_penalty, lowrank.smoothness_penalty) == (
        0.1,
        1e-4,
        1e-4,
    )
    with pytest.raises(ValueError, match="recipe='fast' is unknown"):
        recipe_config("fast")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(objective="mse"), "objective='mse'"),
        (dict(tokens_per_step=100), "multiple of"),
        (dict(use_temperature=True), "use_temperature"),
        (dict(position_range=(5, 99)), "position_range"),
        (dict(lr=0), "lr=0"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**SMALL, **changes})


@pytest.mark.parametrize("recipe", ["default", "paper", "lowrank"])
def test_training_lowers_held_out_kl(model, data, recipe):
    cfg = config(recipe, lr=1e-2 if recipe == "lowrank" else None)
    result = trained(model, data, cfg)
    before = layer_kl(LogitLens(model), model, data[64:])
    after = layer_kl(result.lens, model, data[64:])
    assert after.mean() < before.mean()
    assert (after >= 0).all()


def test_ce_objective(model, data):
    result = trained(model, data, config(objective="ce", positions_per_sequence=8))
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_same_seed_same_lens_and_resume_equals_uninterrupted(model, data, tmp_path, optimizer):
    cfg = config(
        positions_per_sequence=4,
        layers_per_step=1,
        val_every=2,
        checkpoint_every=1,
        optimizer=optimizer,
    )
    first = trained(model, data, cfg, val_data=data[64:]).lens.translator.state_dict()
    second = trained(model, data, cfg, val_data=data[64:]).lens.translator.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)

    class Interrupt(Exception):
        pass

    def interrupt(stats):
        if stats.step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        trained(model, data, cfg, val_data=data[64:], on_step=interrupt, checkpoint_dir=tmp_path)
    resumed = trained(model, data, cfg, val_data=data[64:], checkpoint_dir=tmp_path, resume=True)
    assert resumed.steps_done == 8
    state = resumed.lens.translator.state_dict()
    assert all(torch.equal(first[k], state[k]) for k in first)


def test_resume_refuses_changed_settings(model, data, tmp_path):
    cfg = config(checkpoint_every=1)
    trained(model, data, cfg, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="lr: 0.001 -> 0.002"):
        trained(model, data, cfg.replace(lr=2e-3), checkpoint_dir=tmp_path, resume=True)
    other = tiny_model("llama", seed=5)
    with pytest.raises(CheckpointError, match="another model"):
        train_lens(
            TunedLens.from_model(other), other, data[:64], cfg, checkpoint_dir=tmp_path, resume=True
        )


def test_validation_keeps_the_best_lens_and_stops_early(model, data, monkeypatch):
    import copy

    import tunedlens.train.loop as loop

    # The least-squares start, then best after step 2, then worse twice.
    scripted = iter([3.1, 3.0, 2.0, 2.5, 2.6, 2.7, 2.8])

    def scripted_kl(lenses, *args, **kwargs):
        value = next(scripted)
        return {name: torch.full((2,), value) for name in lenses}

    monkeypatch.setattr(loop, "sampled_kl", scripted_kl)
    states = {}

    def remember(stats):
        states[stats.step] = copy.deepcopy(lens.translator.state_dict())

    lens = TunedLens.from_model(model)
    result = train_lens(
        lens,
        model,
        data[:64],
        config(val_every=1, patience=2),
        val_data=data[64:],
        on_step=remember,
    )
    assert result.stopped_early and result.steps_done == 4 and result.best_step == 2
    assert result.val_kl == [2.0, 2.0]
    assert all(torch.equal(states[2][k], v) for k, v in result.lens.translator.state_dict().items())
    assert not torch.equal(states[4]["weight"], states[2]["weight"])


def test_the_least_squares_start_is_kept_when_training_only_makes_it_worse(
    model, data, monkeypatch
):
    import tunedlens.train.loop as loop

    scripted = iter([1.0, 2.0, 3.0, 4.0])  # the start (step 0) validates best

    def scripted_kl(lenses, *args, **kwargs):
        value = next(scripted)
        return {name: torch.full((2,), value) for name in lenses}

    monkeypatch.setattr(loop, "sampled_kl", scripted_kl)
    cfg = config(tokens=16 * 24, val_every=1)
    start = TunedLens.from_model(model)
    fitted = min(cfg.lstsq_tokens, int(cfg.tokens * cfg.lstsq_budget_share)) // cfg.seq_len
    lstsq_init(start, model, data[:fitted], batch_size=cfg.batch_size)
    result = trained(model, data, cfg, val_data=data[64:])
    assert result.steps_done == 3 and result.best_step == 0 and result.val_kl == [1.0, 1.0]
    assert [h["step"] for h in result.history] == [0, 1, 2, 3]
    for name, value in result.lens.translator.state_dict().items():
        torch.testing.assert_close(value, start.translator.state_dict()[name])


def test_positions_layers_and_frozen_last_layer(model, data):
    cfg = config(
        "lowrank",
        positions_per_sequence=3,
        position_range=(4, 12),
        layers_per_step=1,
        freeze_last=True,
        lr=1e-2,
    )
    result = trained(model, data, cfg)
    translator = result.lens.translator
    assert (
        torch.count_nonzero(translator.V[-1]) == 0 and torch.count_nonzero(translator.bias[-1]) == 0
    )
    assert torch.count_nonzero(translator.V[0]) > 0
    assert all(loss is None or loss >= 0 for h in result.history for loss in [h["loss"]])


@pytest.mark.parametrize("recipe", ["default", "lowrank"])
def test_decoding_layers_together_equals_one_layer_at_a_time(model, data, recipe):
    """The loss decodes several layers in one product of the head (with per-layer temperatures
    for lowrank): the same training as one product per layer (64 rows per micro-batch)."""
    together = trained(model, data, config(recipe, loss_chunk_rows=2048))
    apart = trained(model, data, config(recipe, loss_chunk_rows=64))
    for one, other in zip(together.history, apart.history, strict=True):
        assert one["loss"] == pytest.approx(other["loss"], rel=1e-5)
    for name, value in together.lens.translator.state_dict().items():
        torch.testing.assert_close(
            value, apart.lens.translator.state_dict()[name], rtol=1e-4, atol=1e-5
        )


def test_lstsq_init_fits_the_final_residual(model, data):
    from tunedlens.arch import collect_residuals

    lens = TunedLens.from_model(model)
    lstsq_init(lens, model, data[:64])
    for tokens in (data[:64], data[64:]):  # the fitted data, then held-out data
        hidden = collect_residuals(model, tokens).hidden
        for layer in range(2):
            identity_error = (hidden[layer] - hidden[-1]).pow(2).mean()
            fitted_error = (lens.transform(hidden[layer], layer) - hidden[-1]).pow(2).mean()
            assert fitted_error < identity_error


def test_nan_loss_names_step_and_layer(model, data):
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        lens.translator.weight[1] = float("nan")
    with pytest.raises(TrainingDiverged, match="layer 1 is nan at step 1"):
        train_lens(lens, model, data[:64], config(lstsq_init=False))


def test_nan_activations_name_the_layer(data):
    broken = tiny_model("llama")
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight.fill_(float("inf"))
    from tunedlens.arch.residuals import NonFiniteActivations

    with pytest.raises(NonFiniteActivations, match="NaN or Inf from layer 1 on"):
        train_lens(TunedLens.from_model(broken), broken, data[:64], config(lstsq_init=False))


def test_bad_inputs(model, data):
    with pytest.raises(ValueError, match="budget needs 64"):
        train_lens(TunedLens.from_model(model), model, data[:10], config())
    with pytest.raises(ValueError, match="sequences of 16 tokens, config.seq_len=32"):
        train_lens(
            TunedLens.from_model(model), model, data, config(seq_len=32, tokens_per_step=32 * 4)
        )
    with pytest.raises(ValueError, match="lowrank translator"):
        train_lens(TunedLens.from_model(model, translator="lowrank"), model, data, config())


def test_a_lens_of_another_model_and_non_finite_settings_are_refused(model, data):
    from tunedlens.errors import LensMismatch

    other = tiny_model("llama", seed=3)
    with pytest.raises(LensMismatch, match="built for another model"):
        train_lens(TunedLens.from_model(other), model, data[:64], config(lstsq_init=False))
    with pytest.raises(ValueError, match="lr=nan is invalid; expected a finite number"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="betas"):
        TrainConfig(betas=(0.9, float("inf")))


def test_position_schedule_ramps_the_sampled_positions(model, data, monkeypatch):
    import tunedlens.train.loop as loop

    seen = []
    real = loop.collect_residuals

    def recording(*args, positions=None, **kwargs):
        seen.append(positions.shape[1])
        return real(*args, positions=positions, **kwargs)

    monkeypatch.setattr(loop, "collect_residuals", recording)
    cfg = config(positions_per_sequence=2, positions_per_sequence_end=10, lstsq_init=False)
    result = trained(model, data, cfg)
    per_step = len(seen) // result.steps_done
    counts = seen[::per_step]
    assert counts[0] == 2 and counts[-1] == 10 and counts == sorted(counts)
    with pytest.raises(ValueError, match="positions_per_sequence_end"):
        TrainConfig(positions_per_sequence=None, positions_per_sequence_end=4)
