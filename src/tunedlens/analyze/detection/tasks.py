"""Tasks for anomaly detection: a built-in task's prompts, or a user's task file.

See :mod:`tunedlens.analyze.detection.builtin` for the built-in tasks and
:mod:`tunedlens.analyze.detection.task_files` for the file format.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunedlens.analyze.detection.builtin import BUILTIN_TASKS, DEFAULT_SHOTS, build_builtin_task
from tunedlens.analyze.detection.prompts import Task
from tunedlens.analyze.detection.task_files import read_task_file
from tunedlens.analyze.errors import AnalysisError


def load_task(
    task: str | os.PathLike | Task,
    *,
    shots: int | None = None,
    seed: int = 0,
    n_items: int | None = None,
    train_fraction: float = 0.75,
) -> Task:
    """A built-in task's prompts, or a user's labelled task file, split for fitting and testing.

    Args:
        task: A built-in name (:data:`BUILTIN_TASKS`), a JSON-lines file, or a :class:`Task`.
        shots: Answered examples before each built-in question (default 5); task files hold
            finished prompts, so it must be left out for them.
        seed: Seeds the choice of examples, options, wrong answers, filler and the split.
        n_items: Use this many questions of a built-in task (default all).
        train_fraction: Share of the normal prompts the detectors are fitted on.

    Raises:
        AnalysisError: an unknown task, a bad file, one class only, too few normal prompts,
            ``shots`` larger than the task.
    """
    if isinstance(task, Task):
        return task
    if not 0.0 < train_fraction < 1.0:
        raise AnalysisError(
            f"train_fraction must lie strictly between 0 and 1, got {train_fraction!r}"
        )
    name = str(task)
    if name in BUILTIN_TASKS:
        shots = DEFAULT_SHOTS if shots is None else shots
        return build_builtin_task(
            name, shots=shots, seed=seed, n_items=n_items, train_fraction=train_fraction
        )
    path = Path(name)
    if not path.suffix and not path.exists():
        raise AnalysisError(
            f"unknown task {name!r}: use a built-in task ({', '.join(BUILTIN_TASKS)}) or a "
            'JSON-lines file of {"prompt", "choices", "label", "anomalous"} objects'
        )
    for option, value in (("shots", shots), ("n_items", n_items)):
        if value is not None:
            raise AnalysisError(
                f"{option} applies to built-in tasks; the prompts of task file {name} are used as "
                f"written (leave {option} out)"
            )
    return read_task_file(path, seed=seed, train_fraction=train_fraction)
