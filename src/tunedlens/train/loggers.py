"""Run logging to TensorBoard or Weights & Biases (``train --log-to``).

``train_log.jsonl`` stays the record of a run (``tunedlens lens curves`` draws it); these
loggers mirror each optimizer step to a dashboard: the loss (bits), learning rate, gradient norm,
tokens per second and, when the step validated, the validation KL of every layer and its mean.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tunedlens.errors import InputError, require
from tunedlens.metrics.divergence import NATS_TO_BITS

LOG_TARGETS = ("tensorboard", "wandb")


def step_scalars(stats, labels: Sequence[str] | None = None) -> dict[str, float]:
    """The scalars one step logs: ``train/*`` always, ``val/*`` when it validated."""
    scalars = {
        "train/loss_bits": stats.loss * NATS_TO_BITS,
        "train/lr": stats.lr,
        "train/grad_norm": stats.grad_norm,
        "train/tokens_per_s": stats.tokens_per_s,
        "train/tokens": float(stats.tokens),
    }
    if stats.val_kl is not None:
        bits = [value * NATS_TO_BITS for value in stats.val_kl]
        names = labels or [str(i) for i in range(len(bits))]
        scalars["val/kl_bits_mean"] = sum(bits) / len(bits)
        scalars.update(
            {f"val/kl_bits/layer_{name}": value for name, value in zip(names, bits, strict=True)}
        )
        if stats.val_s is not None:
            scalars["val/seconds"] = stats.val_s
    return scalars


class RunLogger:
    """Mirrors training steps to a dashboard."""

    labels: Sequence[str] | None = None

    def __call__(self, stats) -> None:
        """Log one step's :func:`step_scalars`."""
        self.write(step_scalars(stats, self.labels), stats.step)

    def write(self, scalars: dict[str, float], step: int) -> None:
        """Send ``scalars`` for optimizer step ``step``."""
        raise NotImplementedError

    def close(self) -> None:
        """Flush and close."""


class TensorBoardLogger(RunLogger):
    """Writes scalars to ``OUT/tensorboard`` (``tensorboard --logdir OUT/tensorboard``)."""

    def __init__(self, out: Path, config: dict, labels: Sequence[str] | None = None):
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.labels = labels
        self.writer = SummaryWriter(log_dir=str(Path(out) / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))

    def write(self, scalars: dict[str, float], step: int) -> None:  # noqa: D102
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:  # noqa: D102
        self.writer.close()


class WandbLogger(RunLogger):
    """Logs to Weights & Biases in ``OUT/wandb``, offline unless ``WANDB_MODE`` says otherwise.

    ``wandb sync OUT/wandb/offline-run-*`` uploads an offline run later.
    """

    def __init__(self, out: Path, config: dict, labels: Sequence[str] | None = None):
        wandb = require("wandb", "wandb")
        self.labels = labels
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "tunedlens"),
            dir=str(out),
            config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="finish_previous",
        )

    def write(self, scalars: dict[str, float], step: int) -> None:  # noqa: D102
        self.run.log(scalars, step=step)

    def close(self) -> None:  # noqa: D102
        self.run.finish()


def make_loggers(
    targets: Sequence[str], out: Path, config: dict, labels: Sequence[str] | None = None
) -> list:
    """One logger per target (``tensorboard`` or ``wandb``); unknown targets are refused."""
    check_log_targets(targets)
    kinds = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}
    return [kinds[target](out, config, labels) for target in dict.fromkeys(targets)]


def check_log_targets(targets: Sequence[str]) -> None:
    """Refuse unknown targets and missing packages before any heavy work."""
    unknown = [target for target in targets if target not in LOG_TARGETS]
    if unknown:
        raise InputError(f"--log-to {unknown[0]!r} is unknown; choose {' or '.join(LOG_TARGETS)}")
    for target in targets:
        require(target, target)


__all__ = [
    "LOG_TARGETS",
    "RunLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "check_log_targets",
    "make_loggers",
    "step_scalars",
]
