"""Prompt suites: factual prompts whose answer is one token, for earliness KPIs and gates."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from tunedlens.errors import TunedLensError


class PromptSuiteError(TunedLensError):
    """A prompt suite file that cannot be used."""


@dataclass(frozen=True)
class Prompt:
    """One prompt and the token that should follow it."""

    prompt: str
    answer: str
    category: str = ""


@dataclass(frozen=True)
class PromptSuite:
    """Prompts plus where they came from."""

    prompts: tuple[Prompt, ...]
    source: str


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt tokenised for one model, with its single-token answer."""

    index: int
    prompt: Prompt
    input_ids: list[int]
    answer_id: int


@dataclass
class EncodedSuite:
    """The prompts usable with a tokenizer, and those skipped with the reason."""

    usable: list[EncodedPrompt] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


DEFAULT_SUITE = "default"
"""The suite shipped with the package: 48 prompts (geography, science, language, arithmetic, code)."""


def load_prompts(path: str | os.PathLike = DEFAULT_SUITE) -> PromptSuite:
    """Read a JSON-lines suite: one ``{"prompt": ..., "answer": ..., "category": ...}`` per line.

    ``answer`` is the exact continuation, leading space included (``" Paris"``).

    Args:
        path: The JSON-lines file; by default the built-in suite (48 prompts in geography,
            science, language, arithmetic and code).

    Returns:
        The suite, its prompts in file order.

    Raises:
        PromptSuiteError: the file is missing, empty, or a line is not such an object.
    """
    if str(path) == DEFAULT_SUITE:
        text = files("tunedlens.evaluation").joinpath("prompts.jsonl").read_text("utf-8")
        where = "the built-in prompt suite"
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as error:
            raise PromptSuiteError(f"cannot read prompt suite {path}: {error.strerror}") from None
        where = str(path)
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptSuiteError(f"{where} line {number} is not JSON: {error.msg}") from None
        if not (
            isinstance(item, dict)
            and isinstance(item.get("prompt"), str)
            and isinstance(item.get("answer"), str)
            and item["prompt"]
            and item["answer"]
        ):
            raise PromptSuiteError(
                f'{where} line {number}: expected {{"prompt": "...", "answer": "..."}} with '
                "non-empty strings"
            )
        prompts.append(Prompt(item["prompt"], item["answer"], str(item.get("category", ""))))
    if not prompts:
        raise PromptSuiteError(
            f'{where} holds no prompts; write one {{"prompt": ..., "answer": ...}} object per line.'
        )
    return PromptSuite(tuple(prompts), where)


def encode_suite(suite: PromptSuite, tokenizer, max_length: int | None = None) -> EncodedSuite:
    """Tokenise every prompt; skip (and say why) answers that are not exactly one token."""
    encoded = EncodedSuite()
    for index, item in enumerate(suite.prompts):
        answer = tokenizer(item.answer, add_special_tokens=False)["input_ids"]
        ids = tokenizer(item.prompt)["input_ids"]
        reason = None
        if len(answer) != 1:
            reason = f"answer {item.answer!r} is {len(answer)} tokens, not 1"
        elif max_length is not None and len(ids) > max_length:
            reason = f"prompt is {len(ids)} tokens, longer than the model's {max_length}"
        if reason:
            encoded.skipped.append({"index": index, "prompt": item.prompt, "reason": reason})
        else:
            encoded.usable.append(EncodedPrompt(index, item, ids, answer[0]))
    return encoded
