"""Sub-layer points: the state after attention and before the MLP of every block (``ℓ.mid``),
captured by hooks, on every registered family that has one; parallel blocks refused."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from tiny_models import TINY_CONFIGS, tiny_model
from tunedlens.arch import collect_residuals, resolve_arch
from tunedlens.arch.points import NoMidPoint, block_rows, output_row, parse_point, row_label
from tunedlens.engine import readout
from tunedlens.lenses import LogitLens, TunedLens
from tunedlens.lenses.translators import DiagonalTranslator, LowRankTranslator, MLPTranslator
from tunedlens.train.config import Resolved
from tunedlens.view.trajectory import PredictionTrajectory

PARALLEL = {
    "gptj",
    "phi",
    "cohere",
    "cohere2",
    "falcon",
    "gpt_neox",
}  # as the tiny configs are built
WITH_MID = [family for family in TINY_CONFIGS if family not in PARALLEL]
# Non-default configurations: (model_type, config changes, has a mid point).
VARIANTS = [
    ("gpt_neox", dict(use_parallel_residual=False), True),
    ("falcon", dict(parallel_attn=False), True),
    ("stablelm", dict(use_parallel_residual=True), False),
    ("opt", dict(do_layer_norm_before=False), False),
]


def _mlp_halves(block):
    """The modules computing a block's MLP branch (zeroing them zeroes the branch)."""
    names = {"mlp", "fc1", "fc2"}
    return [module for name, module in block.named_children() if name in names]


def _check_mid_points(model, input_ids):
    arch = resolve_arch(model)
    both = collect_residuals(model, input_ids, points="both", with_logits=False)
    block = collect_residuals(model, input_ids, with_logits=False)
    mid = collect_residuals(model, input_ids, points="mid", with_logits=False)
    n = arch.n_blocks
    assert len(both.hidden) == 2 * n + 1 and len(mid.hidden) == n + 1 and both.points == "both"
    for layer in range(n):  # block rows are the block inputs; mid rows the same in both views
        assert torch.equal(both.hidden[2 * layer], block.hidden[layer])
        assert torch.equal(both.hidden[2 * layer + 1], mid.hidden[layer])
        # Attention moved the stream, and the MLP moves it again: the mid point is neither end.
        assert not torch.allclose(mid.hidden[layer], block.hidden[layer])
        assert not torch.allclose(mid.hidden[layer], block.hidden[layer + 1])
    assert torch.equal(both.hidden[-1], block.hidden[-1]) and torch.equal(
        mid.hidden[-1], block.hidden[-1]
    )
    # With the MLP branch zeroed, each block's output is exactly its mid point.
    with torch.no_grad():
        for layer in arch.layers:
            for module in _mlp_halves(layer):
                for parameter in module.parameters():
                    parameter.zero_()
    zeroed = collect_residuals(model, input_ids, points="both", with_logits=False)
    for layer in range(n):
        assert torch.equal(zeroed.hidden[2 * layer + 1], zeroed.hidden[2 * layer + 2]), layer


@pytest.mark.parametrize("model_type", WITH_MID)
def test_mid_point_is_between_attention_and_mlp(model_type, input_ids):
    _check_mid_points(tiny_model(model_type), input_ids)


@pytest.mark.parametrize(("model_type", "changes", "has_mid"), VARIANTS)
def test_config_variants(model_type, changes, has_mid, input_ids):
    model = tiny_model(model_type, **changes)
    if has_mid:
        _check_mid_points(model, input_ids)
    else:
        with pytest.raises(NoMidPoint, match="no mid point"):
            collect_residuals(model, input_ids, points="mid")


@pytest.mark.parametrize("model_type", sorted(PARALLEL))
def test_parallel_blocks_have_no_mid_point(model_type, input_ids):
    model = tiny_model(model_type)
    with pytest.raises(NoMidPoint, match="parallel"):
        collect_residuals(model, input_ids, points="both")
    with pytest.raises(NoMidPoint, match="--points block"):
        LogitLens(model, points="mid")
    with pytest.raises(NoMidPoint):
        TunedLens.from_model(model, points="mid")


def test_labels_and_rows():
    assert [row_label("block", row, 2) for row in range(3)] == ["0", "1", "output"]
    assert [row_label("both", row, 2) for row in range(5)] == ["0", "0.mid", "1", "1.mid", "output"]
    assert [row_label("mid", row, 2) for row in range(3)] == ["0.mid", "1.mid", "output"]
    assert [output_row(points, 3) for points in ("block", "mid", "both")] == [3, 3, 6]
    assert parse_point("1.mid", "both", 2) == 3 and parse_point("output", "mid", 2) == 2
    with pytest.raises(IndexError, match="its rows are 0.mid, 1.mid, output$"):
        parse_point("1", "mid", 2)
    with pytest.raises(IndexError, match="rows are 0, 0.mid, 1, ..., 9.mid, output$"):
        parse_point("10", "both", 10)
    assert block_rows("both", [0, 2]) == [0, 1, 4, 5] and block_rows("mid", [0, 2]) == [0, 2]


def test_unknown_points_are_refused(model, input_ids):
    with pytest.raises(ValueError, match="points must be one of block, mid, both"):
        collect_residuals(model, input_ids, points="post")
    with pytest.raises(ValueError, match="points must be one of"):
        LogitLens(model, points="attn")


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "olmo2", "gpt2"])
def test_logit_lens_at_mid_points_decodes_the_mid_states(model_type, input_ids):
    model = tiny_model(model_type)
    lens = LogitLens(model, points="both")
    states = collect_residuals(model, input_ids, points="both")
    result = readout(model, lens, input_ids, stats=("kl",), logprobs=True)["logit"]
    assert result.logprobs.shape[1] == 2 * lens.n_blocks + 1
    for row in range(lens.output_row + 1):
        expected = lens(states.hidden[row], row).log_softmax(-1)
        torch.testing.assert_close(result.logprobs[:, row], expected, rtol=1e-5, atol=1e-5)
    # Its block rows are the block lens's rows; the output row is the model's own distribution.
    block = readout(model, LogitLens(model), input_ids, stats=("kl",))["logit"]
    torch.testing.assert_close(result["kl"][:, 0::2], block["kl"], rtol=1e-4, atol=1e-5)
    assert result["kl"][:, -1].abs().max() < 1e-5


def test_readout_labels_rows_and_refuses_mixed_points(model, input_ids):
    mid, block = LogitLens(model, points="mid"), LogitLens(model)
    result = readout(model, {"mid": mid}, input_ids, rows=[0, 1, 2, (0, 1)], stats=())
    assert result.row_labels == ["0.mid", "1.mid", "output", "1.mid@0.mid"]
    with pytest.raises(ValueError, match="different points"):
        readout(model, {"mid": mid, "block": block}, input_ids)
    states = collect_residuals(model, input_ids)  # block states for a mid lens
    with pytest.raises(ValueError, match="block points, the lens reads mid points"):
        readout(None, mid, input_ids, states=states)


@pytest.mark.parametrize(
    ("points", "labels"),
    [
        ("block", ["0", "1", "output"]),
        ("mid", ["0.mid", "1.mid", "output"]),
        ("both", ["0", "0.mid", "1", "1.mid", "output"]),
    ],
)
def test_one_vocabulary_for_rows(model, input_ids, points, labels):
    """``n_blocks`` is L everywhere; rows run 0..output_row; one function names them."""
    arch = resolve_arch(model)
    logit, tuned = LogitLens(model, points=points), TunedLens.from_model(model, points=points)
    residuals = collect_residuals(model, input_ids, points=points)
    result = readout(model, {"logit": logit, "tuned": tuned}, input_ids, stats=())
    trajectory = PredictionTrajectory.from_lens_and_model(logit, model, input_ids[0])
    holders = [arch, logit, tuned, residuals, result, trajectory]
    assert (
        {holder.n_blocks for holder in holders}
        == {arch.n_blocks}
        == {model.config.num_hidden_layers}
    )
    last = 2 * arch.n_blocks if points == "both" else arch.n_blocks
    assert {holder.output_row for holder in holders[1:]} == {last} == {len(labels) - 1}
    assert tuned.translator.n_rows == last and trajectory.rows == list(range(last + 1))
    assert result.row_labels == trajectory.row_labels == labels
    assert [row_label(points, row, logit.n_blocks) for row in result.rows] == labels
    translators = [
        tuned.translator,
        LowRankTranslator(last, 32),
        DiagonalTranslator(last, 32),
        MLPTranslator(last, 32),
    ]
    for holder in [*holders, *translators]:
        assert not hasattr(holder, "n_layers") and not hasattr(holder, "row_label"), holder
    fields = {field.name for field in dataclasses.fields(Resolved)}
    assert {"n_blocks", "output_row"} <= fields and "n_layers" not in fields


def test_the_package_has_one_row_vocabulary():
    """No ``n_layers`` of either meaning, and no second way to label a row."""
    import tunedlens
    import tunedlens.arch.points
    import tunedlens.engine

    root = Path(tunedlens.__file__).parent
    found = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*"))
        if path.suffix in (".py", ".js")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bn_layers\b|\bpoint_label\b|(?<!points)\.row_label\(", line)
    ]
    assert found == []
    assert not hasattr(tunedlens.engine, "row_label") and not hasattr(
        tunedlens.arch.points, "point_label"
    )
