"""A checkpoint whose translator holds NaN is refused on load, naming the tensor and layer."""

import pytest
import torch

from tunedlens.train.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)


def test_a_nan_checkpoint_is_refused(tmp_path):
    weight = torch.zeros(3, 4, 4)
    weight[2, 0, 1] = float("nan")
    save_checkpoint(tmp_path, {"version": CHECKPOINT_VERSION, "translator": {"weight": weight}})
    with pytest.raises(CheckpointError, match="'weight' holds NaN or Inf \\(first at layer 2\\)"):
        load_checkpoint(tmp_path)
