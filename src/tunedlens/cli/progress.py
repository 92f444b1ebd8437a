"""Terminal progress for ``tunedlens train``: a rich progress bar and a closing summary."""

from __future__ import annotations

import shutil
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tunedlens.metrics.divergence import NATS_TO_BITS


class RemainingColumn(ProgressColumn):
    """Time left at the rate of the last few updates (``rate`` field), else since it began.

    Rich's own estimate needs two updates within 30 s, which a CPU's micro-batch of a large
    model does not give: it would show no estimate at all.
    """

    def render(self, task) -> Text:  # noqa: D102
        if task.finished:
            return Text("eta 0:00:00", style="progress.remaining")
        began, base = task.fields.get("began"), task.fields.get("base", 0)
        done = task.completed - base
        if began is None or done <= 0 or task.total is None:
            return Text("eta -:--:--", style="progress.remaining")
        rate = task.fields.get("rate") or done / max(time.monotonic() - began, 1e-9)
        left = (task.total - task.completed) / rate
        minutes, seconds = divmod(int(left + 0.5), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"eta {hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


PHASES = {
    "sample": ("sample", "tokens"),
    "packing": ("packing", "sequences"),
    "lstsq": ("least squares", "sequences"),
    "train": ("train", "tokens"),
    "validation": ("validation", "sequences"),
}
"""Each phase of a training run: its label and the unit its bar counts."""


RATE_WINDOW = 4
"""Updates the ETA's rate is measured over: recent enough to follow a change of pace (the first
micro-batches reuse the least-squares start's forward pass and go faster)."""


class _NotedProgress(Progress):
    """Progress bars with a line of text under them (the last optimizer step's figures)."""

    note = ""

    def get_renderables(self):
        yield from super().get_renderables()
        if self.note:
            yield Text(self.note)


class TrainingProgress:
    """One bar per phase of a run (least-squares start, training, validation), on stderr.

    The training bar counts tokens (it moves after every micro-batch, so its ETA is real); the
    line under the bars shows the last step's tokens/s (``tokens_per_s`` of ``train_log.jsonl``)
    and loss (mean over layers, in bits: the validation KL's basis). Everything fits in 80
    columns. Quiet on non-primary processes.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.progress = _NotedProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=16),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            RemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.tasks: dict[str, int] = {}
        self.samples: dict[str, deque] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def status(self, message: str) -> None:
        """Print a one-line status message."""
        if self.enabled:
            self.console.print(f"[dim]{message}[/dim]")

    def phase(self, name: str, done: int, total: int) -> None:
        """Show how far phase ``name`` (a key of :data:`PHASES`) is: ``done`` of ``total``."""
        label, unit = PHASES[name]
        count = f"{done:,}/{total:,} {unit}"
        now = time.monotonic()
        samples = self.samples.setdefault(name, deque(maxlen=RATE_WINDOW + 1))
        if done == 0 or (samples and done < samples[-1][1]):
            samples.clear()
        if not samples or done != samples[-1][1]:  # a step repeats its last micro-batch's count
            samples.append((now, done))
        (first_time, first_done), (last_time, last_done) = samples[0], samples[-1]
        rate = (last_done - first_done) / (last_time - first_time) if last_time > first_time else 0
        task = self.tasks.get(name)
        if task is None:
            self.tasks[name] = self.progress.add_task(
                label,
                total=total,
                completed=done,
                count=count,
                began=now,
                base=done,  # a resumed run starts part way
                rate=0,
            )
            return
        if done == 0:  # a phase that runs again (validation every N steps) starts afresh
            self.progress.reset(task, total=total, completed=0, count=count, began=now, rate=0)
            return
        self.progress.update(task, total=total, completed=done, count=count, rate=rate)

    def sample(self, done: int, total: int) -> None:
        """Show the text sampled from the model (``--data self``), in tokens."""
        self.phase("sample", done, total)

    def update(self, stats) -> None:
        """After an optimizer step: its tokens/s and loss beside the training bar."""
        self.progress.note = (
            f"  step {stats.step}/{stats.steps}: {stats.tokens_per_s:,.0f} tok/s, "
            f"loss {stats.mean_loss * NATS_TO_BITS:.3f} bits (mean over layers)"
        )
        self.phase("train", stats.tokens, stats.total_tokens or stats.tokens)
        if stats.val_kl is not None:
            mean = sum(stats.val_kl) / len(stats.val_kl) * NATS_TO_BITS
            line = f"step {stats.step}: validation KL {mean:.3f} bits (mean over layers)"
            if stats.logit_val_kl is not None:
                logit = sum(stats.logit_val_kl) / len(stats.logit_val_kl) * NATS_TO_BITS
                line += f"; logit lens {logit:.3f}"
            self.progress.console.print(line)

    def summary(self, result, out: Path) -> None:
        """Print the final per-row validation KL beside the logit lens's, and the timings."""
        console = Console()
        if result.val_kl is not None:
            console.print(summary_table(result))
        stop = " (stopped early)" if result.stopped_early else ""
        steps = f"{result.steps_done} step{'s' * (result.steps_done != 1)}"
        console.print(f"trained {steps} in {result.wall_time:.0f} s{stop}; lens saved to {out}")
        if result.best_step == 0 and result.steps_done:  # only a validation makes step 0 best
            console.print(
                f"the least-squares start (step 0) validated best: the {steps} did not improve "
                "on it, so it is the lens saved; a longer run (--tokens) gives training room to."
            )
        seconds = result.seconds
        if seconds.get("steps"):
            tokens = result.steps_done * result.config.tokens_per_step
            parts = [f"steps {seconds['steps']:.0f} s ({tokens / seconds['steps']:,.0f} tok/s)"]
            if seconds.get("lstsq"):
                parts.append(f"least-squares start {seconds['lstsq']:.0f} s")
            if seconds.get("validation"):
                parts.append(f"validation {seconds['validation']:.0f} s")
            console.print("time: " + ", ".join(parts))


def summary_table(result) -> Table:
    """Validation KL per row of the trained lens and of the logit lens (bits), and their means."""
    from tunedlens.arch.points import row_label

    lens, tuned = result.lens, result.val_kl
    logit = result.logit_val_kl
    where = (
        f"exact, at {result.val_positions:,} held-out positions; " if result.val_positions else ""
    )
    table = Table(
        title="validation KL(model ‖ lens), bits",
        caption=f"{where}best step {result.best_step}; lower is better",
    )
    table.add_column("row", justify="right")
    table.add_column("tuned lens", justify="right")
    if logit is not None:
        table.add_column("logit lens", justify="right")
    for row, value in enumerate(tuned):
        cells = [row_label(lens.points, row, lens.n_blocks), f"{value * NATS_TO_BITS:.3f}"]
        if logit is not None:
            cells.append(f"{logit[row] * NATS_TO_BITS:.3f}")
        table.add_row(*cells)
    means = ["mean", f"{sum(tuned) / len(tuned) * NATS_TO_BITS:.3f}"]
    if logit is not None:
        means.append(f"{sum(logit) / len(logit) * NATS_TO_BITS:.3f}")
    table.add_section()
    table.add_row(*means, style="bold")
    return table


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
            RemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc) if self.task is not None else None

    def status(self, message: str) -> None:
        """Print a line above the bar (before it starts: on stderr)."""
        self.progress.console.print(message, highlight=False, markup=False)

    def start(self, total: int) -> None:
        """Begin the bar once the number of tokens is known."""
        self.progress.__enter__()
        self.task = self.progress.add_task("eval", total=total, began=time.monotonic())

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
    fresh = not out.exists() or (out.is_dir() and not any(out.iterdir()))
    try:
        yield
    except SystemExit as stop:  # a kill (SIGTERM): nothing to resume from is left behind
        if fresh and isinstance(stop.code, int) and stop.code > 128:
            if not any(out.glob(checkpoints)):
                shutil.rmtree(out, ignore_errors=True)
        raise
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
            if fresh:  # everything in it is this run's: the same command can run again
                shutil.rmtree(out, ignore_errors=True)
                message += f" {out} held only this run's files and is removed."
        typer.echo(message, err=True)
        raise SystemExit(130) from None
