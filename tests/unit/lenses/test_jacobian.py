"""The Jacobian lens: fitting against TransformerLens and autograd, files, readout, bad input."""

import pickle

import pytest
import torch

from tiny_models import tiny_model
from tunedlens import LogitLens, collect_residuals, load_lens, readout
from tunedlens.errors import LensFileError, LensMismatch
from tunedlens.jacobian.fit import fit_jacobian_lens
from tunedlens.lenses.jacobian import JacobianLens
from tunedlens.lenses.unembed import Unembed

PROMPTS = ["w5 w17 w3 w99 w42 w8 w61 w2 w33 w70 w71 w9", "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11"]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_the_fit_equals_autograd_on_one_prompt(model):
    """Row r's matrix is the mean over valid t of Σ_{t' ≥ t valid} ∂h_L[t'] / ∂h_r[t]."""
    ids = torch.randint(3, 120, (10,), generator=torch.Generator().manual_seed(4))
    lens = fit_jacobian_lens(model, [ids], skip_first=3, dim_batch=7)
    residuals = collect_residuals(model, ids[None])
    layers = model.model.layers

    def final_from(row: int, state: torch.Tensor) -> torch.Tensor:
        """Run blocks row..L-1 on ``state`` (a full (1, seq, d) row state)."""
        hidden = state
        position_ids = torch.arange(ids.shape[0])[None]
        embeddings = model.model.rotary_emb(hidden, position_ids)
        for block in layers[row:]:
            out = block(
                hidden,
                position_embeddings=embeddings,
                attention_mask=None,
                position_ids=position_ids,
            )
            hidden = out if isinstance(out, torch.Tensor) else out[0]
        return hidden

    valid = list(range(3, ids.shape[0] - 1))
    for row in (0, 1):
        # Without a mask, the blocks' attention is causal, as in the model's own forward pass.
        jac = torch.autograd.functional.jacobian(
            lambda s, row=row: final_from(row, s), residuals.hidden[row].detach()
        )
        jac = jac[0, :, :, 0]  # (seq, d_out, seq, d_in)
        expected = torch.stack([jac[valid][:, :, t, :].sum(0) for t in valid]).mean(0)
        assert _relative(lens.matrices[row], expected) < 1e-4, row


# Families TransformerLens 4.3's bridge boots from tiny random configs (its gpt2/neox adapters
# reject them, and it tokenises the qwen2 tokenizer differently).
PEER_FAMILIES = ["llama", "gemma2", "gemma3_text", "qwen3", "phi3", "olmo2"]


@pytest.mark.parametrize("family", PEER_FAMILIES)
def test_fit_and_readout_equal_transformer_lens(family, tiny_tokenizer, tmp_path):
    """Same token ids: our fit equals its fit; our readout of its saved artifact equals its readout."""
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.tools.analysis import JacobianLens as PeerLens

    from tunedlens import load_model

    tiny_model(family).save_pretrained(tmp_path / family)
    tiny_tokenizer.save_pretrained(tmp_path / family)
    model, tokenizer = load_model(tmp_path / family)
    bridge = TransformerBridge.boot_transformers(
        str(tmp_path / family), hf_model=model, tokenizer=tokenizer
    )
    peer = PeerLens.fit(
        bridge, PROMPTS, corpus="test", dim_batch=8, skip_first_positions=4, show_progress=False
    )
    ids = [bridge.to_tokens(prompt)[0] for prompt in PROMPTS]
    ours = fit_jacobian_lens(model, ids, skip_first=4, dim_batch=5)
    assert peer.source_layers == [0] and ours.n_prompts == peer.n_prompts == 2
    assert _relative(ours.matrices[1], peer.jacobians[0]) < 1e-4

    peer.save(str(tmp_path / "peer.pt"))
    lens = load_lens(tmp_path / "peer.pt", model)
    tokens = ids[0][None]
    saved = PeerLens.load(str(tmp_path / "peer.pt"))  # fp16 on disk, as published
    theirs = saved.readout(bridge, tokens, top_k=5, return_full_logits=True)
    result = readout(model, {"j": lens}, tokens, stats=("entropy",), top_k=5)["j"]
    residuals = collect_residuals(model, tokens)
    for layer in (0, 1):  # their layer ℓ is our row ℓ + 1; the last block's output is the model's
        assert torch.equal(result.top_ids[0, layer + 1], theirs.lens_topk_indices[layer]), layer
        probs = theirs.lens_logits[layer].float().softmax(-1)
        torch.testing.assert_close(
            result.top_probs[0, layer + 1],
            probs.gather(-1, theirs.lens_topk_indices[layer]),
            rtol=1e-4,
            atol=1e-6,
        )
        torch.testing.assert_close(
            lens(residuals.hidden[layer + 1][0], layer + 1),
            theirs.lens_logits[layer],
            rtol=1e-4,
            atol=1e-4,
        )


def test_artifacts_round_trip_and_load_in_transformer_lens(model, tmp_path, input_ids):
    lens = fit_jacobian_lens(model, input_ids, skip_first=2)
    lens.save(tmp_path / "lens.pt", format="artifact")
    loaded = load_lens(tmp_path / "lens.pt", model)
    assert isinstance(loaded, JacobianLens) and loaded.rows == [1]  # row 0 has no place there
    assert loaded.matrices[1].dtype == torch.float16
    torch.testing.assert_close(loaded.matrices[1].float(), lens.matrices[1], atol=2e-3, rtol=1e-3)
    lens.save(tmp_path / "native")
    native = load_lens(tmp_path / "native", model)
    assert native.rows == [0, 1] and torch.equal(native.matrices[0], lens.matrices[0])
    # Rows without a matrix read as the logit lens; the others as head(J h).
    residuals = collect_residuals(model, input_ids)
    logit = LogitLens(model)
    torch.testing.assert_close(loaded(residuals.hidden[0], 0), logit(residuals.hidden[0], 0))
    expected = Unembed(model)(residuals.hidden[1] @ loaded.matrices[1].float().T)
    torch.testing.assert_close(loaded(residuals.hidden[1], 1), expected)
    result = readout(model, {"j": loaded}, input_ids, stats=("kl",), top_k=3)
    assert result["j"]["kl"].shape == (2, 3, 9)
    peer = pytest.importorskip("transformer_lens.tools.analysis")
    theirs = peer.JacobianLens.load(str(tmp_path / "lens.pt"))
    torch.testing.assert_close(
        theirs.transport(residuals.hidden[1], 0), loaded.transform(residuals.hidden[1], 1)
    )


def test_token_directions_give_the_readout_logit(model, input_ids):
    lens = fit_jacobian_lens(model, input_ids, skip_first=2)
    hidden = collect_residuals(model, input_ids).hidden[1][0]  # (seq, d)
    tokens = [5, 17, 99]
    directions = lens.token_directions(1, tokens)  # (3, d)
    transported = hidden @ lens.matrices[1].T
    norm = lens.unembed.final_norm
    rms = (transported.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
    logits = lens(hidden, 1)[:, tokens]
    torch.testing.assert_close((hidden @ directions.T) / rms, logits, atol=1e-4, rtol=1e-4)


def test_bad_files_and_prompts(model, tmp_path, input_ids):
    lens = fit_jacobian_lens(model, input_ids, skip_first=2)
    lens.save(tmp_path / "good.pt", format="artifact")
    payload = torch.load(tmp_path / "good.pt", weights_only=True)

    def write(name, value):
        torch.save(value, tmp_path / name)
        return tmp_path / name

    with pytest.raises(LensFileError, match="source_layers"):
        load_lens(write("layers.pt", {**payload, "source_layers": [0, 1]}), model)
    bad = {**payload, "J": {0: payload["J"][0].clone()}}
    bad["J"][0][3, 3] = float("nan")
    with pytest.raises(LensFileError, match="NaN"):
        load_lens(write("nan.pt", bad), model)
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:100])
    with pytest.raises(LensFileError, match="truncated or corrupt"):
        load_lens(tmp_path / "truncated.pt", model)

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"J": Evil()}))
    with pytest.raises(LensFileError, match="not loaded"):
        load_lens(tmp_path / "evil.pt", model)
    wide = {**payload, "J": {0: torch.zeros(16, 16)}, "d_model": 16}
    with pytest.raises(LensMismatch, match="16, 16"):
        load_lens(write("wide.pt", wide), model)
    checkpoint = write("ckpt.pt", {"jacobian_sum": {0: payload["J"][0].float() * 3}, "n_done": 3})
    torch.testing.assert_close(load_lens(checkpoint, model).matrices[1], payload["J"][0].float())
    with pytest.raises(LensMismatch, match="fingerprint"):
        lens.save(tmp_path / "native")
        load_lens(tmp_path / "native", tiny_model("llama", seed=5))
    short = [torch.tensor([3, 4, 5])]
    with pytest.raises(ValueError, match="none has a position"):
        fit_jacobian_lens(model, short, skip_first=16)
    mixed = fit_jacobian_lens(model, [input_ids[0], torch.tensor([3, 4])], skip_first=2)
    assert mixed.n_prompts == 1 and mixed.metadata["skipped_prompts"] == 1
