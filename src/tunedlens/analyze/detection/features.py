"""What the detectors see: per-prompt features read through each lens at the last position.

One forward pass per batch of prompts (:func:`~tunedlens.arch.residuals.collect_residuals`)
gives every residual state; the readout engine (:func:`~tunedlens.engine.core.readout`) reads
them with every lens at each prompt's last token, and the hidden-state baseline averages one
row's states over the prompt's tokens. Three feature sets:

- ``choices`` (the tuned-lens paper's): the log-probability of each answer choice at every row
  ``0..L`` (bits); with two choices their log-odds, one number per row;
- ``trajectory`` (needs no choices): per row the entropy and the KL to the model's output (bits),
  the top token's probability, and whether the top token changed from the row below;
- ``hidden`` (the paper's baseline, no lens): the residual states of one row averaged over the
  prompt's tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from tunedlens.analyze.detection.prompts import Task
from tunedlens.analyze.errors import AnalysisError
from tunedlens.arch.residuals import collect_residuals
from tunedlens.engine.core import readout
from tunedlens.lenses.lens import Lens
from tunedlens.metrics.divergence import NATS_TO_BITS

FeatureSet = Literal["choices", "trajectory", "hidden"]
FEATURE_SETS: tuple[str, ...] = ("choices", "trajectory", "hidden")
LENS_FEATURES = ("choices", "trajectory")
"""Feature sets read through a lens (``hidden`` reads the residual stream itself)."""
READOUT_STATS = ("entropy", "kl", "max-prob")


@dataclass(frozen=True)
class EncodedTask:
    """A task's prompts as token ids, with the one token of each of their choices."""

    task: Task
    input_ids: list[list[int]]
    choice_ids: np.ndarray
    """``(n_prompts, n_choices)`` token id of each choice."""


@dataclass(frozen=True)
class Readings:
    """What the model and each lens show at the last position of every prompt of a task."""

    choice_bits: dict[str, np.ndarray]
    """Lens -> ``(prompts, rows, choices)`` log2-probability of each choice."""
    entropy_bits: dict[str, np.ndarray]
    """Lens -> ``(prompts, rows)``."""
    kl_bits: dict[str, np.ndarray]
    """Lens -> ``(prompts, rows)`` KL(model ‖ lens)."""
    max_prob: dict[str, np.ndarray]
    top1: dict[str, np.ndarray]
    """Lens -> ``(prompts, rows)`` id of the most likely token."""
    hidden: np.ndarray | None
    """``(prompts, d_model)`` token-averaged states of the hidden row (``None`` if not asked)."""
    n_tokens: np.ndarray


def encode_task(task: Task, tokenizer, context: int | None) -> EncodedTask:
    """Tokenise the prompts and find each choice's single token; refuse what cannot be read.

    Raises:
        AnalysisError: no tokenizer, a choice that is not exactly one token (or two choices
            that are the same token), a prompt longer than the model's context.
    """
    if tokenizer is None:
        raise AnalysisError(
            "detect needs the model's tokenizer to turn the task's prompts into tokens; pass it "
            "(load_model(spec) returns the model and its tokenizer)"
        )
    tokens: dict[str, int] = {}
    for prompt in task.prompts:
        for choice in prompt.choices:
            if choice not in tokens:
                tokens[choice] = _one_token(task, choice, tokenizer)
        ids = [tokens[c] for c in prompt.choices]
        if len(set(ids)) < len(ids):
            raise AnalysisError(
                f"task {task.name!r}: the choices {list(prompt.choices)} share a token "
                f"({ids}) for this tokenizer, so they cannot be told apart; use distinct choices"
            )
    encoded = tokenizer([p.prompt for p in task.prompts])["input_ids"]
    longest = max(len(ids) for ids in encoded)
    if context is not None and longest > context:
        raise AnalysisError(
            f"task {task.name!r}: a prompt is {longest} tokens long, longer than the model's "
            f"context of {context}; use fewer shots or shorter prompts"
        )
    choice_ids = np.array([[tokens[c] for c in p.choices] for p in task.prompts], dtype=np.int64)
    return EncodedTask(task, [list(ids) for ids in encoded], choice_ids)


def _one_token(task: Task, choice: str, tokenizer) -> int:
    ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise AnalysisError(
            f"task {task.name!r}: choice {choice!r} is {len(ids)} tokens for this tokenizer "
            f"({ids}); the model's answer and the 'choices' features read one token per choice at "
            "the prompt's last position, so make every choice a single token (e.g. lettered "
            "options ' A', ' B', written with the space that follows the prompt)"
        )
    return int(ids[0])


def read_task(
    model: nn.Module,
    lenses: Mapping[str, Lens],
    encoded: EncodedTask,
    *,
    hidden_row: int | None,
    batch_size: int,
    memory_budget: int,
    progress: Callable[[int], None] | None = None,
) -> Readings:
    """Run the model over every prompt (batches of similar length) and read every lens.

    Args:
        model: The causal LM.
        lenses: Name -> lens, all reading block points of ``model``.
        encoded: The task's prompts and choice tokens.
        hidden_row: Row whose token-averaged states are the ``hidden`` features (``None``: skip).
        batch_size: Prompts per forward pass.
        memory_budget: Bytes for the readout's vocabulary-sized work.
        progress: Called with the number of prompts just read, after every batch.
    """
    lengths = np.array([len(ids) for ids in encoded.input_ids])
    order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
    parts: list[dict] = []
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size].tolist()
        parts.append(
            _read_batch(
                model,
                lenses,
                [encoded.input_ids[i] for i in chosen],
                encoded.choice_ids[chosen],
                hidden_row,
                memory_budget,
            )
        )
        if progress is not None:
            progress(len(chosen))
    inverse = np.argsort(order, kind="stable")

    def gather(key: str, name: str | None = None) -> np.ndarray:
        pieces = [part[key] if name is None else part[key][name] for part in parts]
        return np.concatenate(pieces)[inverse]

    names = list(lenses)
    return Readings(
        choice_bits={n: gather("choices", n) for n in names},
        entropy_bits={n: gather("entropy", n) for n in names},
        kl_bits={n: gather("kl", n) for n in names},
        max_prob={n: gather("max-prob", n) for n in names},
        top1={n: gather("top1", n) for n in names},
        hidden=None if hidden_row is None else gather("hidden"),
        n_tokens=lengths,
    )


def _read_batch(
    model,
    lenses,
    sequences: list[list[int]],
    choice_ids: np.ndarray,
    hidden_row: int | None,
    memory_budget: int,
) -> dict:
    device = next(iter(lenses.values())).unembed.device
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for index, sequence in enumerate(sequences):
        ids[index, : len(sequence)] = torch.tensor(sequence)
        mask[index, : len(sequence)] = 1
    first = next(iter(lenses.values()))
    residuals = collect_residuals(
        model,
        ids.to(device),
        attention_mask=mask.to(device),
        arch=first.unembed.arch,
        with_logits=False,
    )
    result = readout(
        model,
        lenses,
        states=residuals,
        attention_mask=mask,
        positions=-1,
        stats=READOUT_STATS,
        top_k=1,
        tokens=torch.from_numpy(choice_ids),
        memory_budget=memory_budget,
    )
    out: dict = {key: {} for key in ("choices", "entropy", "kl", "max-prob", "top1")}
    for name in lenses:
        grids = result[name]
        out["choices"][name] = grids.token_logprobs[:, :, 0, :].double().numpy() * NATS_TO_BITS
        out["entropy"][name] = grids["entropy"][:, :, 0].double().numpy() * NATS_TO_BITS
        out["kl"][name] = grids["kl"][:, :, 0].double().numpy() * NATS_TO_BITS
        out["max-prob"][name] = grids["max-prob"][:, :, 0].double().numpy()
        out["top1"][name] = grids.top_ids[:, :, 0, 0].numpy()
    if hidden_row is not None:
        states = residuals.hidden[hidden_row].float().cpu()
        weights = mask[..., None].float()
        out["hidden"] = ((states * weights).sum(1) / weights.sum(1)).double().numpy()
    return out


def feature_matrix(readings: Readings, features: str, lens: str | None = None) -> np.ndarray:
    """``(prompts, d)`` features of one set (``lens`` for the lens-read sets).

    Column order: ``choices``: row-major (row, choice), or one log-odds per row with two
    choices; ``trajectory``: entropy per row, KL per row, top probability per row, then the
    top-1 changes between consecutive rows.
    """
    if features == "hidden":
        if readings.hidden is None:
            raise AnalysisError("the hidden states were not read (hidden_row=None)")
        return readings.hidden
    if features == "choices":
        bits = readings.choice_bits[lens]
        if bits.shape[-1] == 2:
            return bits[..., 0] - bits[..., 1]
        return bits.reshape(len(bits), -1)
    if features == "trajectory":
        top1 = readings.top1[lens]
        changed = (top1[:, 1:] != top1[:, :-1]).astype(np.float64)
        return np.concatenate(
            [readings.entropy_bits[lens], readings.kl_bits[lens], readings.max_prob[lens], changed],
            axis=1,
        )
    raise AnalysisError(f"unknown feature set {features!r}; choose from {', '.join(FEATURE_SETS)}")


def correct_margin(readings: Readings, lens: str, labels: Sequence[int]) -> np.ndarray:
    """``(prompts, rows)`` log2-probability of the correct choice minus the best other one."""
    bits = readings.choice_bits[lens]
    index = np.asarray(labels)
    correct = np.take_along_axis(bits, index[:, None, None].repeat(bits.shape[1], 1), 2)[..., 0]
    others = bits.copy()
    np.put_along_axis(others, index[:, None, None].repeat(bits.shape[1], 1), -np.inf, 2)
    return correct - others.max(-1)
