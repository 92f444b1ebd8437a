"""A user's task file: finished prompts, labelled, one JSON object per line.

``{"prompt": str, "choices": [str, ...], "label": choice or index, "anomalous": bool}``,
optionally ``"kind"`` (a name for a group of prompts; a non-anomalous kind other than
``normal`` is a benign control). Choices are the exact continuations of the prompt, leading
space included (``" positive"``), and every prompt has the same number of them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tunedlens.analyze.detection.prompts import NORMAL, Task, TaskPrompt, n_train, seeded_rng
from tunedlens.analyze.errors import AnalysisError


def read_task_file(path: Path, *, seed: int, train_fraction: float) -> Task:
    """The checked prompts of the task file ``path``, named after it, split for fitting.

    Raises:
        AnalysisError: the first bad line, one class only, too few normal prompts.
    """
    return _split(_read_file(path), path.stem, str(path), seed, train_fraction)


def _read_file(path: Path) -> list[TaskPrompt]:
    """Every prompt of a user's task file, checked line by line (split assigned later)."""
    try:
        text = path.read_text("utf-8")
    except OSError as error:
        raise AnalysisError(f"cannot read task file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise AnalysisError(f"task file {path} is not UTF-8 text; write it as JSON lines") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            records.append(_record(line, f"task file {path} line {number}", len(records)))
    if not records:
        raise AnalysisError(
            f'task file {path} holds no prompts; write one {{"prompt", "choices", "label", '
            '"anomalous"} object per line'
        )
    counts = {len(r.choices) for r in records}
    if len(counts) > 1:
        raise AnalysisError(
            f"the prompts of task file {path} have different numbers of choices "
            f"({', '.join(map(str, sorted(counts)))}); the features hold one value per choice, so "
            "give every prompt the same number"
        )
    anomalous = sum(r.anomalous for r in records)
    normal = sum(r.kind == NORMAL for r in records)
    if anomalous == 0 or anomalous == len(records):
        which = "anomalous" if anomalous else "normal (or benign controls)"
        raise AnalysisError(
            f"every prompt of task file {path} is {which}: with one class the AUROC is undefined; "
            'add prompts with "anomalous": ' + ("false" if anomalous else "true")
        )
    if normal < 4:
        raise AnalysisError(
            f"task file {path} has {normal} normal prompts; at least 4 are needed (the detectors "
            "are fitted on normal prompts and tested on held-out ones)"
        )
    return records


def _record(line: str, where: str, index: int) -> TaskPrompt:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise AnalysisError(f"{where} is not JSON: {error.msg}") from None
    if not isinstance(item, dict):
        raise AnalysisError(
            f'{where}: expected an object {{"prompt", "choices", "label", "anomalous"}}'
        )
    missing = [key for key in ("prompt", "choices", "label", "anomalous") if key not in item]
    if missing:
        raise AnalysisError(
            f"{where} lacks {', '.join(repr(m) for m in missing)}; every line needs "
            '"prompt" (text), "choices" (list of texts), "label" (a choice) and "anomalous" (true/false)'
        )
    prompt, choices, label, anomalous = (
        item["prompt"],
        item["choices"],
        item["label"],
        item["anomalous"],
    )
    if not isinstance(prompt, str) or not prompt:
        raise AnalysisError(f'{where}: "prompt" must be non-empty text')
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise AnalysisError(f'{where}: "choices" must be a list of at least 2 non-empty texts')
    if len(set(choices)) != len(choices):
        raise AnalysisError(f'{where}: "choices" repeat an option: {choices}')
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise AnalysisError(f'{where}: "label" must be one of the choices (or its index)')
    if isinstance(label, int):
        if not 0 <= label < len(choices):
            raise AnalysisError(
                f'{where}: "label" {label} is not an index of its {len(choices)} choices'
            )
    elif label not in choices:
        raise AnalysisError(
            f'{where}: "label" {label!r} is not one of its choices {choices} (write it exactly as the '
            "choice, leading space included)"
        )
    if not isinstance(anomalous, bool):
        raise AnalysisError(f'{where}: "anomalous" must be true or false, got {anomalous!r}')
    kind = item.get("kind", "anomalous" if anomalous else NORMAL)
    if not isinstance(kind, str) or not kind or (anomalous and kind == NORMAL):
        raise AnalysisError(
            f'{where}: "kind" must be a non-empty name, and not "normal" for an anomalous prompt'
        )
    return TaskPrompt(
        prompt,
        tuple(choices),
        label if isinstance(label, int) else choices.index(label),
        kind,
        anomalous,
        split="test",
        item=index,
    )


def _split(
    records: list[TaskPrompt], name: str, source: str, seed: int, train_fraction: float
) -> Task:
    """Mark a seeded ``train_fraction`` of the normal prompts for fitting; the rest are tested."""
    normal = [i for i, r in enumerate(records) if r.kind == NORMAL]
    order = seeded_rng(seed, name).permutation(len(normal))
    train = {normal[i] for i in order[: n_train(len(normal), train_fraction)].tolist()}
    prompts = tuple(replace(r, split="train") if i in train else r for i, r in enumerate(records))
    return Task(name, source, prompts, False, "a user's labelled prompts")
