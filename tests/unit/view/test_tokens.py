"""Token display for byte-level BPE, SentencePiece and word-level vocabularies."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tunedlens.view.tokens import format_token, token_text


def _byte_level():
    vocab = {"Ġthe": 0, "Ċ": 1, "ĠĠ": 2, "hello": 3, "Ã©": 4, "â": 5, "<|endoftext|>": 6}
    tokenizer = Tokenizer(models.BPE(vocab, [], unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def _sentencepiece():
    vocab = [
        ("<unk>", 0.0),
        ("▁the", -1.0),
        ("<0x0A>", -1.0),
        ("<0xE2>", -1.0),
        ("▁▁", -1.0),
        ("ing", -1.0),
    ]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_byte_level_bpe():
    tokenizer = _byte_level()
    assert token_text(tokenizer, 0) == " the"
    assert format_token(tokenizer, 0) == "␣the"
    assert format_token(tokenizer, 1) == "↵"
    assert format_token(tokenizer, 2) == "␣␣"
    assert token_text(tokenizer, 4) == "é"
    assert token_text(tokenizer, 5) == "\\xe2"  # a lone byte of a multi-byte character
    assert format_token(tokenizer, 6) == "<|endoftext…"  # 13 characters, cut to 12


def test_sentencepiece():
    tokenizer = _sentencepiece()
    assert format_token(tokenizer, 1) == "␣the"
    assert format_token(tokenizer, 2) == "↵"
    assert token_text(tokenizer, 3) == "\\xe2"
    assert format_token(tokenizer, 4) == "␣␣"
    assert format_token(tokenizer, 5) == "ing"


def test_other_tokenizers_use_their_own_decoding(tiny_tokenizer):
    assert format_token(tiny_tokenizer, tiny_tokenizer.convert_tokens_to_ids("w7")) == "w7"


def test_long_tokens_are_truncated():
    tokenizer = _byte_level()
    assert format_token(tokenizer, 6, max_length=5) == "<|en…"
