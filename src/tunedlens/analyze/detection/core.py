"""``detect``: can lens trajectories tell injected prompts from normal ones (Belrose et al. 2023, §5)?"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import nn

from tunedlens.analyze.detection.analysis import (
    TRAJECTORY_STATS,
    attack_success,
    score_task,
    trajectories,
)
from tunedlens.analyze.detection.builtin import DEFAULT_SHOTS, INJECTION
from tunedlens.analyze.detection.detectors import (
    DETECTORS,
    HYPERPARAMETERS,
    SKLEARN_DETECTORS,
    require_sklearn,
)
from tunedlens.analyze.detection.features import (
    FEATURE_SETS,
    encode_task,
    read_task,
)
from tunedlens.analyze.detection.prompts import Task
from tunedlens.analyze.detection.report import DetectReport
from tunedlens.analyze.detection.scoring import FPR_TARGET
from tunedlens.analyze.detection.tasks import load_task
from tunedlens.analyze.errors import AnalysisError
from tunedlens.engine.core import DEFAULT_BUDGET, name_lenses
from tunedlens.lenses.io.load import align_points
from tunedlens.lenses.lens import Lens, LogitLens

BASELINE = "logit"
"""The logit lens, always read."""
TaskSpec = str | os.PathLike | Task


def _choice(name: str, values, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = (values,) if isinstance(values, str) else tuple(values)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values or len(set(values)) != len(values):
        what = (
            f"unknown {name} {unknown[0]!r}"
            if unknown
            else f"{name} must be distinct and not empty"
        )
        raise AnalysisError(f"{what}; choose from {', '.join(allowed)}")
    return values


def _integer(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise AnalysisError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_detect_args(
    task: TaskSpec | Sequence[TaskSpec] = "capitals",
    *,
    shots: int | None = None,
    features: Sequence[str] = FEATURE_SETS,
    detectors: Sequence[str] = DETECTORS,
    seed: int = 0,
    hidden_row: int | None = None,
    n_items: int | None = None,
    train_fraction: float = 0.75,
    bootstrap: int = 1000,
    batch_size: int = 8,
) -> tuple[list[Task], tuple[str, ...], tuple[str, ...]]:
    """Check every argument of :func:`detect` that needs no model, and load the tasks.

    Returns:
        ``(tasks, features, detectors)``.

    Raises:
        AnalysisError: the first bad argument, saying what to change.
        MissingExtra: scikit-learn is missing for the detectors asked for.
    """
    features = _choice("feature set", features, FEATURE_SETS)
    detectors = _choice("detector", detectors, DETECTORS)
    seed = _integer("seed", seed, 0)
    _integer("bootstrap", bootstrap, 0)
    _integer("batch_size", batch_size, 1)
    if hidden_row is not None:
        _integer("hidden_row", hidden_row, 0)
        if "hidden" not in features:
            raise AnalysisError(
                "hidden_row applies to the 'hidden' features; add them or leave it out"
            )
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)):
        raise AnalysisError(
            f"train_fraction must be a number between 0 and 1, got {train_fraction!r}"
        )
    specs = [task] if isinstance(task, (str, os.PathLike, Task)) else list(task)
    if not specs:
        raise AnalysisError("no task given; name a built-in task or a task file")
    tasks = [
        load_task(spec, shots=shots, seed=seed, n_items=n_items, train_fraction=train_fraction)
        for spec in specs
    ]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise AnalysisError(
            f"two tasks are called the same ({', '.join(names)}); rename a task file"
        )
    if set(detectors) & set(SKLEARN_DETECTORS):
        require_sklearn()
    return tasks, features, detectors


def detect(
    model: nn.Module,
    tokenizer,
    lenses: Lens | Sequence[Lens] | Mapping[str, Lens] | None = None,
    task: TaskSpec | Sequence[TaskSpec] = "capitals",
    *,
    shots: int | None = None,
    features: Sequence[str] = FEATURE_SETS,
    detectors: Sequence[str] = DETECTORS,
    seed: int = 0,
    hidden_row: int | None = None,
    n_items: int | None = None,
    train_fraction: float = 0.75,
    bootstrap: int = 1000,
    batch_size: int = 8,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Callable[[int, int], None] | None = None,
    model_name: str | None = None,
) -> DetectReport:
    """Detect anomalous prompts (prompt injections) from what lenses read at their last token.

    For each task: the model answers every prompt (attack success: accuracy on normal against
    injected prompts); each feature set of each lens is computed per prompt; each detector is
    fitted on normal prompts only and scores the held-out normal, anomalous and control prompts.

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer.
        lenses: Lenses to compare (one, a list, or a name -> lens mapping); the logit lens is
            always read, as ``"logit"``. Every lens must read block points.
        task: A built-in task (``capitals``, ``sentiment``, ``arithmetic``), a JSON-lines task
            file, a :class:`Task`, or a list of them.
        shots: Answered examples before each built-in question (default 5).
        features: Feature sets from ``choices`` (answer log-probabilities per row),
            ``trajectory`` (entropy, KL, top probability, top-1 changes per row) and ``hidden``
            (token-averaged residual states of one row, no lens).
        detectors: From ``isolation-forest``, ``lof``, ``mahalanobis``.
        seed: Seeds prompts, the split, the isolation forest and the bootstrap.
        hidden_row: Row ``0..L`` of the ``hidden`` features (default ``L // 2``).
        n_items: Use this many questions of each built-in task (default all).
        train_fraction: Share of the normal prompts the detectors are fitted on.
        bootstrap: Resamples for the 95 % intervals of the AUROCs (0: none).
        batch_size: Prompts per forward pass.
        memory_budget: Bytes for the readout's vocabulary-sized work.
        progress: Called with ``(prompts_done, prompts_total)`` after every batch.
        model_name: Recorded in the report (default: the model's ``name_or_path``).

    Returns:
        A :class:`DetectReport`.

    Raises:
        AnalysisError: bad arguments or task data (before the model runs).
        LensMismatch: a lens belongs to another model.
    """
    tasks, features, detectors = check_detect_args(
        task,
        shots=shots,
        features=features,
        detectors=detectors,
        seed=seed,
        hidden_row=hidden_row,
        n_items=n_items,
        train_fraction=train_fraction,
        bootstrap=bootstrap,
        batch_size=batch_size,
    )
    all_lenses = _lenses(model, lenses)
    n_blocks = all_lenses[BASELINE].n_blocks
    output_row = n_blocks
    if "hidden" in features:
        hidden_row = n_blocks // 2 if hidden_row is None else hidden_row
        if hidden_row > n_blocks:
            raise AnalysisError(
                f"hidden_row {hidden_row} is outside this model's rows 0..{n_blocks}"
            )
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    context = getattr(config, "max_position_embeddings", None)
    encoded = [encode_task(t, tokenizer, context) for t in tasks]
    total, done = sum(len(e.task.prompts) for e in encoded), [0]

    def advance(count: int) -> None:
        done[0] += count
        if progress is not None:
            progress(done[0], total)

    started = time.perf_counter()
    summaries, results, curves, scores, answers = {}, [], [], [], []
    names = list(all_lenses)
    for item in encoded:
        readings = read_task(
            model,
            all_lenses,
            item,
            hidden_row=hidden_row if "hidden" in features else None,
            batch_size=batch_size,
            memory_budget=memory_budget,
            progress=advance,
        )
        attack, task_answers = attack_success(item.task, readings, output_row)
        task_results, task_curves, task_scores = score_task(
            item.task, readings, names, features, detectors, seed=seed, bootstrap=bootstrap
        )
        summaries[item.task.name] = _task_summary(item.task, readings, attack, names)
        results += task_results
        curves += task_curves
        scores += task_scores
        answers += task_answers
    settings = {
        "model": model_name or getattr(model.config, "name_or_path", "") or type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "n_blocks": n_blocks,
        "output_row": output_row,
        "lenses": {n: {"kind": lens.kind, "source": lens.source} for n, lens in all_lenses.items()},
        "hidden_row": hidden_row if "hidden" in features else None,
        "shots": (DEFAULT_SHOTS if shots is None else shots)
        if any(t.builtin for t in tasks)
        else None,
        **_settings(
            features,
            detectors,
            seed=seed,
            n_items=n_items,
            bootstrap_resamples=bootstrap,
            train_fraction=train_fraction,
        ),
        "elapsed_s": time.perf_counter() - started,
    }
    return DetectReport(settings, summaries, results, curves, scores, answers)


def _settings(features, detectors, **values) -> dict:
    """The settings of a run that do not depend on the model, for the report."""
    return {
        "features": list(features),
        "detectors": list(detectors),
        "hyperparameters": {d: HYPERPARAMETERS[d] for d in detectors},
        **values,
        "fpr_target": FPR_TARGET,
        "injection": INJECTION,
        "trajectory_stats": {
            k: {"title": t, "units": u, "definition": d}
            for k, (t, u, d) in TRAJECTORY_STATS.items()
        },
    }


def _lenses(model: nn.Module, lenses) -> dict[str, Lens]:
    named = name_lenses(lenses)
    if BASELINE in named:
        raise AnalysisError(
            f"the lens name {BASELINE!r} is reserved for the logit lens, which is always read"
        )
    all_lenses = align_points({BASELINE: LogitLens(model), **named}, model)
    other = {name: lens.points for name, lens in all_lenses.items() if lens.points != "block"}
    if other:
        raise AnalysisError(
            "detect reads lenses of block points (rows 0..L); "
            + ", ".join(f"{n} reads {p!r} points" for n, p in other.items())
            + ": use lenses trained on block points"
        )
    return all_lenses


def _task_summary(task: Task, readings, attack: dict, lenses: list[str]) -> dict:
    kinds = list(dict.fromkeys(p.kind for p in task.prompts))
    counts = {
        kind: {
            split: sum(p.kind == kind and p.split == split for p in task.prompts)
            for split in ("train", "test")
        }
        for kind in kinds
    }
    tokens = {
        kind: float(
            np.mean([readings.n_tokens[i] for i, p in enumerate(task.prompts) if p.kind == kind])
        )
        for kind in kinds
    }
    return {
        "source": task.source,
        "description": task.description,
        "builtin": task.builtin,
        "n_choices": task.n_choices,
        "controls": task.controls,
        "counts": counts,
        "mean_tokens": tokens,
        "attack": attack,
        "example": _examples(task, kinds),
        "trajectories": trajectories(task, readings, lenses),
    }


def _examples(task: Task, kinds: list[str]) -> dict[str, str]:
    """One prompt of each kind, the versions of one held-out question where there are some."""
    tested = next((p.item for p in task.prompts if p.split == "test" and p.anomalous), None)
    out = {}
    for kind in kinds:
        same = [p for p in task.prompts if p.kind == kind and p.item == tested]
        out[kind] = (same or [p for p in task.prompts if p.kind == kind])[0].prompt
    return out
