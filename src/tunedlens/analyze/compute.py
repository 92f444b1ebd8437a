"""Multiply-accumulates (MACs) per token: what a block, the head, a lens check and a skipped block cost.

Counted from the model's config: every matrix product a token pays for. Per block: the query,
key, value and output projections (grouped-query attention through ``num_key_value_heads``), the
attention scores and the weighted sum of values over the keys the token attends to (its context,
capped by a sliding window where the layer has one), and the MLP (gated: three ``d x ff``
products; plain: two; mixture of experts: the experts each token is routed to plus the router).
The head is the unembedding (and any projection before it); a lens adds its translator.

Not counted: norms, rotary embeddings, softmax, activations, the exponentials and sums of a
vocabulary-sized softmax, and cosines of states. Each is ``O(d)`` or ``O(V)`` per token, at most
``1/d`` of the product it follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from tunedlens.analyze.errors import AnalysisError
from tunedlens.arch.resolve import resolve_arch, text_config

PLAIN_MLP = frozenset(
    {
        "gpt2",
        "gpt_bigcode",
        "gpt_neo",
        "gptj",
        "bloom",
        "falcon",
        "gpt_neox",
        "opt",
        "phi",
        "starcoder2",
    }
)
"""Families whose MLP is ``W_out act(W_in x)``; every other registered dense family is gated."""
MOE = frozenset({"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "phimoe"})
"""Families whose MLP is a mixture of gated experts."""
NO_GQA = frozenset({"gpt2", "gpt_neo", "gptj", "bloom", "gpt_neox", "opt"})
"""Families whose attention has as many key/value heads as query heads, whatever the config says."""
GATED_MLP = frozenset(
    {
        "llama",
        "mistral",
        "ministral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gemma3",
        "phi3",
        "olmo",
        "olmo2",
        "olmo3",
        "stablelm",
        "smollm3",
        "cohere",
        "cohere2",
        "granite",
        "exaone4",
        "glm",
        "glm4",
    }
)


@dataclass(frozen=True)
class BlockCost:
    """MACs one token pays in one decoder block."""

    fixed: int
    """Projections and MLP: independent of the context."""
    per_key: int
    """Per key attended: ``QKᵀ`` and the weighted sum of values, ``2 · heads · head_dim``."""
    window: int | None
    """Keys attended at most (a sliding-window layer); ``None``: the whole context."""
    kv: int
    """The key and value projections alone: what writing a copied state into the cache costs."""

    def macs(self, context):
        """MACs for a token attending ``context`` keys (an int or an array)."""
        keys = np.asarray(context) if self.window is None else np.minimum(context, self.window)
        return self.fixed + self.per_key * keys


@dataclass(frozen=True)
class ComputeModel:
    """The per-token cost of every part of a model, in MACs."""

    blocks: tuple[BlockCost, ...]
    head: int
    """The unembedding (and any projection before it) for one token."""
    mlp: str
    """``gated``, ``plain``, ``moe`` or ``structure`` (counted from the block's linear layers)."""
    d_model: int
    vocab_size: int

    @property
    def n_blocks(self) -> int:
        """``L``."""
        return len(self.blocks)

    def cumulative(self, context: np.ndarray) -> np.ndarray:
        """``(n, L + 1)``: column ``r`` is the MACs of blocks ``0..r-1`` for each token's context."""
        context = np.asarray(context, dtype=np.float64)
        out = np.zeros((context.shape[0], self.n_blocks + 1))
        for index, block in enumerate(self.blocks):
            out[:, index + 1] = out[:, index] + block.macs(context)
        return out

    def propagation(self) -> np.ndarray:
        """``(L + 1,)``: entry ``r`` is the K/V projections of blocks ``r..L-1`` (exit at row ``r``)."""
        kv = np.array([block.kv for block in self.blocks] + [0], dtype=np.float64)
        return np.cumsum(kv[::-1])[::-1]

    def full(self, context: np.ndarray) -> np.ndarray:
        """MACs of the whole model (every block, then the head) per token."""
        return self.cumulative(context)[:, -1] + self.head

    def to_dict(self) -> dict:
        """JSON-ready: per block, the head, and the MLP kind."""
        return {
            "unit": "multiply-accumulates per token",
            "mlp": self.mlp,
            "head_macs": self.head,
            "blocks": [
                {
                    "fixed_macs": b.fixed,
                    "macs_per_key": b.per_key,
                    "window": b.window,
                    "kv_macs": b.kv,
                }
                for b in self.blocks
            ],
            "counted": "every matrix product: Q/K/V/O projections, attention scores and values "
            "over the keys attended, the MLP (routed experts and router), the head, lens "
            "translators, and the K/V projections that propagate a copied state",
            "not_counted": "norms, rotary embeddings, softmax, activations, vocabulary-sized "
            "exponentials and sums, cosines (each O(d) or O(V) per token)",
        }


def _first(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _kv_heads(config, model_type: str, heads: int) -> int:
    if model_type == "gpt_bigcode":
        return 1 if getattr(config, "multi_query", True) else heads
    if model_type == "falcon":
        if getattr(config, "new_decoder_architecture", False):
            return int(config.num_kv_heads)
        return 1 if getattr(config, "multi_query", True) else heads
    if model_type in NO_GQA:
        return heads
    return int(_first(config, "num_key_value_heads", default=heads))


def _windows(config, model_type: str, n_blocks: int) -> list[int | None]:
    if model_type == "gpt_neo":
        return [config.window_size if kind == "local" else None for kind in config.attention_layers]
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None and len(types) == n_blocks:
        return [window if window and "sliding" in str(kind) else None for kind in types]
    if window and getattr(config, "use_sliding_window", True):
        return [int(window)] * n_blocks
    return [None] * n_blocks


def _mlp_macs(config, model_type: str, d: int, layer: int) -> int:
    if model_type in PLAIN_MLP:
        if model_type == "bloom":
            width = 4 * d
        elif model_type in ("gpt2", "gpt_bigcode", "gptj"):
            width = _first(config, "n_inner", default=4 * d)
        else:
            width = _first(config, "ffn_dim", "ffn_hidden_size", "intermediate_size", default=4 * d)
        return 2 * d * int(width)
    if model_type in MOE:
        experts = int(_first(config, "num_local_experts", "num_experts"))
        dense = (
            layer in (getattr(config, "mlp_only_layers", None) or [])
            or (layer + 1) % int(getattr(config, "decoder_sparse_step", 1) or 1) != 0
        )
        if dense:
            return 3 * d * int(config.intermediate_size)
        width = int(_first(config, "moe_intermediate_size", "intermediate_size"))
        macs = int(config.num_experts_per_tok) * 3 * d * width + d * experts
        shared = getattr(config, "shared_expert_intermediate_size", None)
        if shared:
            macs += 3 * d * int(shared) + d  # the shared expert and its gate
        return macs
    return 3 * d * int(config.intermediate_size)


def _linear_macs(module: nn.Module) -> int:
    """Weight entries of every linear layer inside ``module``: its dense MACs per token."""
    total = 0
    for child in module.modules():
        weight = getattr(child, "weight", None)
        if isinstance(child, nn.Embedding) or weight is None or weight.dim() != 2:
            continue
        total += weight.numel()
    return total


def compute_model(model: nn.Module) -> ComputeModel:
    """The per-token MACs of ``model``'s blocks and head, from its config.

    Families outside :data:`GATED_MLP`, :data:`PLAIN_MLP` and :data:`MOE` (a structurally guessed
    architecture) are counted from the weights of each block's linear layers, assuming every one
    runs for every token.
    """
    arch = resolve_arch(model)
    config = text_config(model)
    model_type = getattr(config, "model_type", "")
    n_blocks = arch.n_blocks
    d = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(_first(config, "head_dim", default=d // heads))
    kv_width = _kv_heads(config, model_type, heads) * head_dim
    windows = _windows(config, model_type, n_blocks)
    known = model_type in PLAIN_MLP | MOE | GATED_MLP
    blocks = []
    for layer in range(n_blocks):
        if known:
            fixed = (
                2 * d * heads * head_dim
                + 2 * d * kv_width
                + _mlp_macs(config, model_type, d, layer)
            )
        else:
            fixed = _linear_macs(arch.layers[layer])
        blocks.append(
            BlockCost(
                fixed=int(fixed),
                per_key=2 * heads * head_dim,
                window=windows[layer],
                kv=2 * d * kv_width,
            )
        )
    head = sum(m.weight.numel() for m in arch.pre_unembed) + arch.unembed.weight.numel()
    mlp = (
        "moe"
        if model_type in MOE
        else "plain"
        if model_type in PLAIN_MLP
        else "gated"
        if known
        else "structure"
    )
    return ComputeModel(tuple(blocks), int(head), mlp, d, int(arch.unembed.weight.shape[0]))


def lens_macs(lens, row: int) -> int:
    """MACs of ``lens``'s own map at ``row`` (0 for the logit lens and at the output row)."""
    if row == lens.n_blocks:
        return 0
    translator = getattr(lens, "translator", None)
    if translator is not None:
        d = lens.d_model
        kind = getattr(translator, "kind", None)
        if kind == "affine":
            return d * d
        if kind == "lowrank":
            return 2 * d * int(translator.rank)
        if kind == "diagonal":
            return 0
        if kind == "mlp":
            return 2 * d * int(translator.rank)
        raise AnalysisError(
            f"cannot count the compute of a {kind!r} translator; early exit counts affine, "
            "low-rank, diagonal and MLP translators"
        )
    matrices = getattr(lens, "matrices", None)
    if matrices is not None:
        return lens.d_model**2 if row in matrices else 0
    if lens.kind == "logit":
        return 0
    raise AnalysisError(
        f"cannot count the compute of a {type(lens).__name__} lens; early exit counts logit, "
        "tuned and Jacobian lenses"
    )


__all__ = [
    "GATED_MLP",
    "MOE",
    "NO_GQA",
    "PLAIN_MLP",
    "BlockCost",
    "ComputeModel",
    "compute_model",
    "lens_macs",
]
