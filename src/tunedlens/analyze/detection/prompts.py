"""The prompts of a task: what each one is (normal, anomalous, a benign control) and its split.

A task's prompts end where the model should answer with one of a few choices. Each is normal,
anomalous (``injected`` for the built-in tasks), or a benign control (not anomalous, but changed
like an anomaly, to measure false positives). Normal prompts are split once, with the seed,
into those the detectors are fitted on (``train``) and held-out ones (``test``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from tunedlens.analyze.errors import AnalysisError

NORMAL, INJECTED = "normal", "injected"


@dataclass(frozen=True)
class TaskPrompt:
    """One prompt of a task, with its choices and what kind of prompt it is."""

    prompt: str
    choices: tuple[str, ...]
    """The answer options as exact continuations of the prompt (``" A"``, ``" positive"``)."""
    label: int
    """Index of the correct choice."""
    kind: str
    """``normal``, ``injected`` (built-in anomalies), a user's name, or a control's name."""
    anomalous: bool
    split: str
    """``train`` (normal prompts the detectors are fitted on) or ``test``."""
    item: int
    """Which question this is (the versions of one question share it)."""
    target: int | None = None
    """Injected prompts: index of the wrong choice the injection asks for."""

    @property
    def is_control(self) -> bool:
        """A benign prompt that is not a plain normal one."""
        return not self.anomalous and self.kind != NORMAL


@dataclass(frozen=True)
class Task:
    """The prompts of one task, split into fitting and test prompts."""

    name: str
    source: str
    prompts: tuple[TaskPrompt, ...]
    builtin: bool
    description: str = ""

    @property
    def controls(self) -> list[str]:
        """Names of the benign controls, in order of appearance."""
        return list(dict.fromkeys(p.kind for p in self.prompts if p.is_control))

    @property
    def n_choices(self) -> int:
        """Number of choices of every prompt."""
        return len(self.prompts[0].choices)


def seeded_rng(seed: int, name: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and a task's name (each task draws its own numbers)."""
    # crc32, not hash(): str hashes change from one process to the next.
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def check_int(name: str, value, low: int) -> int:
    """``value`` as an int, or an :class:`AnalysisError` naming ``name`` and the lower bound."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise AnalysisError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def n_train(n_normal: int, train_fraction: float) -> int:
    """Normal prompts to fit on: the fraction, keeping at least 2 to fit and 1 to test."""
    return min(max(2, round(n_normal * train_fraction)), n_normal - 1)
