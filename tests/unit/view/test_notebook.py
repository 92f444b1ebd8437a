"""The Lensed facade on a tiny model."""

import pytest
import torch

from tiny_models import tiny_model
from tunedlens import Lensed, LogitLens, TunedLens, collect_residuals


@pytest.fixture
def lensed(tiny_tokenizer):
    return Lensed(tiny_model("llama"), tiny_tokenizer)


def test_logit_lens_returns_top_k_per_layer_and_position(lensed, tiny_tokenizer):
    result = lensed.logit_lens("w1 w2 w3 w4", top_k=3)
    assert list(result) == [0, 1, 2]  # layer 2 is the model's own output
    assert all(len(positions) == 4 for positions in result.values())
    ids = tiny_tokenizer("w1 w2 w3 w4", return_tensors="pt").input_ids
    residuals = collect_residuals(lensed.model, ids)
    for layer in (0, 1, 2):
        with torch.no_grad():
            probs = LogitLens(lensed.model)(residuals.hidden[layer][0], layer).softmax(-1)
        for position, predictions in enumerate(result[layer]):
            values, indices = probs[position].topk(3)
            assert [p[0] for p in predictions] == indices.tolist()
            assert [p[1] for p in predictions] == pytest.approx(values.tolist(), abs=1e-6)
            assert predictions[0][2] == tiny_tokenizer.decode([predictions[0][0]])
    last = lensed.logit_lens("w1 w2 w3 w4", position=-1)
    for key, cells in last.items():  # one position: the same tokens, probabilities to 1e-6
        assert len(cells) == 1 and [p[0] for p in cells[0]] == [result[key][-1][0][0]]
        assert cells[0][0][1] == pytest.approx(result[key][-1][0][1], abs=1e-6)


def test_tuned_lens_compare_and_load(lensed, tmp_path):
    lens = TunedLens.from_model(lensed.model)
    lens.save(tmp_path / "lens")
    loaded = lensed.load_tuned_lens(tmp_path / "lens")
    # An untrained tuned lens reads like the logit lens.
    assert lensed.tuned_lens("w5 w6", loaded, top_k=2) == lensed.logit_lens("w5 w6", top_k=2)
    assert lensed.tuned_lens("w5 w6", tmp_path / "lens") == lensed.logit_lens("w5 w6")
    table = lensed.compare("w5 w6 w7", loaded)
    assert [row["layer"] for row in table.rows] == [0, 1, 2]
    assert all(row["logit"] == row["tuned"] for row in table.rows)
    assert "logit lens" in str(table) and "<table>" in table._repr_html_()


def test_plot_returns_a_figure(lensed):
    lensed.logit_lens("w1 w2", plot=True)
    assert lensed.last_figure is not None and len(lensed.last_figure.data) == 1


def test_train_tuned_lens_lowers_the_loss(lensed, tmp_path):
    texts = [" ".join(f"w{(i * 7 + j) % 120}" for j in range(40)) for i in range(12)]
    losses = []
    lens = lensed.train_tuned_lens(texts, num_steps=12, max_seq_len=32, verbose=False, learning_rate=0.1,
                                   callback=lambda s: losses.append(s.loss),
                                   save_path=tmp_path / "trained")  # fmt: skip
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert isinstance(lens, TunedLens) and (tmp_path / "trained").is_dir()


def test_bad_input(lensed, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        lensed.logit_lens("")
    with pytest.raises(IndexError, match="outside"):
        lensed.logit_lens("w1 w2", position=5)
    with pytest.raises(ValueError, match="tokenizer"):
        Lensed(lensed.model)
    with pytest.raises(ValueError, match="no text"):
        lensed.train_tuned_lens(["", ""], num_steps=1)
    other = TunedLens.from_model(tiny_model("llama", seed=4))
    other.save(tmp_path / "other")
    with pytest.raises(Exception, match="unembedding differs"):
        lensed.tuned_lens("w1", tmp_path / "other")


def test_prompt_longer_than_the_context(lensed):
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        lensed.logit_lens(" ".join(["w1"] * 70))


def test_trajectory_plot_writes_and_returns_a_figure(lensed, tmp_path):
    trajectory = lensed.trajectory("w1 w2 w3")
    figure = trajectory.plot("entropy", "kl", path=tmp_path / "fig.html")
    assert len(figure.data) == 2 and "Plotly.newPlot" in (tmp_path / "fig.html").read_text()
