"""The Lensed facade on a tiny model: a thin layer over predict_layers, readout, load_lens and
train_lens."""

import sys
import types
from pathlib import Path

import pytest
import torch

from tiny_models import random_lens, tiny_model
from tunedlens import (
    JacobianLens,
    Lensed,
    LogitLens,
    TunedLens,
    collect_residuals,
    predict_layers,
)
from tunedlens.errors import InputError

PROMPT = "w1 w2 w3 w4"


@pytest.fixture
def lensed(tiny_tokenizer):
    return Lensed(tiny_model("llama"), tiny_tokenizer)


@pytest.fixture
def block_runs(lensed):
    """How many times the model's first decoder block ran (once per forward pass)."""
    runs = []
    handle = lensed.model.model.layers[0].register_forward_hook(lambda *_: runs.append(1))
    yield runs
    handle.remove()


@pytest.fixture
def jupyter(monkeypatch):
    """A stand-in IPython session: ``get_ipython()`` answers, ``display`` records its objects."""
    shown = []
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: object()
    display = types.ModuleType("IPython.display")
    display.display = shown.append
    ipython.display = display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    return shown


@pytest.fixture
def no_jupyter(monkeypatch):
    """IPython importable but no session running (a script, a plain python shell)."""
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: None
    monkeypatch.setitem(sys.modules, "IPython", ipython)


def test_logit_lens_is_predict_layers(lensed, tiny_tokenizer):
    ids = tiny_tokenizer(PROMPT, return_tensors="pt").input_ids
    residuals = collect_residuals(lensed.model, ids)
    for position in range(4):
        result = lensed.logit_lens(PROMPT, top_k=3, position=position)
        assert result == predict_layers(
            lensed.model,
            tiny_tokenizer,
            PROMPT,
            LogitLens(lensed.model),
            top_k=3,
            position=position,
        )
        assert [row.label for row in result] == ["0", "1", "output"]  # row L is the model's output
        for row, prediction in enumerate(result):
            with torch.no_grad():
                probs = LogitLens(lensed.model)(residuals.hidden[row][0, position], row).softmax(-1)
            values, indices = probs.topk(3)
            assert [t.id for t in prediction.top] == indices.tolist()
            assert [t.prob for t in prediction.top] == pytest.approx(values.tolist(), abs=1e-6)
            assert prediction.top[0].token == tiny_tokenizer.decode([prediction.top[0].id])
    assert lensed.logit_lens(PROMPT) == lensed.logit_lens(PROMPT, top_k=1, position=-1)
    mid = lensed.logit_lens(PROMPT, points="both", layers=[1])
    assert [row.label for row in mid] == ["1", "1.mid", "output"]


def test_tuned_lens_and_load_lens(lensed, tmp_path):
    TunedLens.from_model(lensed.model).save(tmp_path / "lens")
    loaded = lensed.load_lens(tmp_path / "lens")
    assert isinstance(loaded, TunedLens)
    assert lensed.load_lens("logit").kind == "logit"
    # An untrained tuned lens reads like the logit lens.
    assert lensed.tuned_lens("w5 w6", loaded, top_k=2) == lensed.logit_lens("w5 w6", top_k=2)
    assert lensed.tuned_lens("w5 w6", tmp_path / "lens") == lensed.logit_lens("w5 w6")
    trained = random_lens(lensed.model)
    assert lensed.tuned_lens(PROMPT, trained, top_k=4, position=1, layers=[1]) == predict_layers(
        lensed.model, lensed.tokenizer, PROMPT, trained, top_k=4, position=1, layers=[1]
    )
    with pytest.raises(ValueError, match="when loading"):
        lensed.tuned_lens(PROMPT, trained, skip_norm=True)


def test_compare_reads_both_lenses_in_one_pass(lensed, block_runs):
    trained = random_lens(lensed.model)
    table = lensed.compare("w5 w6 w7", trained, top_k=2, position=-2)
    assert len(block_runs) == 1  # one readout of both lenses: the model ran once
    assert table.position == 1 and list(table.columns) == ["logit lens", "tuned lens"]
    assert table.row_labels == ["0", "1", "output"] and table.rows == [0, 1, 2]
    for lens, column in ((LogitLens(lensed.model), "logit lens"), (trained, "tuned lens")):
        alone = predict_layers(
            lensed.model, lensed.tokenizer, "w5 w6 w7", lens, top_k=2, position=1
        )
        assert [r.label for r in alone] == [r.label for r in table.columns[column]]
        for mine, theirs in zip(table.columns[column], alone, strict=True):
            assert [t.id for t in mine.top] == [t.id for t in theirs.top]
            assert [t.prob for t in mine.top] == pytest.approx(
                [t.prob for t in theirs.top], abs=1e-6
            )
    text = str(table)
    assert text.splitlines()[0].split() == ["row", "logit", "lens", "tuned", "lens"]
    assert text.splitlines()[-1].split()[0] == "output"
    assert "<th>tuned lens</th>" in table._repr_html_() and "<td>output</td>" in table._repr_html_()


def test_compare_labels_a_column_by_its_lens_kind(lensed, tmp_path):
    logit = LogitLens(lensed.model)
    d_model = logit.unembed.d_model
    generator = torch.Generator().manual_seed(3)
    matrices = {
        row: torch.eye(d_model) + 0.1 * torch.randn(d_model, d_model, generator=generator)
        for row in range(2)
    }
    table = lensed.compare("w5 w6 w7", JacobianLens(logit.unembed, matrices))
    assert list(table.columns) == ["logit lens", "Jacobian lens"]
    assert list(lensed.compare("w5 w6", logit).columns) == ["logit lens", "logit lens 2"]
    TunedLens.from_model(lensed.model).save(tmp_path / "lens")
    assert "tuned lens" in lensed.compare("w5 w6", tmp_path / "lens").columns


def test_plot_in_jupyter_shows_the_figure(lensed, jupyter):
    rows = lensed.logit_lens("w1 w2", plot=True)
    assert [row.label for row in rows] == ["0", "1", "output"]
    assert jupyter == [lensed.last_figure] and len(lensed.last_figure.data) == 1


@pytest.mark.parametrize("method", ["logit_lens", "tuned_lens"])
def test_plot_outside_jupyter_is_refused_before_any_work(lensed, no_jupyter, block_runs, method):
    args = ("w1 w2",) if method == "logit_lens" else ("w1 w2", random_lens(lensed.model))
    with pytest.raises(ValueError, match="inline in Jupyter.*Lensed.plot"):
        getattr(lensed, method)(*args, plot=True)
    assert block_runs == [] and lensed.last_figure is None


def test_plot_returns_the_figure_anywhere(lensed, no_jupyter):
    figure = lensed.plot(lensed.trajectory("w1 w2 w3"), stats=("entropy", "kl"))
    assert figure is lensed.last_figure and len(figure.data) == 2


def test_train_lens_takes_train_config_names(lensed, tmp_path):
    texts = [" ".join(f"w{(i * 7 + j) % 120}" for j in range(40)) for i in range(12)]
    steps = []
    lens = lensed.train_lens(
        texts,
        tokens=12 * 8 * 32,
        seq_len=32,
        lr=0.01,
        verbose=False,
        callback=steps.append,
        save_path=tmp_path / "trained",
    )
    assert [s.step for s in steps] == list(range(1, 13)) and steps[-1].loss < steps[0].loss
    assert steps[0].lr == pytest.approx(0.01)  # the paper recipe's linear decay starts at lr
    assert steps[0].tokens == 8 * 32  # one batch of batch_size sequences per step
    assert isinstance(lens, TunedLens) and (tmp_path / "trained").is_dir()
    assert isinstance(lensed.load_lens(tmp_path / "trained"), TunedLens)


def test_train_lens_bad_options(lensed, block_runs):
    texts = ["w1 w2 w3 w4 w5 w6 w7 w8"] * 4
    with pytest.raises(ValueError, match="num_steps: not a TrainConfig field"):
        lensed.train_lens(texts, num_steps=1)
    with pytest.raises(ValueError, match="val_every need held-out data"):
        lensed.train_lens(texts, val_every=2)
    with pytest.raises(ValueError, match="recipe='fast' is unknown"):
        lensed.train_lens(texts, recipe="fast")
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        lensed.train_lens(texts, seq_len=100)
    with pytest.raises(ValueError, match="fewer than seq_len=60"):
        lensed.train_lens(texts, seq_len=60)
    with pytest.raises(ValueError, match="lr=-1.0 is invalid"):
        lensed.train_lens(texts, seq_len=8, lr=-1.0)
    assert block_runs == []


def test_bad_input(lensed, tmp_path, block_runs):
    with pytest.raises(ValueError, match="empty"):
        lensed.logit_lens("")
    with pytest.raises(IndexError, match="outside"):
        lensed.logit_lens("w1 w2", position=5)
    with pytest.raises(IndexError, match="outside"):
        lensed.compare("w1 w2", tmp_path / "missing", position=5)  # before the lens is looked for
    with pytest.raises(IndexError, match="outside"):
        lensed.tuned_lens("w1 w2", tmp_path / "missing", position=5)
    with pytest.raises(ValueError, match="top_k"):
        lensed.compare("w1 w2", tmp_path / "missing", top_k=0)
    with pytest.raises(ValueError, match="tokenizer"):
        Lensed(lensed.model)
    with pytest.raises(ValueError, match="no text"):
        lensed.train_lens(["", ""], tokens=8)
    assert block_runs == []
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


def test_the_analyses_are_methods_of_the_facade(lensed, tmp_path):
    pytest.importorskip("sklearn")
    from tunedlens.analyze import DetectReport, PruneReport, prune

    model = lensed.model
    calibration = torch.randint(4, 120, (4, 16), generator=torch.Generator().manual_seed(1))
    test = torch.randint(4, 120, (4, 16), generator=torch.Generator().manual_seed(2))
    report = lensed.prune(calibration, test, max_remove=1, heal=(), generation_prompts=0)
    direct = prune(model, calibration, test_ids=test, max_remove=1, heal=(), generation_prompts=0)
    assert isinstance(report, PruneReport)
    assert report.to_dict()["scores"] == direct.to_dict()["scores"]
    assert report.to_dict()["curves"] == direct.to_dict()["curves"]
    sys.path.insert(0, str(Path(__file__).parents[1] / "analyze"))
    from test_detect import _task_file

    found = lensed.detect(_task_file(tmp_path / "words.jsonl"), bootstrap=10)
    assert isinstance(found, DetectReport) and found.results


def test_early_exit_is_a_method_of_the_facade(lensed):
    from tunedlens.analyze import EarlyExitReport, early_exit

    lens = random_lens(lensed.model)
    ids = torch.randint(4, 120, (4, 12), generator=torch.Generator().manual_seed(3))
    options = dict(measures=["max-prob", "saturation"], check_rows=[1])
    report = lensed.early_exit(ids, lenses=[lens], generate=2, prompt_tokens=4, **options)
    direct = early_exit(lensed.model, [lens], ids, **options)
    assert isinstance(report, EarlyExitReport)
    assert report.to_dict()["lenses"] == direct.to_dict()["lenses"]
    assert report.to_dict()["calibration"] == direct.to_dict()["calibration"]
    assert len(report.to_dict()["generation"]["prompts"]) == 2  # test sequences 1 and 3
    texts = [" ".join(f"w{i}" for i in range(4 + k, 40 + k)) for k in range(4)]
    from_text = lensed.early_exit(texts, seq_len=8, measures=["entropy"])
    assert from_text.to_dict()["seq_len"] == 8 and "entropy" in from_text.summary()
    bare = Lensed(lensed.model, lensed.tokenizer)
    bare.tokenizer = None  # as Lensed("a model folder without tokenizer files") is
    with pytest.raises(InputError, match="pass a tokenizer"):
        bare.early_exit(ids, generate=2)
