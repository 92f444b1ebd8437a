"""Anomalous prompts from prediction trajectories (issue #25; Belrose et al. 2023, §5).

:func:`detect` asks a model few-shot multiple-choice questions, normal and with a prompt
injection, reads every lens at each prompt's last token, fits anomaly detectors on normal
prompts only and measures how well they flag the injected ones (and leave benign controls
alone). :func:`check_detect_args` checks its arguments without a model; :func:`load_task`
builds a task's prompts.
"""

from tunedlens.analyze.detection.builtin import BUILTIN_TASKS, INJECTION
from tunedlens.analyze.detection.core import check_detect_args, detect
from tunedlens.analyze.detection.detectors import DETECTORS
from tunedlens.analyze.detection.features import FEATURE_SETS
from tunedlens.analyze.detection.prompts import Task, TaskPrompt
from tunedlens.analyze.detection.report import DetectReport
from tunedlens.analyze.detection.tasks import load_task

__all__ = [
    "BUILTIN_TASKS",
    "DETECTORS",
    "FEATURE_SETS",
    "INJECTION",
    "DetectReport",
    "Task",
    "TaskPrompt",
    "check_detect_args",
    "detect",
    "load_task",
]
