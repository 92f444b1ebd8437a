"""Tokenise documents and pack them into fixed-length blocks, deterministically."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tunedlens.data.sources import DataError, TextSource
from tunedlens.errors import InputError


@dataclass(frozen=True)
class TokenBlocks:
    """Packed token ids ``(n_sequences, seq_len)``: EOS-joined documents cut into blocks."""

    tokens: torch.Tensor
    source: str

    @property
    def n_sequences(self) -> int:
        """Number of blocks."""
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        """Tokens per block."""
        return self.tokens.shape[1]

    @property
    def n_tokens(self) -> int:
        """Tokens in all blocks."""
        return self.tokens.numel()

    def content_hash(self) -> str:
        """sha256 of exactly the token ids used (shape included)."""
        digest = hashlib.sha256(str(tuple(self.tokens.shape)).encode())
        digest.update(self.tokens.to(torch.int64).numpy().tobytes())
        return digest.hexdigest()

    def __getitem__(self, index) -> TokenBlocks:
        return TokenBlocks(self.tokens[index], self.source)


def _token_stream(documents: Iterable[str], tokenizer, eos: int) -> Iterator[list[int]]:
    batch: list[str] = []

    def flush():
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            yield [*ids, eos]

    for text in documents:
        if text:
            batch.append(text)
        if len(batch) == 64:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def _ordered_documents(source: TextSource, seed: int) -> Iterator[str]:
    if not source.is_finite:
        return source.documents(seed=seed)
    documents = list(source.documents(seed=seed))
    random.Random(seed).shuffle(documents)  # a small budget must not read only the first file
    return iter(documents)


def pack_blocks(
    source: TextSource | str,
    tokenizer,
    *,
    seq_len: int,
    n_sequences: int,
    seed: int = 0,
    size_options: str = "--tokens (or --val-tokens)",
) -> TokenBlocks:
    """Pack ``n_sequences`` blocks of ``seq_len`` tokens from ``source``, shuffled by ``seed``.

    Documents are taken in a seeded random order (hub streams: a seeded shuffle buffer),
    tokenised without special tokens, joined with the tokenizer's EOS and cut into blocks.
    ``size_options`` names the command-line options that set the amount, for the error raised
    when the source is too small.

    Raises:
        DataError: if the source holds fewer tokens than ``n_sequences * seq_len`` (said up front,
            before any training), is empty, or cannot be read.
    """
    source = TextSource(source) if isinstance(source, str) else source
    if seq_len < 2 or n_sequences < 1:
        raise InputError(f"need seq_len >= 2 and n_sequences >= 1, got {seq_len}, {n_sequences}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(
            "the tokenizer has no EOS token to join documents with; set tokenizer.eos_token."
        )
    needed = seq_len * n_sequences
    # Grown as the text is read, not allocated up front: a budget larger than the data is
    # reported as such, not as a failed allocation of the budget's size.
    chunks: list[np.ndarray] = []
    filled = 0
    for ids in _token_stream(_ordered_documents(source, seed), tokenizer, eos):
        take = min(len(ids), needed - filled)
        chunks.append(np.asarray(ids[:take], dtype=np.int64))
        filled += take
        if filled == needed:
            break
    if filled < needed:
        what = (
            "no text"
            if filled == 0
            else f"only {filled:,} tokens ({_sequences(filled // seq_len)} of {seq_len})"
        )
        raise DataError(
            f"data {source.spec!r} holds {what}, but {needed:,} tokens ({_sequences(n_sequences)} "
            f"of {seq_len}) are needed. Lower {size_options}, or add data."
        )
    blocks = torch.from_numpy(np.concatenate(chunks)).view(n_sequences, seq_len)
    order = torch.randperm(n_sequences, generator=torch.Generator().manual_seed(seed))
    return TokenBlocks(blocks[order].clone(), source.spec)


def pack_texts(texts, tokenizer, *, max_seq_len: int) -> TokenBlocks:
    """Pack a list of texts, in order, EOS-joined, into blocks of up to ``max_seq_len`` tokens.

    For small in-memory datasets (the notebook facade): blocks are as long as the texts allow,
    ``min(max_seq_len, total tokens)``, and the tail that does not fill a block is dropped.

    Raises:
        DataError: no text, or fewer than 2 tokens.
    """
    texts = [text for text in texts if text]
    if not texts:
        raise DataError("the dataset holds no text; pass a list of non-empty strings")
    eos = tokenizer.eos_token_id
    ids = [token for tokens in _token_stream(texts, tokenizer, eos) for token in tokens]
    if eos is None:  # no separator: the documents are simply concatenated
        ids = [token for token in ids if token is not None]
    seq_len = min(max_seq_len, len(ids))
    if seq_len < 2:
        raise DataError("the dataset holds fewer than 2 tokens; pass more text")
    count = len(ids) // seq_len
    return TokenBlocks(torch.tensor(ids[: count * seq_len]).view(count, seq_len), "texts")


def _sequences(count: int) -> str:
    return f"{count:,} sequence{'' if count == 1 else 's'}"
