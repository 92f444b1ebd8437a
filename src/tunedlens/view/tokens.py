r"""Readable token strings for any tokenizer: byte-level BPE, SentencePiece, or anything else.

Tokens are shown as the text they stand for, with whitespace made visible (``␣`` space,
``↵`` newline, ``⇥`` tab) and long tokens truncated with ``…``. Byte tokens that are not valid
text on their own (``<0xE2>``, a lone byte of a byte-level BPE) are shown as ``\xe2``.
"""

from __future__ import annotations

import re
import weakref
from functools import lru_cache

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-printable-character table, inverted."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


_BYTE_LEVEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per tokenizer, whether its vocabulary is GPT-2 byte-level (reading the vocabulary is slow)."""


def _is_byte_level(tokenizer) -> bool:
    try:
        return _BYTE_LEVEL[tokenizer]
    except (KeyError, TypeError):  # TypeError: a tokenizer that cannot be weakly referenced
        pass
    vocab = tokenizer.get_vocab()
    byte_level = (
        "Ġ" in vocab or "Ċ" in vocab or any(key.startswith("Ġ") for key in list(vocab)[:5000])
    )
    try:
        _BYTE_LEVEL[tokenizer] = byte_level
    except TypeError:
        pass
    return byte_level


def token_text(tokenizer, token_id: int) -> str:
    """The raw text of one token (bytes that are not text on their own become hex escapes)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if piece is None:
        return tokenizer.decode([int(token_id)])
    match = _BYTE_TOKEN.match(piece)
    if match:
        return bytes([int(match.group(1), 16)]).decode("utf-8", errors="backslashreplace")
    if _is_byte_level(tokenizer):
        decoder = _byte_decoder()
        if all(char in decoder for char in piece):
            data = bytes(decoder[char] for char in piece)
            return data.decode("utf-8", errors="backslashreplace")
    if "▁" in piece:
        return piece.replace("▁", " ")
    return tokenizer.decode([int(token_id)])


def visible(text: str) -> str:
    """``text`` with its whitespace made visible (``␣`` space, ``↵`` newline, ``⇥`` tab)."""
    return text.translate(_VISIBLE)


def format_token(tokenizer, token_id: int, max_length: int = 12) -> str:
    """``token_text`` with whitespace made visible and at most ``max_length`` characters."""
    text = visible(token_text(tokenizer, token_id))
    if len(text) > max_length:
        text = text[: max_length - 1] + "…"
    return text
