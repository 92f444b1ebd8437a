"""Token ids are integers at every public entry point: floats are refused, never truncated."""

import numpy as np
import pytest
import torch

from tiny_models import random_lens
from tunedlens import (
    LogitLens,
    PredictionTrajectory,
    collect_residuals,
    evaluate,
    fit_jacobian_lens,
    readout,
)
from tunedlens.arch.residuals import token_ids
from tunedlens.train import TrainConfig, train_lens

FLOATS = {
    "float tensor": lambda ids: ids.float() + 0.7,
    "integral float tensor": lambda ids: ids.float(),
    "bool tensor": lambda ids: ids > 50,
    "nested float list": lambda ids: [[-0.9, 504.5], [3.0, 4.0]],
    "flat float list": lambda ids: [3.9, 4.0, 5.0],
    "float array": lambda ids: ids.numpy().astype(np.float32),
}


def _calls(model, lens):
    config = TrainConfig(tokens=64, seq_len=8, batch_size=2, tokens_per_step=32, val_tokens=0)
    return {
        "readout": lambda ids: readout(model, lens, ids, stats=("kl",)),
        "readout targets": lambda ids: readout(
            model, lens, torch.ones(2, 9, dtype=torch.long), targets=ids, stats=("ce",)
        ),
        "readout tokens": lambda ids: readout(
            model, lens, torch.ones(2, 9, dtype=torch.long), tokens=ids, stats=("prob",)
        ),
        "collect_residuals": lambda ids: collect_residuals(model, ids),
        "evaluate": lambda ids: evaluate(model, lens, ids, bootstrap=0),
        "fit_jacobian_lens": lambda ids: fit_jacobian_lens(model, ids, skip_first=1),
        "train_lens": lambda ids: train_lens(random_lens(model), model, ids, config),
        "trajectory": lambda ids: PredictionTrajectory.from_lens_and_model(lens, model, ids),
        "token_directions": lambda ids: fit_jacobian_lens(
            model, torch.randint(3, 120, (1, 6)), skip_first=1
        ).token_directions(1, ids),
    }


def test_every_entry_point_refuses_float_ids(model, input_ids):
    lens = LogitLens(model)
    for name, call in _calls(model, lens).items():
        for kind, make in FLOATS.items():
            with pytest.raises(TypeError, match="must be integer token ids"):
                call(make(input_ids))
                pytest.fail(f"{name} accepted {kind}")


def test_integer_ids_of_any_integer_type_are_accepted():
    for values in (
        [1, 2, 3],
        np.array([1, 2, 3], dtype=np.int32),
        torch.tensor([1, 2, 3], dtype=torch.int16),
    ):
        ids = token_ids(values)
        assert ids.dtype == torch.long and ids.tolist() == [1, 2, 3]
