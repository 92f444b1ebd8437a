"""What a J-lens fit tells while it works: backward passes inside a prompt, an estimate up front,
and a warning when the prompts are too few for the middle rows."""

import warnings

import pytest
import torch

from tiny_models import tiny_model
from tunedlens.jacobian.fit import (
    FEW_PROMPTS,
    backward_passes,
    few_prompts_warning,
    fit_jacobian_lens,
)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def test_progress_inside_prompts_estimate_and_warning(model):
    ids = torch.randint(3, 120, (3, 9), generator=torch.Generator().manual_seed(0))
    passes, prompts, lines = [], [], []
    d_model = model.config.hidden_size
    fit_jacobian_lens(
        model,
        ids,
        skip_first=2,
        dim_batch=5,
        on_pass=lambda done, total: passes.append((done, total)),
        progress=lambda done, total: prompts.append((done, total)),
        status=lines.append,
    )
    per_prompt = backward_passes(d_model, 5)
    assert per_prompt == -(-d_model // 5) and per_prompt > 1
    total = 3 * per_prompt
    assert passes == [(done, total) for done in range(1, total + 1)]  # every pass, in order
    assert prompts == [(1, 3), (2, 3), (3, 3)]
    warning, plan, estimate = lines
    assert "3 prompts" in warning and f"at least {FEW_PROMPTS}" in warning
    assert f"{per_prompt} backward passes each" in plan and f"{total:,} backward passes" in plan
    assert "first backward pass" in estimate and "for the fit" in estimate


def test_the_few_prompts_threshold(model):
    assert few_prompts_warning(FEW_PROMPTS - 1) is not None
    assert few_prompts_warning(FEW_PROMPTS) is None
    ids = torch.randint(3, 120, (2, 6), generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="noise in its middle rows"):
        fit_jacobian_lens(model, ids, skip_first=1, rows=[0])
    # A part of a larger fit is judged by the prompts of the whole fit.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_jacobian_lens(
            model, ids, skip_first=1, rows=[0], metadata={"packed_prompts": FEW_PROMPTS}
        )
