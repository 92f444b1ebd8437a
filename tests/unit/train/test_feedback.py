"""What a run tells while it works, and what its fixed costs are: progress per phase, validation
at the positions training samples, costs that grow with the budget, the logit lens beside."""

import pytest
import torch
from rich.console import Console

import tunedlens.train.loop as loop
from tiny_models import tiny_model
from tunedlens.engine import layer_kl
from tunedlens.lenses import LogitLens, TunedLens
from tunedlens.metrics.divergence import NATS_TO_BITS
from tunedlens.train import recipe_config, train_lens
from tunedlens.train.config import VAL_SEQUENCES, validation_sequences
from tunedlens.train.loop import sampled_kl, validation_positions

SMALL = dict(
    tokens=16 * 64,
    tokens_per_step=16 * 8,
    seq_len=16,
    batch_size=4,
    lstsq_tokens=512,
    lstsq_budget_share=0.5,
    positions_per_sequence=5,
    position_range=(2, 14),
)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", initializer_range=0.2, logit_gain=3.0)


@pytest.fixture(scope="module")
def data():
    return torch.randint(3, 120, (80, 16), generator=torch.Generator().manual_seed(0))


def config(**changes):
    return recipe_config("default", **{**SMALL, **changes})


def test_validation_reads_the_positions_training_samples(model, data, monkeypatch):
    """Training and validation pass the same number of positions per sequence, from the same
    range; validation draws its positions once, so every validation reads the same cells."""
    seen = {"train": [], "validation": []}
    original = loop.collect_residuals
    phase = {"now": "train"}

    def spy(model, ids, **kwargs):
        seen[phase["now"]].append(kwargs["positions"])
        return original(model, ids, **kwargs)

    original_validate = loop._Trainer.validate

    def validate(self, tokens):
        phase["now"] = "validation"
        try:
            return original_validate(self, tokens)
        finally:
            phase["now"] = "train"

    monkeypatch.setattr(loop, "collect_residuals", spy)
    monkeypatch.setattr(loop._Trainer, "validate", validate)
    cfg = config(lstsq_init=False, val_every=4)
    lens = TunedLens.from_model(model)
    train_lens(lens, model, data[:64], cfg, val_data=data[64:])
    train, validation = seen["train"], torch.cat(seen["validation"])
    assert all(p.shape[1] == 5 for p in train) and validation.shape[1] == 5
    for positions in [*train, validation]:
        assert positions.min() >= 2 and positions.max() < 14
        assert (positions.diff(dim=1) > 0).all()  # sorted, no position twice
    runs = validation.split(16)  # two validations (steps 4 and 8) of the 16 held-out sequences
    assert len(runs) == 2 and torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0], validation_positions(cfg, 16))
    assert not torch.equal(runs[0], torch.cat(train)[:16])  # its own draw, not training's


def test_validation_is_exact_kl_at_those_positions(model, data):
    lens = TunedLens.from_model(model)
    tokens = data[64:70]
    # Every position: the readout engine's layer_kl over the whole grid.
    every = sampled_kl({"lens": lens}, model, tokens, None, batch_size=4)["lens"]
    torch.testing.assert_close(every, layer_kl(lens, model, tokens), rtol=1e-5, atol=1e-7)
    # Sampled positions: the mean over those cells of the full grid's KL.
    positions = validation_positions(config(), tokens.shape[0])
    both = sampled_kl(
        {"lens": lens, "logit": LogitLens(model)}, model, tokens, positions, batch_size=4
    )
    from tunedlens.engine import readout

    grid = readout(model, {"lens": lens, "logit": LogitLens(model)}, tokens, stats=("kl",))
    for name in ("lens", "logit"):
        cells = grid[name]["kl"][:, :-1]  # (batch, rows below the output, positions)
        picked = torch.stack([cells[b][:, positions[b]] for b in range(tokens.shape[0])])
        expected = picked.double().mean((0, 2))
        torch.testing.assert_close(both[name], expected, rtol=1e-5, atol=1e-7)


def test_validation_and_lstsq_costs_grow_with_the_budget():
    fewest, most = VAL_SEQUENCES
    sizes = [
        validation_sequences(recipe_config("default", tokens=tokens))
        for tokens in (2**14, 2**17, 2**19, 2**21, 2**24)
    ]
    assert sizes[0] == fewest and sizes[-1] == most
    assert sizes == sorted(sizes) and len(set(sizes)) >= 3
    assert sizes[1] == 2**17 // 16 // 512  # a sixteenth of the budget
    # Every position read (no sampling): at most the fewest sequences, as dear as before.
    assert validation_sequences(recipe_config("paper", tokens=2**24)) == fewest
    # Given explicitly, the held-out tokens are what was asked; 0 turns validation off.
    assert validation_sequences(recipe_config("default", val_tokens=4096)) == 8
    assert validation_sequences(recipe_config("default", val_tokens=0)) == 0


def test_lstsq_tokens_are_a_share_of_the_budget(model, data):
    used = []
    for tokens in (256, 512, 1024):
        cfg = config(tokens=tokens, lstsq_tokens=10**6, lstsq_budget_share=0.25, val_tokens=0)
        used.append(train_lens(TunedLens.from_model(model), model, data, cfg).lstsq_tokens)
    assert used == [64, 128, 256]


def test_progress_fires_in_every_phase(model, data):
    events = []
    cfg = config(val_every=4)
    result = train_lens(
        TunedLens.from_model(model),
        model,
        data[:64],
        cfg,
        val_data=data[64:],
        progress=lambda phase, done, total: events.append((phase, done, total)),
    )
    phases = [event[0] for event in events]
    lstsq = [event for event in events if event[0] == "lstsq"]
    sequences = result.lstsq_tokens // cfg.seq_len
    # The least-squares start comes first, from 0 to all its sequences, a batch at a time.
    assert phases[: len(lstsq)] == ["lstsq"] * len(lstsq) and len(lstsq) >= 3
    assert lstsq[0][1:] == (0, sequences) and lstsq[-1][1:] == (sequences, sequences)
    train = [event for event in events if event[0] == "train"]
    total = cfg.tokens
    assert train[0][1:] == (0, total) and train[-1][1:] == (total, total)
    done = [event[1] for event in train]
    assert done == sorted(done) and len(done) == 1 + total // (cfg.batch_size * cfg.seq_len)
    validation = [event for event in events if event[0] == "validation"]
    # The least-squares start's, the one every 4 steps, and the last.
    assert [e[1:] for e in validation if e[1] == 0] == [(0, 16)] * 3
    assert phases.index("validation") < phases.index("train")
    assert validation[-1][1:] == (16, 16)


def test_the_final_table_has_the_logit_lens(model, data):
    from tunedlens.cli.progress import summary_table

    cfg = config(lstsq_init=False)
    result = train_lens(TunedLens.from_model(model), model, data[:64], cfg, val_data=data[64:])
    positions = validation_positions(cfg, 16)
    logit = sampled_kl({"logit": LogitLens(model)}, model, data[64:], positions, batch_size=4)
    torch.testing.assert_close(
        torch.tensor(result.logit_val_kl, dtype=torch.float64), logit["logit"], rtol=1e-5, atol=0
    )
    assert result.val_positions == 16 * 5
    console = Console(record=True, width=80)
    console.print(summary_table(result))
    text = console.export_text()
    assert "logit lens" in text and "tuned lens" in text and "80 held-out positions" in text
    header = next(line for line in text.splitlines() if "logit lens" in line)
    row = next(line for line in text.splitlines() if line.split("│")[1:2] == ["    1 "])
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert header.index("tuned") < header.index("logit")
    assert float(cells[1]) == pytest.approx(result.val_kl[1] * NATS_TO_BITS, abs=1e-3)
    assert float(cells[2]) == pytest.approx(result.logit_val_kl[1] * NATS_TO_BITS, abs=1e-3)
    mean = next(line for line in text.splitlines() if "mean" in line)
    expected = sum(result.logit_val_kl) / len(result.logit_val_kl) * NATS_TO_BITS
    assert f"{expected:.3f}" in mean


def test_micro_batches_reuse_the_least_squares_pass(model, data, monkeypatch):
    """The first micro-batches train on the sequences the least-squares start ran: they take its
    states at their positions instead of running the model again, and the run is the same."""
    cfg = config(val_tokens=0)  # lstsq on 512 tokens: the first 32 sequences, 8 micro-batches
    reused = train_lens(TunedLens.from_model(model), model, data[:64], cfg)
    forwards = []
    original = loop.collect_residuals

    def counting(*args, **kwargs):
        forwards.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "collect_residuals", counting)
    monkeypatch.setattr(loop, "REUSE_BYTES", 0)  # nothing kept: every micro-batch runs the model
    plain = train_lens(TunedLens.from_model(model), model, data[:64], cfg)
    assert len(forwards) == 16
    forwards.clear()
    monkeypatch.setattr(loop, "REUSE_BYTES", 2**30)
    train_lens(TunedLens.from_model(model), model, data[:64], cfg)
    assert len(forwards) == 16 - 512 // 16 // 4  # 8 micro-batches came from the kept states
    assert reused.lstsq_tokens == plain.lstsq_tokens == 512
    for one, other in zip(reused.history, plain.history, strict=True):
        assert one["loss"] == pytest.approx(other["loss"], rel=1e-5)
    for name, value in reused.lens.translator.state_dict().items():
        torch.testing.assert_close(
            value, plain.lens.translator.state_dict()[name], rtol=1e-5, atol=1e-6
        )
