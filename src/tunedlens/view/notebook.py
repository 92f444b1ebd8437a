"""``Lensed``: the notebook facade. Three lines from a model to the picture.

>>> from tunedlens import Lensed                                    # doctest: +SKIP
>>> tl = Lensed("demo")                                             # doctest: +SKIP
>>> tl.logit_lens("The capital of France is", top_k=3)              # doctest: +SKIP

Each method is a thin layer over the library, with its argument names and result shapes:
reading a prompt is :func:`tunedlens.predict_layers`, comparing two lenses one
:func:`tunedlens.readout`, loading :func:`tunedlens.load_lens`, training
:func:`tunedlens.train_lens` (options named as :class:`tunedlens.TrainConfig`'s fields) and
pictures a :class:`~tunedlens.PredictionTrajectory`.
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from tunedlens.arch.points import block_rows
from tunedlens.engine.core import name_lenses, readout
from tunedlens.engine.inputs import encode_prompt
from tunedlens.errors import InputError
from tunedlens.lenses.io.load import load_lens
from tunedlens.lenses.lens import Lens, LogitLens, TunedLens, kind_title
from tunedlens.predict import (
    LayerPrediction,
    TokenProb,
    check_position,
    check_top_k,
    layer_predictions,
    layer_rows,
    predict_layers,
    row_labels,
)
from tunedlens.view.tokens import format_token
from tunedlens.view.trajectory import PredictionTrajectory

# TrainConfig fields that need what Lensed.train_lens does not take (held-out data, a checkpoint
# directory, a timed probe run): refused rather than silently doing nothing.
_TRAIN_ELSEWHERE = ("val_every", "val_tokens", "patience", "checkpoint_every", "time_budget_s")


@dataclass(frozen=True)
class Comparison:
    """Two lenses' top predictions per row at one position, from one readout.

    ``columns`` maps a title (``"logit lens"``, ``"tuned lens"``, ``"Jacobian lens"``) to that
    lens's rows, in :func:`tunedlens.predict_layers`' shape.
    """

    position: int
    """The position read, counted from the start of the prompt."""
    columns: dict[str, list[LayerPrediction]]
    tokenizer: object = field(default=None, repr=False, compare=False)

    @property
    def rows(self) -> list[int]:
        """The rows read (``0..output_row``)."""
        return [row.row for row in next(iter(self.columns.values()))]

    @property
    def row_labels(self) -> list[str]:
        """The rows' labels: ``"0"``, ``"1"``, ... (``"3.mid"`` for a mid point), ``"output"``."""
        return [row.label for row in next(iter(self.columns.values()))]

    def _cells(self, show) -> list[tuple[str, list[str]]]:
        rows = zip(*self.columns.values(), strict=True)
        return [(row[0].label, [show(r.top) for r in row]) for row in rows]

    def _token(self, token: TokenProb) -> str:
        if self.tokenizer is None:
            return token.token
        return format_token(self.tokenizer, token.id, 20)

    def __str__(self) -> str:
        titles = "".join(f"{title:<28}" for title in self.columns)
        lines = [f"{'row':>6}  {titles}"]
        for layer, cells in self._cells(
            lambda top: ", ".join(f"{self._token(t)!r} {t.prob:.2f}" for t in top)
        ):
            lines.append(f"{layer!s:>6}  " + "".join(f"{cell:<28}" for cell in cells))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        def show(top: list[TokenProb]) -> str:
            return ", ".join(f"{html.escape(self._token(t))} {t.prob:.2f}" for t in top)

        body = "".join(
            f"<tr><td>{layer}</td>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
            for layer, cells in self._cells(show)
        )
        heads = "".join(f"<th>{html.escape(title)}</th>" for title in self.columns)
        return (
            f"<table><caption>position {self.position}</caption>"
            f"<tr><th>row</th>{heads}</tr>{body}</table>"
        )


class Lensed:
    """A model with its tokenizer, read through the logit lens and other lenses.

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
            raise InputError("pass the model's tokenizer too: Lensed(model, tokenizer)")
        self.model, self.tokenizer = model, tokenizer
        self.last_figure = None
        """The figure :meth:`plot` made last."""

    # ------------------------------------------------------------------ reading layers
    def logit_lens(
        self,
        prompt: str,
        *,
        layers: Sequence[int] | None = None,
        top_k: int = 1,
        position: int = -1,
        points: str = "block",
        final_norm=None,
        skip_norm: bool = False,
        plot: bool = False,
    ) -> list[LayerPrediction]:
        """Each layer's top-k next tokens at ``position`` through the logit lens.

        :func:`tunedlens.predict_layers` with ``LogitLens(model, points=..., final_norm=...,
        skip_norm=...)``: one :class:`~tunedlens.predict.LayerPrediction` per row, labelled
        ``0..L-1`` (``hidden_states[i]``; ``"3.mid"`` for ``points="mid"`` or ``"both"``) and
        ``"output"``, the model's own prediction, last.

        Args:
            prompt: The text.
            layers: Layers ``0..L-1`` to read (default all).
            top_k: Tokens per row.
            position: Token position (negative counts from the end).
            points: ``block``, ``mid`` (after attention, before the MLP) or ``both``.
            final_norm: Decode with this norm instead of the model's final norm.
            skip_norm: Decode without a final norm.
            plot: Also show the prompt's entropy heatmap inline (Jupyter only).
        """
        if plot:
            _require_notebook()
        lens = LogitLens(self.model, final_norm=final_norm, skip_norm=skip_norm, points=points)
        return self._predict(prompt, lens, layers, top_k, position, plot)

    def tuned_lens(
        self,
        prompt: str,
        lens: Lens | str | os.PathLike,
        *,
        layers: Sequence[int] | None = None,
        top_k: int = 1,
        position: int = -1,
        final_norm=None,
        skip_norm: bool = False,
        plot: bool = False,
    ) -> list[LayerPrediction]:
        """Like :meth:`logit_lens`, through another lens: an object or any lens location.

        ``final_norm`` and ``skip_norm`` apply when loading ``lens`` from a location.
        """
        if plot:
            _require_notebook()
        if not isinstance(lens, Lens):  # the prompt's checks first, then the load
            check_top_k(top_k)
            check_position(position, encode_prompt(self.tokenizer, prompt, self.model).shape[1])
        options = {"final_norm": final_norm} if final_norm is not None else {}
        if skip_norm:
            options["skip_norm"] = True
        lens = self.load_lens(lens, **options)  # a lens object with options is refused
        return self._predict(prompt, lens, layers, top_k, position, plot)

    def _predict(self, prompt, lens: Lens, layers, top_k, position, plot) -> list[LayerPrediction]:
        rows = predict_layers(
            self.model, self.tokenizer, prompt, lens, layers=layers, top_k=top_k, position=position
        )
        if plot:
            chosen = None if layers is None else block_rows(lens.points, layers)
            self.plot(self.trajectory(prompt, lens, layers=chosen))
        return rows

    def compare(
        self,
        prompt: str,
        lens: Lens | str | os.PathLike,
        *,
        position: int = -1,
        top_k: int = 1,
        layers: Sequence[int] | None = None,
    ) -> Comparison:
        """The logit lens beside ``lens`` (an object or a location), per row at ``position``.

        One :func:`tunedlens.readout` reads both lenses (the model runs once); the logit lens
        reads the points ``lens`` reads.
        """
        check_top_k(top_k)
        ids = encode_prompt(self.tokenizer, prompt, self.model)
        at = check_position(position, ids.shape[1])
        lens = lens if isinstance(lens, Lens) else self.load_lens(lens)
        rows = layer_rows(lens, layers)
        logit = LogitLens(self.model, points=lens.points)
        lenses = {"logit": logit, "other": lens}
        result = readout(self.model, lenses, ids, rows=rows, positions=at, stats=(), top_k=top_k)
        labels = row_labels(lens, rows)
        title = kind_title(lens.kind) + (" 2" if lens.kind == logit.kind else "")
        columns = {
            "logit lens": layer_predictions(result["logit"], rows, labels, self.tokenizer),
            title: layer_predictions(result["other"], rows, labels, self.tokenizer),
        }
        return Comparison(at, columns, self.tokenizer)

    # ------------------------------------------------------------------ pictures
    def trajectory(
        self, prompt: str, lens: Lens | None = None, *, layers: Sequence[int] | None = None
    ) -> PredictionTrajectory:
        """The prediction trajectory of ``prompt`` through ``lens`` (default: the logit lens)."""
        lens = lens or LogitLens(self.model)
        ids = encode_prompt(self.tokenizer, prompt, self.model)
        name = kind_title(lens.kind)
        return PredictionTrajectory.from_lens_and_model(
            lens, self.model, ids[0], tokenizer=self.tokenizer, layers=layers, name=name
        )

    def plot(self, trajectory: PredictionTrajectory, stats: Sequence[str] = ("entropy",)):
        """A plotly heatmap figure of ``trajectory``, returned; also shown inline in Jupyter."""
        from tunedlens.plot.trajectory_figures import figure

        self.last_figure = figure([trajectory.stat(s) for s in stats], title=trajectory.name)
        if _in_notebook():
            from IPython.display import display

            display(self.last_figure)
        return self.last_figure

    # ------------------------------------------------------------------ lenses
    def load_lens(self, location: str | os.PathLike, *, strict: bool = True, **options) -> Lens:
        """:func:`tunedlens.load_lens` for this model: a lens of any kind, from any location."""
        return load_lens(location, self.model, strict=strict, **options)

    # ------------------------------------------------------------------ uses
    def _lenses(self, lenses) -> dict[str, Lens]:
        """Lens objects or locations, named as :func:`tunedlens.readout` names them."""
        loaded = [lens if isinstance(lens, Lens) else self.load_lens(lens) for lens in lenses]
        return name_lenses(loaded)

    def _ids(self, data, seq_len: int) -> torch.Tensor:
        """Token ids ``(n, seq)`` as given, or texts packed into sequences of ``seq_len``."""
        if isinstance(data, torch.Tensor):
            return data
        return self._training_blocks(data, seq_len, 0)

    def prune(
        self, calibration, test, *, lenses=(), max_remove: int = 4, seq_len: int = 256, **options
    ):
        """Which blocks can go (:func:`tunedlens.analyze.prune`), on this model.

        Args:
            calibration: Token ids ``(n, seq)`` or texts (packed into ``seq_len`` tokens) that
                the cheap scores are computed on.
            test: Held-out token ids or texts, where every removal is measured.
            lenses: Lens objects or locations read beside the logit lens.
            max_remove: ``K``: the curves run over ``k = 0..K`` removed blocks.
            seq_len: Tokens per sequence when texts are given.
            **options: Further arguments of :func:`tunedlens.analyze.prune`.

        Returns:
            A :class:`tunedlens.analyze.PruneReport` (``.save(out)`` writes it).
        """
        from tunedlens.analyze import prune

        return prune(
            self.model,
            self._ids(calibration, seq_len),
            test_ids=self._ids(test, seq_len),
            lenses=self._lenses(lenses),
            max_remove=max_remove,
            **options,
        )

    def early_exit(self, data, *, lenses=(), seq_len: int = 256, generate: int = 0, **options):
        """How much compute early exit through each lens saves (:func:`tunedlens.analyze.early_exit`).

        Args:
            data: Token ids ``(n, seq)`` or texts (packed into ``seq_len`` tokens); half the
                sequences calibrate the thresholds, the other half test them.
            lenses: Lens objects or locations read beside the logit lens.
            seq_len: Tokens per sequence when texts are given.
            generate: New tokens per prompt of real early-exit greedy decoding (0: none); uses
                this facade's tokenizer.
            **options: Further arguments of :func:`tunedlens.analyze.early_exit` (``measures``,
                ``thresholds``, ``check_every``, ``check_rows``, ``deltas``, ...).

        Returns:
            A :class:`tunedlens.analyze.EarlyExitReport` (``.save(out)`` writes it,
            ``.summary()`` is its table).
        """
        from tunedlens.analyze import early_exit

        if generate and self.tokenizer is None and "tokenizer" not in options:
            raise InputError("generate decodes prompts into text; pass a tokenizer to Lensed(...)")
        options.setdefault("tokenizer", self.tokenizer)
        return early_exit(
            self.model,
            self._lenses(lenses),
            self._ids(data, seq_len),
            generate=generate,
            **options,
        )

    def detect(self, task="capitals", *, lenses=(), **options):
        """Tell injected prompts from normal ones (:func:`tunedlens.analyze.detect`).

        Args:
            task: ``"capitals"``, ``"sentiment"``, ``"arithmetic"``, a task file, or a list.
            lenses: Lens objects or locations read beside the logit lens.
            **options: Further arguments of :func:`tunedlens.analyze.detect` (``shots``,
                ``features``, ``detectors``, ``seed``, ...).

        Returns:
            A :class:`tunedlens.analyze.DetectReport` (``.save(out)`` writes it).
        """
        from tunedlens.analyze import detect

        if self.tokenizer is None:
            raise InputError("detect turns prompts into tokens; pass a tokenizer to Lensed(...)")
        return detect(self.model, self.tokenizer, self._lenses(lenses), task, **options)

    def train_lens(
        self,
        data: Sequence[str] | str,
        *,
        recipe: str = "paper",
        save_path: str | os.PathLike | None = None,
        verbose: bool = True,
        callback: Callable | None = None,
        **options,
    ) -> TunedLens:
        """Train a tuned lens of this model on ``data`` with :func:`tunedlens.train_lens`.

        Options are :class:`tunedlens.TrainConfig`'s fields (the ``tunedlens train`` options),
        applied to ``recipe`` by :func:`tunedlens.recipe_config`. Sized for small data, the
        texts are recycled to fill the budget, and where not given:

        - ``seq_len``: the recipe's (512) or the model's context if shorter, or all the
          texts' tokens when they are fewer;
        - ``batch_size``: the recipe's (8), or the number of sequences when they are fewer;
        - ``tokens_per_step``: one batch, ``batch_size * seq_len``;
        - ``tokens``: as many optimizer steps as the recipe takes (250 for ``paper``).

        Args:
            data: Texts (a list of strings) or a data spec (file, directory, ``stdlib``).
            recipe: ``paper`` (the reference's Nesterov SGD, ``lr`` 0.1 = 1.0 x (1 - momentum),
                linear decay, clip 1.0), ``default`` (the CLI's) or ``lowrank``.
            save_path: Where to save the lens (native format), if given.
            verbose: Show a progress bar with the loss.
            callback: Called with each step's :class:`~tunedlens.train.loop.StepStats`.
            **options: TrainConfig fields, e.g. ``tokens``, ``lr``, ``seq_len``, ``batch_size``,
                ``momentum``, ``grad_clip``, ``translator``, ``seed``.

        Returns:
            The trained :class:`TunedLens`.
        """
        from tunedlens.train.config import TrainConfig, recipe_config
        from tunedlens.train.loop import train_lens

        known = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(
                f"{', '.join(unknown)}: not a TrainConfig field; Lensed.train_lens takes "
                "TrainConfig's option names (tokens, lr, seq_len, batch_size, grad_clip, ...)"
            )
        elsewhere = sorted(set(options) & set(_TRAIN_ELSEWHERE))
        if elsewhere:
            raise InputError(
                f"{', '.join(elsewhere)} need held-out data, checkpoints or a time budget, which "
                "Lensed.train_lens does not take; use tunedlens.train_lens(lens, model, data, "
                "config, val_data=..., checkpoint_dir=...) or `tunedlens train`"
            )
        base = recipe_config(recipe)
        sizes = ("seq_len", "batch_size", "tokens_per_step", "tokens")
        sized = {name: options.pop(name, None) for name in sizes}
        context = self._context()
        if sized["seq_len"] is not None and context is not None and sized["seq_len"] > context:
            raise InputError(
                f"seq_len={sized['seq_len']} is longer than the model's context of {context} "
                f"tokens; pass seq_len={context} or less"
            )
        max_seq_len = sized["seq_len"] or min(base.seq_len, context or base.seq_len)
        seed = options.get("seed", base.seed)
        blocks = self._training_blocks(data, max_seq_len, seed)
        n_blocks, seq_len = blocks.shape
        if sized["seq_len"] is not None and seq_len < sized["seq_len"]:
            raise InputError(
                f"the texts hold {seq_len} tokens, fewer than seq_len={sized['seq_len']}; pass "
                "more text or a smaller seq_len"
            )
        batch = sized["batch_size"] or min(base.batch_size, n_blocks)
        per_step = sized["tokens_per_step"] or batch * seq_len
        tokens = sized["tokens"] or base.tokens // base.tokens_per_step * per_step
        config = recipe_config(
            recipe,
            explicit={
                **options,
                "seq_len": seq_len,
                "batch_size": batch,
                "tokens_per_step": per_step,
                "tokens": tokens,
            },
        )
        steps = config.tokens // config.tokens_per_step
        needed = steps * config.tokens_per_step // seq_len
        train_data = blocks.repeat(-(-needed // n_blocks), 1)[:needed]
        lens = config.new_lens(self.model)
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train", unit="step", disable=not verbose)

        def on_step(stats):
            bar.update(stats.step - bar.n)
            bar.set_postfix(loss=f"{stats.loss:.4f} nats")
            if callback is not None:
                callback(stats)

        with bar:
            result = train_lens(lens, self.model, train_data, config, on_step=on_step)
        if save_path is not None:
            result.lens.save(save_path)
        return result.lens

    def _context(self) -> int | None:
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return getattr(text, "max_position_embeddings", None)

    def _training_blocks(self, data, max_seq_len: int, seed: int) -> torch.Tensor:
        from tunedlens.data import pack_blocks, pack_texts

        if isinstance(data, str):
            return pack_blocks(
                data, self.tokenizer, seq_len=max_seq_len, n_sequences=8, seed=seed
            ).tokens
        return pack_texts(data, self.tokenizer, max_seq_len=max_seq_len).tokens


def _in_notebook() -> bool:
    """Whether this runs in Jupyter or IPython, where figures show inline."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def _require_notebook() -> None:
    if not _in_notebook():
        raise InputError(
            "plot=True shows the figure inline in Jupyter, and this is not a Jupyter or IPython "
            "session; make the figure with Lensed.plot(Lensed.trajectory(prompt, lens)), or "
            "save it with Lensed.trajectory(prompt, lens).plot(path='figure.html')"
        )
