"""Text sampled from the model itself (``--data self``): determinism, the cache, its refusals."""

import gzip
import json

import pytest
import torch

import tunedlens.data.self_text as self_module
from tiny_models import tiny_model
from tunedlens.data import (
    DataError,
    SelfTextMismatch,
    SelfTextSettings,
    TextSource,
    pack_blocks,
    sample_self_text,
)
from tunedlens.data.self_text import cache_path, model_fingerprint, read_cache, sample_documents
from tunedlens.errors import InputError


def settings(tmp_path, name="cache", **changes):
    return SelfTextSettings(
        **{"cache_dir": tmp_path / name, "doc_tokens": 12, "batch_size": 4, **changes}
    )


def texts(result):
    return [document["text"] for document in read_cache(result.path)[1]]


def test_deterministic_for_a_seed_and_other_for_another(model, tiny_tokenizer, tmp_path):
    first = sample_self_text(model, tiny_tokenizer, settings(tmp_path, "a"), tokens_needed=60)
    again = sample_self_text(model, tiny_tokenizer, settings(tmp_path, "b"), tokens_needed=60)
    other = sample_self_text(
        model, tiny_tokenizer, settings(tmp_path, "c", seed=1), tokens_needed=60
    )
    assert first.path.name == again.path.name and first.path != again.path
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)
    assert first.n_tokens >= 60 and first.n_documents % 4 == 0  # whole batches
    assert len(set(texts(first))) == first.n_documents  # each document its own random numbers


def test_reused_from_the_cache_without_sampling_again(model, tiny_tokenizer, tmp_path, monkeypatch):
    calls = []
    real = self_module.sample_documents
    monkeypatch.setattr(
        self_module, "sample_documents", lambda *a, **k: calls.append(a[3]) or real(*a, **k)
    )
    first = sample_self_text(model, tiny_tokenizer, settings(tmp_path), tokens_needed=60)
    sampled = len(calls)
    assert sampled == first.n_documents // 4 and first.sampled_documents == first.n_documents
    stamp, sampled_first = first.path.stat().st_mtime_ns, texts(first)
    messages = []
    second = sample_self_text(
        model, tiny_tokenizer, settings(tmp_path), tokens_needed=60, status=messages.append
    )
    assert len(calls) == sampled, "generation ran again"
    assert second.sampled_documents == 0 and second.path == first.path
    assert first.path.stat().st_mtime_ns == stamp
    assert "reusing" in messages[0]
    # a larger need samples only the documents the file lacks, continuing where it ended
    more = sample_self_text(model, tiny_tokenizer, settings(tmp_path), tokens_needed=150)
    assert calls[sampled] == first.n_documents
    assert texts(more)[: first.n_documents] == sampled_first
    fresh = sample_self_text(model, tiny_tokenizer, settings(tmp_path, "fresh"), tokens_needed=150)
    assert texts(fresh) == texts(more)


def test_refused_for_another_model(model, tiny_tokenizer, tmp_path):
    other = tiny_model("llama", seed=9)
    assert model_fingerprint(other) != model_fingerprint(model)
    sampled = sample_self_text(other, tiny_tokenizer, settings(tmp_path), tokens_needed=30)
    target = cache_path(model, tiny_tokenizer, settings(tmp_path))
    sampled.path.rename(target)  # another model's text where this model's is looked for
    before = target.read_bytes()
    with pytest.raises(SelfTextMismatch, match="was sampled from another model") as caught:
        sample_self_text(model, tiny_tokenizer, settings(tmp_path), tokens_needed=30)
    assert model_fingerprint(other)[:16] in str(caught.value)
    assert target.read_bytes() == before  # refused, not overwritten


def test_refused_for_other_settings_naming_them(model, tiny_tokenizer, tmp_path):
    path = sample_self_text(model, tiny_tokenizer, settings(tmp_path), tokens_needed=30).path
    header, documents = read_cache(path)
    header["sampling"]["temperature"] = 0.7
    with gzip.open(path, "wt") as handle:
        for line in (header, *documents):
            handle.write(json.dumps(line) + "\n")
    with pytest.raises(SelfTextMismatch, match=r"--self-temperature 0.7 \(this run: 1.0\)"):
        sample_self_text(model, tiny_tokenizer, settings(tmp_path), tokens_needed=30)


def test_a_weight_below_the_head_changes_the_fingerprint(model):
    before = model_fingerprint(model)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[3, 5] += 0.5
    changed = model_fingerprint(model)
    assert changed != before
    assert model_fingerprint(model.to(torch.bfloat16)) != changed


def test_top_p_near_zero_is_greedy(model, tiny_tokenizer):
    ids = [tiny_tokenizer.bos_token_id]
    greedy = []
    with torch.no_grad():
        for _ in range(8):
            token = int(model(torch.tensor([ids + greedy])).logits[0, -1].argmax())
            if token == tiny_tokenizer.eos_token_id:
                break
            greedy.append(token)
    nucleus = SelfTextSettings(top_p=1e-6, seed=3)
    (document,) = sample_documents(model, tiny_tokenizer, nucleus, 0, 1, doc_tokens=8)
    assert tiny_tokenizer(document["text"], add_special_tokens=False)["input_ids"] == greedy


def test_a_batch_with_left_padding_samples_what_each_prompt_alone_does(model, tiny_tokenizer):
    prefixed = SelfTextSettings(prefixes=("w5 w6 w7 w8", "w9"), seed=2)
    together = sample_documents(model, tiny_tokenizer, prefixed, 0, 4, doc_tokens=10)
    alone = [
        sample_documents(model, tiny_tokenizer, prefixed, i, 1, doc_tokens=10)[0] for i in range(4)
    ]
    assert together == alone
    assert [d["prefix"] for d in together] == ["w5 w6 w7 w8", "w9"] * 2
    assert together[0]["text"].startswith("w5 w6 w7 w8")


def test_progress_counts_up_to_the_total(model, tiny_tokenizer, tmp_path):
    seen = []
    result = sample_self_text(
        model,
        tiny_tokenizer,
        settings(tmp_path),
        tokens_needed=50,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (50, 50) and len(seen) > 3
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert result.n_tokens >= 50


def test_the_cache_packs_as_a_data_file_and_as_self(model, tiny_tokenizer, tmp_path):
    result = sample_self_text(model, tiny_tokenizer, settings(tmp_path), tokens_needed=64)
    blocks = pack_blocks(TextSource(result.spec), tiny_tokenizer, seq_len=16, n_sequences=4)
    assert blocks.n_tokens == 64
    with pytest.raises(DataError, match="sampled from the model once it is loaded"):
        pack_blocks(TextSource("self"), tiny_tokenizer, seq_len=16, n_sequences=4)


def test_the_token_option_sets_the_amount(model, tiny_tokenizer, tmp_path):
    result = sample_self_text(
        model, tiny_tokenizer, settings(tmp_path, tokens=100), tokens_needed=10
    )
    assert result.n_tokens >= 100
    assert result.record()["sampling"]["doc_tokens"] == 12


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"temperature": 0}, "--self-temperature must be > 0"),
        ({"temperature": -1.0}, "--self-temperature must be > 0"),
        ({"temperature": float("nan")}, "--self-temperature must be > 0"),
        ({"top_p": 0}, r"--self-top-p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"--self-top-p must be in \(0, 1\]"),
        ({"tokens": 0}, "--self-tokens must be at least 1"),
        ({"doc_tokens": 0}, "--self-doc-tokens must be at least 1"),
        ({"batch_size": 0}, "--self-batch-size must be at least 1"),
    ],
)
def test_bad_settings(changes, message):
    with pytest.raises(InputError, match=message):
        SelfTextSettings(**changes)


def test_bad_places_and_combinations(model, tiny_tokenizer, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(InputError, match="is a file, not a directory"):
        TextSource("self", self_text=SelfTextSettings(cache_dir=tmp_path / "afile")).check(
            allow_self=True
        )
    with pytest.raises(InputError, match="lies under the file"):
        SelfTextSettings(cache_dir=tmp_path / "afile" / "sub").check()
    with pytest.raises(InputError, match="needs its tokenizer"):
        sample_self_text(model, None, settings(tmp_path), tokens_needed=10)
    with pytest.raises(InputError, match="drop them or pass --data self"):
        TextSource("stdlib", self_text=SelfTextSettings(seed=1)).check()
    with pytest.raises(DataError, match="data for train, eval and fit-jlens"):
        TextSource("self").check()
    with pytest.raises(InputError, match="--text-column 'body' does not apply"):
        TextSource("self", "body").check(allow_self=True)
    with pytest.raises(InputError, match="exceed the model's context of 64"):
        sample_self_text(model, tiny_tokenizer, settings(tmp_path, doc_tokens=64), tokens_needed=10)
    assert not (tmp_path / "cache").exists()  # nothing written for refused input


def test_the_default_cache_follows_tunedlens_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEDLENS_CACHE", str(tmp_path))
    assert SelfTextSettings().cache_folder == tmp_path / "self"


def test_a_larger_cache_packs_the_same_text_as_a_fresh_one(model, tiny_tokenizer, tmp_path):
    fresh = sample_self_text(model, tiny_tokenizer, settings(tmp_path, "a"), tokens_needed=60)
    sample_self_text(model, tiny_tokenizer, settings(tmp_path, "b"), tokens_needed=200)
    grown = sample_self_text(model, tiny_tokenizer, settings(tmp_path, "b"), tokens_needed=60)
    assert grown.cached_documents > grown.n_documents == fresh.n_documents
    assert grown.n_tokens == fresh.n_tokens
    packed = [
        pack_blocks(
            TextSource.from_self_text(result), tiny_tokenizer, seq_len=16, n_sequences=3, seed=4
        )
        for result in (fresh, grown)
    ]
    assert torch.equal(packed[0].tokens, packed[1].tokens)


def test_the_fingerprint_reads_a_head_sized_tensor():
    """SmolLM2's head (49152 x 576): float-spaced picks overran its last index."""
    module = torch.nn.Module()
    module.register_buffer("head", torch.zeros(49152 * 576, dtype=torch.float16))
    assert len(model_fingerprint(module)) == 64


def test_a_cache_starts_from_the_shipped_seed_of_its_name(
    model, tiny_tokenizer, tmp_path, monkeypatch
):
    # A seed: this model's text with these settings, shipped under the cache file's name.
    sampled = sample_self_text(model, tiny_tokenizer, settings(tmp_path, "seeds"), tokens_needed=60)
    monkeypatch.setattr(self_module, "SEEDS", sampled.path.parent)
    calls = []
    real = self_module.sample_documents
    monkeypatch.setattr(
        self_module, "sample_documents", lambda *a, **k: calls.append(a[3]) or real(*a, **k)
    )
    messages = []
    seeded = sample_self_text(
        model, tiny_tokenizer, settings(tmp_path), tokens_needed=60, status=messages.append
    )
    assert not calls and seeded.sampled_documents == 0  # nothing sampled
    assert seeded.path.parent == tmp_path / "cache" and texts(seeded) == texts(sampled)
    assert "shipped with tunedlens" in messages[0]
    # More than the seed holds: the rest is sampled after it, as one run would have.
    more = sample_self_text(model, tiny_tokenizer, settings(tmp_path), tokens_needed=150)
    assert calls[0] == sampled.n_documents
    fresh = sample_self_text(model, tiny_tokenizer, settings(tmp_path, "fresh"), tokens_needed=150)
    assert texts(more) == texts(fresh)


def test_a_seed_of_another_model_is_refused(model, tiny_tokenizer, tmp_path, monkeypatch):
    other = tiny_model("llama", seed=9)
    sampled = sample_self_text(other, tiny_tokenizer, settings(tmp_path, "other"), tokens_needed=30)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    sampled.path.rename(seeds / cache_path(model, tiny_tokenizer, settings(tmp_path)).name)
    monkeypatch.setattr(self_module, "SEEDS", seeds)
    with pytest.raises(SelfTextMismatch, match="was sampled from another model"):
        sample_self_text(model, tiny_tokenizer, settings(tmp_path), tokens_needed=30)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_the_shipped_seed_is_demo_text_with_the_default_settings():
    (seed,) = self_module.SEEDS.glob("*.jsonl.gz")
    header, documents = read_cache(seed)
    assert header["model"]["name"] == "demo" and header["model"]["model_type"] == "llama"
    assert header["sampling"] == {
        "temperature": 1.0,
        "top_p": 1.0,
        "prefixes": [],
        "seed": 0,
        "doc_tokens": 512,
        "batch_size": 32,
    }
    assert len(documents) == header["documents"] and len(documents) % 32 == 0
    assert [d["index"] for d in documents] == list(range(len(documents)))
    assert seed.name.startswith(header["model"]["fingerprint"][:16])
