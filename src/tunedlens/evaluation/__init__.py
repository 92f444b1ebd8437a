"""Exact evaluation of lenses: per-layer metrics, prompt-suite KPIs, gates and reports."""

from tunedlens.evaluation.core import BASELINE, EvalReport, evaluate
from tunedlens.evaluation.prompts import PromptSuite, PromptSuiteError, load_prompts

__all__ = ["BASELINE", "EvalReport", "PromptSuite", "PromptSuiteError", "evaluate", "load_prompts"]
