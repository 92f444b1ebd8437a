"""End to end on the real embedded default model, SmolLM2-135M-Instruct (dequantised Q4_1 GGUF)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from paths import SHARED
from tunedlens import LogitLens, TunedLens, load_lens, load_model
from tunedlens.arch import collect_residuals
from tunedlens.predict import predict_layers

pytestmark = pytest.mark.integration
PROMPT = "The capital of France is"
REFERENCE_LENS = SHARED / "peer" / "fixtures" / "smollm2"


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def test_demo_is_smollm2(demo):
    model, _ = demo
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576 and model.lm_head.weight.shape[0] == 49152


def test_logit_lens_output_row_equals_model_logits(demo):
    model, tokenizer = demo
    input_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    residuals = collect_residuals(model, input_ids)
    decoded = LogitLens(model)(residuals.hidden[-1], 30)
    torch.testing.assert_close(decoded, residuals.logits, rtol=1e-5, atol=1e-4)


def test_predict_says_paris(demo):
    model, tokenizer = demo
    rows = predict_layers(model, tokenizer, PROMPT, top_k=3)
    assert len(rows) == 31 and rows[-1].label == "output"
    assert rows[-1].top[0].token == " Paris"
    # The logit lens of early layers has not found the answer yet.
    assert rows[0].top[0].token != " Paris"


@pytest.mark.skipif(not REFERENCE_LENS.exists(), reason="shared/peer fixtures not present")
def test_reference_smollm2_lens_is_reproduced(demo):
    """The reference's 30-layer SmolLM2 lens gives the logits the reference computed.

    The fixture's model was a converted copy of the same GGUF that lost the GGUF's rope_theta
    (100000, SmolLM2's real value, which transformers 4.57 and 5.x both read) and ran with the
    default 10000: its blocks then compute different residuals (max logit error 0.79). Its
    unembedding is identical, so the lens must still load strictly; to compare logits we rebuild
    the model with the fixture's rope_theta.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunedlens.models import _gguf_cache_dir, demo_gguf_path

    model, _ = demo
    assert model.config.rope_parameters["rope_theta"] == 100000.0
    cached = _gguf_cache_dir(demo_gguf_path())
    config = AutoConfig.from_pretrained(cached)
    config.rope_parameters = {"rope_theta": 10000.0, "rope_type": "default"}
    as_in_fixture = AutoModelForCausalLM.from_pretrained(cached, config=config).eval()
    lens = load_lens(REFERENCE_LENS / "lens", as_in_fixture)  # strict: hash matches
    expected = load_file(REFERENCE_LENS / "expected.safetensors")
    for k in range(3):
        residuals = collect_residuals(as_in_fixture, expected[f"input_ids_{k}"])
        last = residuals.logits[0, -1]
        assert (last - expected[f"model_logits_last_{k}"]).abs().max() < 1e-4
        for i in range(30):
            tuned = lens(residuals.hidden[i][0, -1], i)
            assert (tuned - expected[f"tuned_logits_last_{k}"][i]).abs().max() < 1e-4, (k, i)


def test_cli_predict_json_end_to_end():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunedlens",
            "predict",
            "demo",
            PROMPT,
            "--json",
            "--layers",
            "0,29",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [row["label"] for row in payload["rows"]] == ["0", "29", "output"]
    assert payload["rows"][-1]["top"][0]["token"] == " Paris"


def test_mid_points_on_smollm2(demo):
    """The mid point of every block is its input plus its attention output; a mid-point lens trains."""
    from tunedlens.arch import resolve_arch
    from tunedlens.data import pack_blocks
    from tunedlens.engine import layer_kl
    from tunedlens.train import recipe_config, train_lens

    model, tokenizer = demo
    input_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    attention = []
    handles = [
        block.self_attn.register_forward_hook(lambda _m, _a, out: attention.append(out[0]))
        for block in resolve_arch(model).layers
    ]
    try:
        both = collect_residuals(model, input_ids, points="both")
    finally:
        for handle in handles:
            handle.remove()
    block = collect_residuals(model, input_ids)
    assert len(both.hidden) == 61 and torch.equal(both.logits, block.logits)
    for layer in range(30):
        assert torch.equal(both.hidden[2 * layer], block.hidden[layer])
        torch.testing.assert_close(
            both.hidden[2 * layer + 1], block.hidden[layer] + attention[layer]
        )

    data = pack_blocks("stdlib", tokenizer, seq_len=64, n_sequences=40, seed=5).tokens
    config = recipe_config(
        "default",
        points="mid",
        tokens=2048,
        tokens_per_step=512,
        seq_len=64,
        batch_size=8,
        lstsq_tokens=1024,
        lstsq_budget_share=0.5,
    )
    lens = TunedLens.from_model(model, points="mid")
    trained = train_lens(lens, model, data[:32], config).lens
    logit = layer_kl(LogitLens(model, points="mid"), model, data[32:])
    tuned = layer_kl(trained, model, data[32:])
    assert tuned.shape == (30,) and tuned.mean() < 0.5 * logit.mean()
    assert (tuned[:25] < logit[:25]).all()


def test_the_shipped_self_text_is_this_demo_model_s(demo, tmp_path):
    """The demo's default data starts from the text shipped with tunedlens: its name is the
    cache file of this model with the default settings (the model's fingerprint matches)."""
    from tunedlens.data import SelfTextSettings
    from tunedlens.data.self_text import SEEDS, cache_path

    model, tokenizer = demo
    path = cache_path(model, tokenizer, SelfTextSettings(cache_dir=tmp_path))
    assert (SEEDS / path.name).exists()
