"""Terminal progress for ``tunedlens train``: a rich progress bar and a closing summary."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tunedlens.metrics.divergence import NATS_TO_BITS


class TrainingProgress:
    """Progress bar with tokens/s, loss and ETA; quiet on non-primary processes."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} {task.fields[unit]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.task = None
        self.sampling = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def status(self, message: str) -> None:
        """Print a one-line status message."""
        if self.enabled:
            self.console.print(f"[dim]{message}[/dim]")

    def update(self, stats) -> None:
        """Advance the bar after an optimizer step."""
        if self.task is None:
            self.task = self.progress.add_task(
                "train", total=stats.steps, rate="-", loss="loss - bits", unit="steps"
            )
        rate = f"{stats.tokens / stats.elapsed:,.0f}" if stats.elapsed else "-"
        self.progress.update(
            self.task,
            completed=stats.step,
            rate=rate,
            loss=f"loss {stats.loss * NATS_TO_BITS:.3f} bits",
        )
        if stats.val_kl is not None:
            mean = sum(stats.val_kl) / len(stats.val_kl) * NATS_TO_BITS
            self.progress.console.print(
                f"step {stats.step}: validation KL {mean:.3f} bits (mean over layers)"
            )

    def sample(self, done: int, total: int) -> None:
        """Advance the bar of the text sampled from the model (``--data self``), in tokens."""
        if self.sampling is None:
            self.sampling = self.progress.add_task(
                "sample", total=total, rate="-", loss="", unit="tokens"
            )
            self.sampling_from = (done, time.monotonic())
        first, began = self.sampling_from
        elapsed = time.monotonic() - began
        rate = f"{(done - first) / elapsed:,.0f}" if elapsed > 0 and done > first else "-"
        self.progress.update(self.sampling, completed=done, total=total, rate=rate)

    def summary(self, result, out: Path) -> None:
        """Print the final per-layer validation KL and where the lens went."""
        console = Console()
        if result.val_kl is not None:
            table = Table(title=f"validation KL(model ‖ lens), best step {result.best_step}")
            table.add_column("layer", justify="right")
            table.add_column("KL bits", justify="right")
            for layer, value in enumerate(result.val_kl):
                table.add_row(str(layer), f"{value * NATS_TO_BITS:.3f}")
            console.print(table)
        stop = " (stopped early)" if result.stopped_early else ""
        console.print(
            f"trained {result.steps_done} steps in {result.wall_time:.0f}s{stop}; lens saved to {out}"
        )


class CountProgress:
    """Progress bar over a count (tokens evaluated, prompts fitted), on stderr, with ETA.

    Nothing is drawn before :meth:`start`, so an error raised while checking the arguments or
    loading stays one line.
    """

    def __init__(self, label: str = "eval", unit: str = "tokens"):
        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            TextColumn(f"{{task.completed:,}}/{{task.total:,}} {unit}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc) if self.task is not None else None

    def start(self, total: int) -> None:
        """Begin the bar once the number of tokens is known."""
        self.progress.__enter__()
        self.task = self.progress.add_task("eval", total=total)

    def advance(self, done: int, total: int) -> None:
        """Show ``done`` of ``total``, starting the bar on the first call."""
        if self.task is None:
            self.start(total)
        self.update(done, total)

    def update(self, done: int, total: int) -> None:
        """Advance after a batch."""
        if self.task is None:
            self.start(total)
        self.progress.update(self.task, completed=done)


class SampleProgress(CountProgress):
    """The bar of the text sampled from the model (``--data self``), stopped once complete.

    It ends before the command's own bar begins (one live display at a time).
    """

    def __init__(self):
        super().__init__("sample", "tokens")
        self.finished = False

    def update(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` tokens; stop the bar at ``total``."""
        if self.finished:
            return
        super().update(done, total)
        if done >= total:
            self.progress.stop()
            self.finished = True

    def __exit__(self, *exc):
        if self.task is not None and not self.finished:
            return self.progress.__exit__(*exc)
        return None


@contextmanager
def interrupted(out: Path, checkpoints: str, *, force: bool = False):
    """On Ctrl-C, say whether a checkpoint (``out/<checkpoints glob>``) is kept, exit 130."""
    replacing = force and out.is_dir() and any(out.iterdir())  # --force works beside --out
    try:
        yield
    except KeyboardInterrupt:
        if replacing:
            message = (
                f"interrupted: {out} is as it was; --force replaces it only once the new run is "
                "done, so this run cannot be resumed."
            )
        elif any(out.glob(checkpoints)):
            message = (
                f"interrupted: the last checkpoint in {out} is kept; run the same command "
                "with --resume to continue from it."
            )
        else:
            message = (
                "interrupted before any checkpoint was written, so there is nothing to "
                "resume; pass --checkpoint-every N to make the run resumable."
            )
        typer.echo(message, err=True)
        raise SystemExit(130) from None
