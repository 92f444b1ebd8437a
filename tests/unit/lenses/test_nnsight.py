"""Lenses inside an nnsight trace: logits decoded from the traced states equal ours."""

import pytest
import torch

from tiny_models import random_lens, tiny_model
from tunedlens import LogitLens, collect_residuals


def test_lens_logits_inside_an_nnsight_trace_equal_ours(tiny_tokenizer):
    nnsight = pytest.importorskip("nnsight")
    model = tiny_model("llama")
    ids = torch.randint(4, 120, (1, 9), generator=torch.Generator().manual_seed(0))
    traced = nnsight.TransformersModel(model, task="text-generation", tokenizer=tiny_tokenizer)
    for lens in (random_lens(model), LogitLens(model)):
        saved = []
        with traced.trace(ids):
            # Modules run in order, so the embeddings (row 0) are read before the blocks.
            saved.append(lens(traced.model.embed_tokens.output, 0).save())
            for row, block in enumerate(traced.model.layers[:-1], 1):
                output = block.output
                hidden = output[0] if isinstance(output, tuple) else output
                saved.append(lens(hidden, row).save())
        residuals = collect_residuals(model, ids)
        assert len(saved) == len(residuals.hidden) - 1
        for row, logits in enumerate(saved):
            torch.testing.assert_close(logits, lens(residuals.hidden[row], row), rtol=0, atol=0)
