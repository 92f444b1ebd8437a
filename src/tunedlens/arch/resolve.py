"""Turn a model plus an :class:`ArchSpec` into the concrete modules a lens needs.

Order of resolution: an explicit ``spec=``, the registry (keyed by ``config.model_type``), then a
structural guess (``source="guess"``). The head built on a guess verifies it: decoding the last
block's output must reproduce the model's logits on one batch (:mod:`tunedlens.lenses.unembed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tunedlens.arch.registry import ARCHS, ArchSpec
from tunedlens.errors import ArchitectureNotFound


@dataclass(frozen=True)
class ResolvedArch:
    """The modules of one model instance that a lens reads from and decodes with."""

    spec: ArchSpec
    source: Literal["explicit", "registry", "guess"]
    layers: nn.ModuleList
    final_norm: nn.Module | None
    pre_unembed: tuple[nn.Module, ...]
    unembed: nn.Module
    logit_softcap: float | None
    logit_multiplier: float | None

    @property
    def n_blocks(self) -> int:
        """Number of decoder blocks ``L``."""
        return len(self.layers)


def text_config(model: nn.Module):
    """The language-model part of a model's config (``config.text_config`` for multimodal)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def get_path(model: nn.Module, path: str):
    """The submodule (or attribute) of ``model`` at the dotted ``path``; AttributeError if none."""
    target = model
    for part in path.split("."):
        if not hasattr(target, part):
            raise AttributeError(path)
        target = getattr(target, part)
    return target


def _config_value(config, name: str | None) -> float | None:
    if name is None:
        return None
    value = getattr(config, name, None)
    return None if value is None else float(value)


def _build(model: nn.Module, spec: ArchSpec, source) -> ResolvedArch:
    config = text_config(model)
    try:
        layers = get_path(model, spec.layers)
        final_norm = get_path(model, spec.final_norm) if spec.final_norm else None
        pre = tuple(m for m in (get_path(model, p) for p in spec.pre_unembed) if m is not None)
        unembed = get_path(model, spec.unembed) if spec.unembed else model.get_output_embeddings()
    except AttributeError as error:
        raise ArchitectureNotFound(
            f"{spec} does not fit this model ({type(model).__name__}): it has no module at "
            f"'{error.args[0]}'.\n" + describe_structure(model)
        ) from None
    if not isinstance(layers, nn.ModuleList):
        raise ArchitectureNotFound(
            f"'{spec.layers}' is a {type(layers).__name__}, not the ModuleList of decoder blocks.\n"
            + describe_structure(model)
        )
    if unembed is None or not isinstance(getattr(unembed, "weight", None), torch.Tensor):
        raise ArchitectureNotFound(
            f"The unembedding of {type(model).__name__} is not a linear layer with a weight "
            f"({type(unembed).__name__}); pass ArchSpec(unembed='path.to.linear')."
        )
    multiplier = _config_value(config, spec.logit_scale)
    divisor = _config_value(config, spec.logit_divisor)
    if divisor is not None:
        multiplier = (multiplier or 1.0) / divisor
    return ResolvedArch(
        spec=spec,
        source=source,
        layers=layers,
        final_norm=final_norm,
        pre_unembed=pre,
        unembed=unembed,
        logit_softcap=_config_value(config, spec.logit_softcap),
        logit_multiplier=multiplier,
    )


def resolve_arch(model: nn.Module, spec: ArchSpec | None = None) -> ResolvedArch:
    """Find the decoder blocks, final norm and unembedding of ``model``.

    Args:
        model: A Hugging Face ``*ForCausalLM`` model (or anything with a ``config``).
        spec: Explicit module paths; overrides the registry.

    Returns:
        The resolved modules.

    Raises:
        ArchitectureNotFound: if the model type is unknown and its structure admits no guess.
            The message lists what was found and how to override. A guess is verified by the
            head that decodes with it (``Unembed``).
    """
    if spec is not None:
        return _build(model, spec, "explicit")
    model_type = getattr(model.config, "model_type", None)
    if model_type in ARCHS:
        return _build(model, ARCHS[model_type], "registry")
    guess = _guess_spec(model)
    if guess is not None:
        return _build(model, guess, "guess")
    raise ArchitectureNotFound(
        f"model_type={model_type!r} is not registered.\n{describe_structure(model)}"
    )


def _num_hidden_layers(model: nn.Module) -> int | None:
    return getattr(text_config(model), "num_hidden_layers", None)


def _module_lists(model: nn.Module) -> list[tuple[str, int]]:
    return [(n, len(m)) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n]


def _is_norm(name: str, module: nn.Module) -> bool:
    kind = type(module).__name__.lower()
    leaf = name.rsplit(".", 1)[-1].lower()
    return "norm" in kind or "norm" in leaf or leaf in {"ln_f", "ln_final"}


def _guess_spec(model: nn.Module) -> ArchSpec | None:
    n_blocks = _num_hidden_layers(model)
    candidates = [name for name, size in _module_lists(model) if size == n_blocks]
    if len(candidates) != 1:
        return None
    layers = candidates[0]
    parent_path, _, leaf = layers.rpartition(".")
    parent = get_path(model, parent_path) if parent_path else model
    children = [name for name, _ in parent.named_children()]
    after = children[children.index(leaf) + 1 :]
    norms = [n for n in after if _is_norm(n, getattr(parent, n))]
    final_norm = (
        f"{parent_path}.{norms[-1]}" if norms and parent_path else (norms[-1] if norms else None)
    )
    return ArchSpec(layers, final_norm)


def describe_structure(model: nn.Module) -> str:
    """What was found in ``model`` and the two ways to register it, one fact per line."""
    n_blocks = _num_hidden_layers(model)
    model_type = getattr(model.config, "model_type", None)
    lists = _module_lists(model)
    matching = [n for n, size in lists if size == n_blocks]
    norms = [
        n
        for n, m in model.named_modules()
        if n and _is_norm(n, m) and not any(n.startswith(f"{lst}.") for lst, _ in lists)
    ]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    output_name = next(
        (n for n, m in model.named_modules() if m is output and output is not None), None
    )
    lines = [
        f"  ModuleList with {n_blocks} entries (= num_hidden_layers): {', '.join(matching) or 'none'}",
        f"  other ModuleLists: {', '.join(f'{n} ({s})' for n, s in lists if n not in matching) or 'none'}",
        f"  norm modules outside the blocks: {', '.join(norms) or 'none'}",
        f"  output embeddings: {output_name or 'none'}",
    ]
    example = f'ArchSpec("{matching[0] if matching else "path.to.blocks"}", '
    example += f'"{norms[-1] if norms else "path.to.final_norm"}")'
    lines += [
        f"  Pass resolve_arch(model, spec={example})",
        f'  or call tunedlens.register_arch("{model_type}", {example}).',
    ]
    return "\n".join(lines)
