"""``Lensed``: the notebook facade. Three lines from a model to the picture.

>>> from tunedlens import Lensed                                    # doctest: +SKIP
>>> tl = Lensed("demo")                                             # doctest: +SKIP
>>> tl.logit_lens("The capital of France is", top_k=3, position=-1)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tunedlens.arch.points import block_rows
from tunedlens.engine.core import readout
from tunedlens.engine.inputs import encode_prompt
from tunedlens.lenses.io.load import load_lens
from tunedlens.lenses.lens import Lens, LogitLens, TunedLens
from tunedlens.view.tokens import format_token
from tunedlens.view.trajectory import PredictionTrajectory

Prediction = tuple[int, float, str]


@dataclass(frozen=True)
class Comparison:
    """Top predictions per layer of the logit lens and a tuned lens at one position."""

    position: int
    rows: list[dict]

    def __str__(self) -> str:
        lines = [f"{'layer':>6}  {'logit lens':<28}{'tuned lens':<28}"]
        for row in self.rows:
            logit = ", ".join(f"{t!r} {p:.2f}" for t, p in row["logit"])
            tuned = ", ".join(f"{t!r} {p:.2f}" for t, p in row["tuned"])
            lines.append(f"{row['layer']!s:>6}  {logit:<28}{tuned:<28}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><td>{r['layer']}</td><td>{_html(r['logit'])}</td><td>{_html(r['tuned'])}</td></tr>"
            for r in self.rows
        )
        return (
            f"<table><caption>position {self.position}</caption><tr><th>layer</th>"
            f"<th>logit lens</th><th>tuned lens</th></tr>{cells}</table>"
        )


def _html(predictions) -> str:
    import html

    return ", ".join(f"{html.escape(t)} {p:.2f}" for t, p in predictions)


class Lensed:
    """A model with its tokenizer, read through the logit lens and tuned lenses.

    Args:
        model: A loaded causal LM, or anything :func:`tunedlens.load_model` accepts (hub id,
            directory, ``.gguf``, ``"demo"``).
        tokenizer: The tokenizer (required with a model object).
        dtype: With a spec, the dtype to load in.
    """

    def __init__(self, model, tokenizer=None, *, dtype: str = "float32"):
        if isinstance(model, (str, os.PathLike)):
            from tunedlens.models import load_model

            model, tokenizer = load_model(str(model), dtype=dtype)
        elif tokenizer is None:
            raise ValueError("pass the model's tokenizer too: Lensed(model, tokenizer)")
        self.model, self.tokenizer = model, tokenizer
        self.last_figure = None

    # ------------------------------------------------------------------ reading layers
    def logit_lens(self, prompt: str, layers: Sequence[int] | None = None, top_k: int = 1,
                   position: int | None = None, plot: bool = False, final_norm=None,
                   skip_norm: bool = False, points: str = "block") -> dict[int, list[list[Prediction]]]:  # fmt: skip
        """Top-k predictions of the logit lens per layer and position.

        Returns ``{row: [[(token_id, prob, token_str), ... top_k] per position]}``; the last
        row (``L``) is the model's own output. ``position`` (e.g. ``-1``) keeps one position.
        ``points="mid"`` reads each block after attention, before the MLP; ``"both"`` interleaves
        the two (``layers`` then select blocks; row ``2L`` is the output). Name a row with
        ``tunedlens.arch.points.row_label(points, row, n_blocks)`` (``"3.mid"``).
        """
        lens = LogitLens(self.model, final_norm=final_norm, skip_norm=skip_norm, points=points)
        return self._read(lens, prompt, layers, top_k, position, plot)

    def tuned_lens(self, prompt: str, lens: TunedLens | str | os.PathLike,
                   layers: Sequence[int] | None = None, top_k: int = 1,
                   position: int | None = None, plot: bool = False, final_norm=None,
                   skip_norm: bool = False) -> dict[int, list[list[Prediction]]]:  # fmt: skip
        """Like :meth:`logit_lens`, through another lens (an object or any lens location)."""
        if not isinstance(lens, Lens):
            options = {"final_norm": final_norm, "skip_norm": skip_norm} if final_norm or skip_norm else {}
            lens = load_lens(lens, self.model, **options)
        return self._read(lens, prompt, layers, top_k, position, plot)

    def _read(self, lens: Lens, prompt, layers, top_k, position, plot):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        ids = encode_prompt(self.tokenizer, prompt, self.model)
        if position is not None:
            self._position(position, ids.shape[1])
        chosen = range(lens.output_row) if layers is None else block_rows(lens.points, layers)
        rows = [*chosen, lens.output_row]
        result = readout(self.model, {"lens": lens}, ids, rows=rows, positions=position,
                         stats=(), top_k=top_k)["lens"]  # fmt: skip
        out = {}
        for index, row in enumerate(rows):
            cells = zip(result.top_ids[0, index].tolist(), result.top_probs[0, index].tolist(),
                        strict=True)  # fmt: skip
            out[row] = [[(i, p, self.tokenizer.decode([i])) for i, p in zip(top, probs, strict=True)]
                        for top, probs in cells]  # fmt: skip
        if plot:
            self.plot(self.trajectory(prompt, lens, layers=None if layers is None else block_rows(lens.points, layers)))
        return out

    @staticmethod
    def _position(position: int, length: int) -> int:
        if not -length <= position < length:
            raise IndexError(f"position {position} is outside the prompt's {length} tokens")
        return position % length

    def trajectory(self, prompt: str, lens: Lens | None = None, *,
                   layers: Sequence[int] | None = None) -> PredictionTrajectory:  # fmt: skip
        """The prediction trajectory of ``prompt`` through ``lens`` (default: the logit lens)."""
        lens = lens or LogitLens(self.model)
        ids = encode_prompt(self.tokenizer, prompt, self.model)
        name = f"{lens.kind} lens"
        return PredictionTrajectory.from_lens_and_model(
            lens, self.model, ids[0], tokenizer=self.tokenizer, layers=layers, name=name
        )

    def plot(self, trajectory: PredictionTrajectory, stats: Sequence[str] = ("entropy",)):
        """A plotly heatmap figure of ``trajectory``; shown inline in Jupyter."""
        from tunedlens.plot.trajectory_figures import figure

        self.last_figure = figure([trajectory.stat(s) for s in stats], title=trajectory.name)
        try:
            from IPython import get_ipython

            if get_ipython() is not None:
                from IPython.display import display

                display(self.last_figure)
        except ImportError:
            pass
        return self.last_figure

    def compare(self, prompt: str, lens: TunedLens | str | os.PathLike, *, position: int = -1,
                top_k: int = 1, layers: Sequence[int] | None = None) -> Comparison:  # fmt: skip
        """Logit-lens vs tuned-lens top predictions per layer at ``position``."""
        logit = self.logit_lens(prompt, layers=layers, top_k=top_k, position=position)
        tuned = self.tuned_lens(prompt, lens, layers=layers, top_k=top_k, position=position)
        length = encode_prompt(self.tokenizer, prompt, self.model).shape[1]
        rows = [
            {
                "layer": layer,
                "logit": [(format_token(self.tokenizer, i, 20), p) for i, p, _ in logit[layer][0]],
                "tuned": [(format_token(self.tokenizer, i, 20), p) for i, p, _ in tuned[layer][0]],
            }
            for layer in logit
        ]
        return Comparison(self._position(position, length), rows)

    # ------------------------------------------------------------------ tuned lenses
    def load_tuned_lens(self, path: str | os.PathLike, *, strict: bool = True) -> Lens:
        """Load a lens (any kind and source :func:`tunedlens.load_lens` knows) for this model."""
        return load_lens(path, self.model, strict=strict)

    def train_tuned_lens(self, dataset: Sequence[str] | str, num_steps: int = 250,
                         learning_rate: float = 1.0, momentum: float = 0.9, max_seq_len: int = 512,
                         gradient_clip: float = 1.0, save_path: str | os.PathLike | None = None,
                         verbose: bool = True, callback: Callable | None = None,
                         batch_size: int = 8, seed: int = 0) -> TunedLens:  # fmt: skip
        """Train a tuned lens the way the paper does (Nesterov SGD, linear decay, clipping).

        Args:
            dataset: Texts (a list of strings) or a data spec (file, directory, ``stdlib``).
            num_steps: Optimizer steps; each sees ``batch_size`` sequences (recycled if the
                texts are fewer).
            learning_rate: As the reference counts it: the step is ``lr · (1 − momentum)``.
            momentum: Nesterov momentum.
            max_seq_len: Tokens per sequence (shorter when the texts are short).
            gradient_clip: Gradient norm clip.
            save_path: Where to save the lens (native format), if given.
            verbose: Show a progress bar with the loss.
            callback: Called with each step's :class:`~tunedlens.train.loop.StepStats`.
            batch_size: Sequences per step.
            seed: Seeds the data order.

        Returns:
            The trained :class:`TunedLens`.
        """
        from tunedlens.train.config import recipe_config
        from tunedlens.train.loop import train_lens

        blocks = self._training_blocks(dataset, max_seq_len, seed)
        seq_len = blocks.shape[1]
        batch = min(batch_size, blocks.shape[0])
        total = num_steps * batch
        data = blocks.repeat(-(-total // blocks.shape[0]), 1)[:total]
        config = recipe_config("paper", lr=learning_rate * (1 - momentum), momentum=momentum,
                               grad_clip=gradient_clip, seq_len=seq_len, batch_size=batch,
                               tokens_per_step=batch * seq_len, tokens=total * seq_len, seed=seed)  # fmt: skip
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, desc="train", unit="step", disable=not verbose)

        def on_step(stats):
            bar.update(stats.step - bar.n)
            bar.set_postfix(loss=f"{stats.loss:.4f} nats")
            if callback is not None:
                callback(stats)

        lens = TunedLens.from_model(self.model)
        with bar:
            result = train_lens(lens, self.model, data, config, on_step=on_step)
        if save_path is not None:
            result.lens.save(save_path)
        return result.lens

    def _training_blocks(self, dataset, max_seq_len: int, seed: int) -> torch.Tensor:
        from tunedlens.data import pack_blocks, pack_texts

        if isinstance(dataset, str):
            return pack_blocks(dataset, self.tokenizer, seq_len=max_seq_len, n_sequences=8,
                               seed=seed).tokens  # fmt: skip
        return pack_texts(dataset, self.tokenizer, max_seq_len=max_seq_len).tokens
