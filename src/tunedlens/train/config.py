"""Training settings: a frozen :class:`TrainConfig`, named recipes, and run-time derived values."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import math
import textwrap
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from tunedlens.errors import InputError
from tunedlens.lenses.lens import TunedLens


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes. Becomes part of ``provenance.json``."""

    recipe: str = "default"
    """Name of the recipe these settings came from (informational)."""
    translator: Literal["affine", "lowrank", "diagonal", "mlp"] = "affine"
    """Translator kind: the paper's ``h + W h + b``, identity-plus-low-rank, ``diagonal``
    (per-dimension scale and bias) or ``mlp`` (one hidden layer, residual). Recipes start only
    affine translators by least squares; the others start at the identity."""
    rank: int | None = None
    """Low-rank rank, or the MLP's hidden width (default ``clip(d_model // 32, 64, 256)``)."""
    points: Literal["block", "mid", "both"] = "block"
    """Where translators read: ``block`` (block inputs), ``mid`` (after attention, before the
    MLP; rows labelled ``3.mid``) or ``both``, interleaved. Parallel-block families have no mid."""
    use_temperature: bool = False
    """Low-rank translators: learn a per-layer temperature."""
    objective: Literal["kl", "ce"] = "kl"
    """``kl``: KL(final ‖ lens) at the same position; ``ce``: cross-entropy to the next token."""
    tokens: int = 2**18 * 250
    """Training budget in tokens, each counted once whatever ``epochs`` is (whole sequences;
    rounded down to whole optimizer steps)."""
    seq_len: int = 512
    """Tokens per sequence."""
    batch_size: int = 8
    """Sequences per forward pass (micro-batch)."""
    tokens_per_step: int = 2**18
    """Tokens per optimizer step (a multiple of ``batch_size * seq_len``; accumulation fills it)."""
    optimizer: Literal["sgd", "adam", "muon"] = "sgd"
    """``sgd``: Nesterov SGD; ``adam``: AdamW; ``muon``: Muon on each layer's matrices (AdamW on
    biases), with the update size matched to AdamW's so that ``lr`` means the same."""
    lr: float = 0.1
    """Peak learning rate (PyTorch units)."""
    momentum: float = 0.9
    """SGD and Muon momentum."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 1e-3
    """Decoupled (AdamW) or L2 (SGD) weight decay."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay to 0 over the run after warm-up."""
    warmup_fraction: float = 0.0
    """Fraction of optimizer steps with linear warm-up."""
    grad_clip: float | None = 1.0
    """Clip the total gradient norm to this value (``None``: no clipping)."""
    layers_per_step: int | None = None
    """Train this many randomly chosen layers per micro-batch (``None``: all)."""
    positions_per_sequence: int | None = None
    """Sample this many positions per sequence for the loss (``None``: every position)."""
    positions_per_sequence_end: int | None = None
    """Position schedule: change the sampled positions per sequence linearly from
    ``positions_per_sequence`` at the first step to this at the last (``None``: constant)."""
    position_range: tuple[int, int] | None = None
    """Sample positions from ``[start, stop)`` of each sequence (``None``: the whole sequence)."""
    lstsq_init: bool = False
    """Initialise translators by least squares from activation statistics before training."""
    lstsq_tokens: int = 2**16
    """Tokens whose activations feed the least-squares initialisation (see ``lstsq_budget_share``)."""
    lstsq_budget_share: float = 1 / 16
    """Largest share of ``tokens`` the least-squares fit may use (its pass costs about one forward
    per token, so a share s adds about s of the run's forward passes)."""
    l2_penalty: float = 0.0
    """L2 penalty on translator parameters (low-rank: ``U``, ``V``, ``c``)."""
    smoothness_penalty: float = 0.0
    """Penalty on differences between translators of adjacent layers."""
    freeze_last: bool = False
    """Keep the last layer's translator at the identity."""
    val_every: int | None = None
    """Evaluate on held-out data every this many optimizer steps (``None``: only at the end)."""
    val_tokens: int | None = None
    """Held-out tokens for validation (taken from the training source unless given separately;
    0: no validation). Validation reads exact KL at the positions training samples (the same
    count per sequence, drawn once). ``None``: ``val_budget_share`` of ``tokens``, in whole
    sequences, at least 8 and at most 64 (at most 8 when every position is read)."""
    val_budget_share: float = 1 / 16
    """Share of ``tokens`` held out for validation when ``val_tokens`` is ``None``: its cost,
    about a forward pass over those tokens, grows with the run."""
    patience: int | None = None
    """Stop after this many validations without improvement (``None``: never stop early)."""
    checkpoint_every: int | None = None
    """Write a resumable checkpoint every this many optimizer steps."""
    time_budget_s: float | None = None
    """Wall-time budget in seconds: one timed probe step sizes ``tokens`` (and so the schedule)
    to fit it, and training stops at the budget with the best validated lens. The tokens used are
    recorded in ``provenance.json`` (``tokens=N`` then reproduces the run); a resumed run keeps
    the budget of the first."""
    epochs: int = 1
    """Passes over the training tokens. ``tokens`` counts each token once; the run takes
    ``epochs`` times its steps, over the same sequences (see ``cache_residuals``)."""
    cache_residuals: bool | None = None
    """Later epochs train on the residual rows the first epoch sampled (and the last block's
    output, from which the head recomputes the target), kept instead of running the model again
    (about 60 % of a step on a CPU), in a new order each epoch. ``None``: when ``epochs > 1``.
    Without it, each epoch runs the model again and samples new positions."""
    cache_dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the kept rows (``bfloat16`` halves their memory; the first epoch trains on
    the exact rows either way)."""
    cache_memory_gib: float = 4.0
    """Most GiB of memory the kept rows take; a larger cache is a memory-mapped file in the
    temporary directory (``TMPDIR``), deleted when the run ends."""
    loss_chunk_rows: int = 2048
    """Rows per chunk of the vocabulary-sized loss computation (bounds memory); within a chunk,
    layers are decoded together in products of at most this many rows (and 2^26 logits)."""
    seed: int = 0
    """Seeds data order, position/layer sampling and low-rank initialisation."""

    def __post_init__(self):
        def fail(name, accepted):
            raise InputError(f"{name}={getattr(self, name)!r} is invalid; expected {accepted}.")

        if self.translator not in ("affine", "lowrank", "diagonal", "mlp"):
            fail("translator", "'affine', 'lowrank', 'diagonal' or 'mlp'")
        if self.points not in ("block", "mid", "both"):
            fail("points", "'block', 'mid' or 'both'")
        if self.objective not in ("kl", "ce"):
            fail("objective", "'kl' or 'ce'")
        if self.optimizer not in ("sgd", "adam", "muon"):
            fail("optimizer", "'sgd', 'adam' or 'muon'")
        if self.schedule not in ("linear", "cosine", "constant"):
            fail("schedule", "'linear', 'cosine' or 'constant'")
        for name in (
            "tokens",
            "seq_len",
            "batch_size",
            "tokens_per_step",
            "loss_chunk_rows",
            "epochs",
        ):
            if getattr(self, name) < 1:
                fail(name, "a positive integer")
        if self.seq_len < 2:
            fail("seq_len", "at least 2")
        if self.tokens_per_step % (self.batch_size * self.seq_len):
            fail(
                "tokens_per_step",
                f"a multiple of batch_size * seq_len = {self.batch_size * self.seq_len}",
            )
        if self.tokens < self.tokens_per_step:
            fail("tokens", f"at least tokens_per_step = {self.tokens_per_step}")
        for name in (
            "lr",
            "momentum",
            "weight_decay",
            "warmup_fraction",
            "lstsq_budget_share",
            "val_budget_share",
            "l2_penalty",
            "smoothness_penalty",
            "grad_clip",
        ):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                fail(name, "a finite number")
        if not all(math.isfinite(beta) and 0 <= beta < 1 for beta in self.betas):
            fail("betas", "two numbers in [0, 1)")
        if self.lr <= 0:
            fail("lr", "a positive number")
        if not 0 < self.lstsq_budget_share <= 1:
            fail("lstsq_budget_share", "a number in (0, 1]")
        if not 0 < self.val_budget_share <= 1:
            fail("val_budget_share", "a number in (0, 1]")
        if self.val_tokens is not None and self.val_tokens < 0:
            fail("val_tokens", "None, 0 (no validation) or a positive number of tokens")
        if not 0 <= self.warmup_fraction < 1:
            fail("warmup_fraction", "a number in [0, 1)")
        if self.time_budget_s is not None and not (
            math.isfinite(self.time_budget_s) and self.time_budget_s > 0
        ):
            fail("time_budget_s", "a positive number of seconds")
        if self.cache_dtype not in ("float32", "bfloat16"):
            fail("cache_dtype", "'float32' or 'bfloat16'")
        if not (math.isfinite(self.cache_memory_gib) and self.cache_memory_gib >= 0):
            fail("cache_memory_gib", "a number of GiB, 0 or more (0: always a file)")
        if self.use_temperature and self.translator != "lowrank":
            fail("use_temperature", "False unless translator='lowrank'")
        if self.lstsq_init and self.translator != "affine":
            fail("lstsq_init", "False unless translator='affine'")
        for name in (
            "layers_per_step",
            "positions_per_sequence",
            "val_every",
            "patience",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                fail(name, "None or a positive integer")
        if self.positions_per_sequence_end is not None and self.positions_per_sequence is None:
            fail("positions_per_sequence_end", "None unless positions_per_sequence is set")
        if self.positions_per_sequence_end is not None and self.positions_per_sequence_end < 1:
            fail("positions_per_sequence_end", "None or a positive integer")
        if self.position_range is not None:
            start, stop = self.position_range
            if not 0 <= start < stop <= self.seq_len:
                fail(
                    "position_range",
                    f"(start, stop) with 0 <= start < stop <= seq_len={self.seq_len}",
                )

    @property
    def keeps_rows(self) -> bool:
        """Whether the first epoch keeps its rows for later ones (``cache_residuals``, resolved)."""
        return self.epochs > 1 if self.cache_residuals is None else self.cache_residuals

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)

    def new_lens(self, model):
        """The untrained tuned lens these settings train for ``model``.

        Args:
            model: The causal LM the lens reads.

        Returns:
            A :class:`~tunedlens.lenses.lens.TunedLens` with this config's translator kind, rank,
            temperature, seed and points.
        """
        return TunedLens.from_model(
            model,
            translator=self.translator,
            rank=self.rank,
            use_temperature=self.use_temperature,
            seed=self.seed,
            points=self.points,
        )


VAL_SEQUENCES = (8, 64)
"""Fewest and most held-out sequences when validation scales with the budget."""


def validation_sequences(config: TrainConfig) -> int:
    """Held-out sequences a run validates on (0: none); see ``TrainConfig.val_tokens``."""
    if config.val_tokens is not None:
        return max(1, config.val_tokens // config.seq_len) if config.val_tokens else 0
    fewest, most = VAL_SEQUENCES
    if config.positions_per_sequence is None:
        most = fewest  # exact KL at every position costs a full decode per token
    share = int(config.tokens * config.val_budget_share) // config.seq_len
    return min(most, max(fewest, share))


@dataclass(frozen=True)
class Resolved:
    """Values derived at run time from a config, the model and the world size."""

    n_blocks: int
    """Decoder blocks ``L`` of the model."""
    output_row: int
    """The lens's output row (``L``; ``2L`` for both points): it trains rows ``0..output_row-1``."""
    d_model: int
    steps: int
    accumulation: int
    world_size: int
    warmup_steps: int
    trained_layers: list[int] = field(default_factory=list)
    steps_per_epoch: int = 0
    """Optimizer steps of one pass over the tokens (``steps`` over ``config.epochs``)."""
    cache_residuals: bool = False
    """Whether later epochs train on the rows the first one kept."""

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)


RECIPES: dict[str, dict] = {
    # As the reference trains (tuned-lens 0.2.0 defaults): Nesterov SGD, lr 1.0 x (1 - 0.9),
    # weight decay 1e-3, linear decay to 0, no warm-up, clip 1.0, 250 steps x 2^18 tokens.
    "paper": dict(
        translator="affine",
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
        schedule="linear",
        warmup_fraction=0.0,
        grad_clip=1.0,
        tokens=250 * 2**18,
        tokens_per_step=2**18,
    ),
    # Identity + low rank with temperature, AdamW, cosine with 10 % warm-up, L2 smallness and
    # depth smoothness 1e-4, last layer frozen to identity: a small, regularised translator.
    "lowrank": dict(
        translator="lowrank",
        use_temperature=True,
        optimizer="adam",
        lr=1e-3,
        betas=(0.9, 0.999),
        weight_decay=1e-4,
        schedule="cosine",
        warmup_fraction=0.1,
        grad_clip=1.0,
        l2_penalty=1e-4,
        smoothness_penalty=1e-4,
        freeze_last=True,
        tokens=250 * 2**18,
        tokens_per_step=2**18,
    ),
}
# The default recipe is chosen by measurement: see benchmarks/results/recipes.md.
RECIPES["default"] = dict(
    translator="affine",
    lstsq_init=True,
    optimizer="adam",
    lr=1e-3,
    betas=(0.9, 0.99),
    weight_decay=0.0,
    schedule="cosine",
    warmup_fraction=0.0,
    grad_clip=1.0,
    positions_per_sequence=16,
    tokens=2**21,
    tokens_per_step=2**14,
    # A quarter of the budget for the least-squares start: against a sixteenth, it lowered
    # held-out KL at an 8-minute budget from 3.50 to 2.98 bits (benchmarks/results/candidates.md).
    lstsq_tokens=2**18,
    lstsq_budget_share=1 / 4,
)


def recipe_config(name: str, *, explicit: dict | None = None, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of a named recipe, with changes applied.

    Args:
        name: A key of :data:`RECIPES`.
        explicit: Field values to set as given, ``None`` included (``grad_clip=None``: no
            clipping), as the command line's options.
        **overrides: Field values to set; ``None`` here means "the recipe's value".

    Returns:
        The checked configuration (an invalid combination raises ``InputError``).
    """
    if name not in RECIPES:
        raise InputError(f"recipe={name!r} is unknown; choose one of {sorted(RECIPES)}.")
    given = {k: v for k, v in overrides.items() if v is not None} | dict(explicit or {})
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise InputError(f"{', '.join(unknown)}: not a TrainConfig field")
    settings = {**RECIPES[name], **given}
    if settings.get("translator", "affine") != "affine" and "lstsq_init" not in given:
        settings["lstsq_init"] = False  # the least-squares start fits affine translators only
    return TrainConfig(recipe=name, **settings)


def recipe_value(name: str, field: str):
    """The value a recipe gives ``field`` (the dataclass default where the recipe is silent)."""
    if field in RECIPES[name]:
        return RECIPES[name][field]
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == field)


@lru_cache(maxsize=1)
def field_docs() -> dict[str, str]:
    """Each :class:`TrainConfig` field's docstring, whitespace folded: the CLI's option help."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(TrainConfig)))
    body = tree.body[0].body
    docs = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def field_help(name: str) -> str:
    """The help text of the CLI option that sets :class:`TrainConfig` field ``name``."""
    return field_docs()[name]
