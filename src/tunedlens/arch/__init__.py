"""Architecture knowledge: the registry, module resolution and residual-stream capture."""

from tunedlens.arch.registry import ARCHS, ArchSpec, register_arch
from tunedlens.arch.residuals import Residuals, collect_residuals
from tunedlens.arch.resolve import ResolvedArch, describe_structure, resolve_arch

__all__ = [
    "ARCHS",
    "ArchSpec",
    "Residuals",
    "ResolvedArch",
    "collect_residuals",
    "describe_structure",
    "register_arch",
    "resolve_arch",
]
