"""What the web explorer computes: readouts and comparisons as JSON-ready views, one at a time.

A :class:`ServeSession` holds one model, its tokenizer and the lenses given on the command line
(the browser can only name them, never give paths). Requests are serialised on the model: one
runs, up to ``queue`` wait, more are refused as busy. Every number comes from
:func:`tunedlens.readout`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from tunedlens.arch.points import block_rows, parse_point, row_label
from tunedlens.arch.residuals import collect_residuals
from tunedlens.engine.core import divergences, readout
from tunedlens.engine.inputs import encode_prompt
from tunedlens.engine.stats import PAIR_STATS, STAT_NAMES, STATS, VIEW_STATS, check_stats
from tunedlens.errors import InputError, TunedLensError
from tunedlens.lenses.lens import Lens
from tunedlens.serialize import json_safe
from tunedlens.view.tokens import format_token

TOP_K = 10
DEFAULT_WINDOW = 64
"""Positions shown by default: the last ones of a long prompt."""


SERVE_STATS: tuple[str, ...] = (*VIEW_STATS, *(n for n in STAT_NAMES if n not in VIEW_STATS))
"""Every statistic of :data:`~tunedlens.engine.stats.STATS`: the page offers, the API takes."""


class Busy(TunedLensError):
    """Too many requests are waiting for the model."""


class BadRequest(InputError):
    """A request the explorer cannot answer, with the reason."""


@dataclass
class ServeSession:
    """The model, tokenizer and named lenses behind one explorer, with its request queue."""

    model: nn.Module
    tokenizer: object
    lenses: dict[str, Lens]
    model_name: str
    evals: dict[str, dict] = field(default_factory=dict)
    """Lens name -> its ``metrics.json`` entry (per-layer KL, gates), from ``--eval``."""
    max_tokens: int = 512
    queue: int = 4
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _count: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _waiting: int = 0
    _running: bool = False

    @property
    def busy(self) -> bool:
        """Whether a request is being computed now."""
        return self._running

    @contextmanager
    def turn(self):
        """Wait for the model (one request at a time); :class:`Busy` when the line is full."""
        with self._count:
            if self._waiting > self.queue:  # one running plus `queue` waiting
                raise Busy(
                    f"the server is busy: {self._waiting} requests are already waiting for the "
                    "model; try again in a moment."
                )
            self._waiting += 1
        try:
            with self._lock:
                self._running = True
                try:
                    yield
                finally:
                    self._running = False
        finally:
            with self._count:
                self._waiting -= 1

    # ------------------------------------------------------------------------------ info
    def describe(self) -> dict:
        """Model, lenses (kind, source, evaluation), statistics and limits, for the page."""
        first = next(iter(self.lenses.values()))
        return {
            "model": self.model_name,
            "n_blocks": first.n_blocks,
            "points": first.points,
            "max_tokens": self.max_tokens,
            "default_window": DEFAULT_WINDOW,
            "lenses": [
                {
                    "name": name,
                    "kind": lens.kind,
                    "source": lens.source or name,
                    "eval": self.evals.get(name),
                }
                for name, lens in self.lenses.items()
            ],
            "stats": [
                {"name": name, "title": STATS[name].title, "units": STATS[name].units}
                for name in SERVE_STATS
            ],
        }

    # ------------------------------------------------------------------------------ views
    def encode(self, prompt: str, what: str = "prompt") -> torch.Tensor:
        """Token ids ``(1, seq)`` of a prompt within the length limit, or :class:`BadRequest`."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest(f"the {what} is empty; type some text to look at.")
        ids = encode_prompt(self.tokenizer, prompt, self.model)
        if ids.shape[1] > self.max_tokens:
            raise BadRequest(
                f"the {what} is {ids.shape[1]} tokens long; the limit is {self.max_tokens} "
                "(tunedlens serve --max-tokens)."
            )
        return ids

    def _chosen(self, names) -> dict[str, Lens]:
        names = list(names or ["logit"])
        if not 1 <= len(names) <= 2:
            raise BadRequest("choose one lens, or two to show side by side")
        unknown = [name for name in names if name not in self.lenses]
        if unknown:
            raise BadRequest(
                f"unknown lens {unknown[0]!r}; this server has {', '.join(self.lenses)}"
            )
        return {name: self.lenses[name] for name in names}

    def _rows(self, stride: int) -> list[int]:
        lens = next(iter(self.lenses.values()))
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise BadRequest(f"the layer stride must be an integer >= 1, got {stride!r}")
        blocks = sorted(set(range(0, lens.n_blocks, stride)) | {lens.n_blocks - 1})
        return [*block_rows(lens.points, blocks), lens.output_row]

    def _positions(self, ids: torch.Tensor, window: int | None) -> list[int]:
        length = ids.shape[1]
        window = DEFAULT_WINDOW if window is None else window
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise BadRequest(f"the window must be an integer >= 1, got {window!r}")
        return list(range(max(0, length - window), length))

    def _token_id(self, token) -> int | None:
        if token in (None, ""):
            return None
        if isinstance(token, int) and not isinstance(token, bool):
            if not 0 <= token < next(iter(self.lenses.values())).unembed.vocab_size:
                raise BadRequest(f"token id {token} is outside the vocabulary")
            return token
        ids = self.tokenizer(str(token), add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise BadRequest(
                f"{token!r} is {len(ids)} tokens for this tokenizer; choose a single token "
                "(mind the leading space, e.g. ' Paris')"
            )
        return ids[0]

    def read(
        self,
        prompt: str,
        lenses=None,
        stat: str = "entropy",
        stride: int = 1,
        window: int | None = None,
        token=None,
    ) -> dict:
        """The heatmap view: per lens, each row's value, top-1 label and top-10 at each position.

        ``token`` (text or id) makes ``rank`` and the sparkline refer to that token instead of
        each position's next token.
        """
        check_stats(stat, SERVE_STATS)
        chosen = self._chosen(lenses)
        rows = self._rows(stride)
        token_id = self._token_id(token)
        ids = self.encode(prompt)
        positions = self._positions(ids, window)
        with self.turn():
            result = readout(
                self.model,
                chosen,
                ids,
                rows=rows,
                positions=positions,
                stats=(stat,),
                top_k=1,
                tokens=None if token_id is None else [token_id],
            )
        info = STATS[stat]
        labels = [format_token(self.tokenizer, int(t)) for t in ids[0].tolist()]
        view = {
            "tokens": [labels[p] for p in positions],
            "token_ids": [int(ids[0, p]) for p in positions],
            "positions": positions,
            "truncated": positions[0] > 0,
            "length": ids.shape[1],
            "rows": result.row_labels,
            "stat": {
                "name": stat,
                "title": info.title,
                "units": info.units,
                "vmin": info.vmin,
                "vmax": info.vmax,
            },
            "token": None
            if token_id is None
            else {"id": token_id, "text": format_token(self.tokenizer, token_id)},
            "lenses": {},
        }
        for name, lens in chosen.items():
            grids = result[name]
            values = grids[stat][0].double() * info.scale
            if token_id is not None and stat == "rank":
                values = grids.token_ranks[0, ..., 0].double()
            if token_id is not None and stat == "prob":
                values = grids.token_probs[0, ..., 0].double()
            view["lenses"][name] = {
                "kind": lens.kind,
                "source": lens.source or name,
                "values": _finite(values),
                "top1": [
                    [format_token(self.tokenizer, int(i)) for i in row]
                    for row in grids.top_ids[0, ..., 0]
                ],
                "top1_ids": grids.top_ids[0, ..., 0].tolist(),
                "top1_prob": _finite(grids.top_probs[0, ..., 0]),
                "token_probs": None if token_id is None else _finite(grids.token_probs[0, ..., 0]),
            }
        return view

    def cell(self, prompt: str, lens: str, row: str, position: int) -> dict:
        """One cell's top-10, and its top token's probability across the rows (the sparkline)."""
        chosen = self._chosen([lens])
        ids = self.encode(prompt)
        if (
            isinstance(position, bool)
            or not isinstance(position, int)
            or not 0 <= position < ids.shape[1]
        ):
            raise BadRequest(f"position {position!r} is outside the prompt's {ids.shape[1]} tokens")
        points, n_blocks = chosen[lens].points, chosen[lens].n_blocks
        try:
            index = parse_point(row, points, n_blocks)
        except IndexError as error:
            raise BadRequest(str(error)) from None
        labels = [row_label(points, r, n_blocks) for r in range(chosen[lens].output_row + 1)]
        with self.turn():
            states = collect_residuals(
                self.model,
                ids.to(chosen[lens].unembed.device),
                arch=chosen[lens].unembed.arch,
                with_logits=False,
                points=chosen[lens].points,
            )
            top = readout(
                None,
                chosen,
                ids,
                states=states,
                rows=[index],
                positions=[position],
                stats=(),
                top_k=TOP_K,
            )[lens]
            token_id = int(top.top_ids[0, 0, 0, 0])
            trace = readout(
                None,
                chosen,
                ids,
                states=states,
                positions=[position],
                stats=(),
                top_k=0,
                tokens=[token_id],
            )[lens]
        entries = zip(top.top_ids[0, 0, 0].tolist(), top.top_probs[0, 0, 0].tolist(), strict=True)
        return {
            "row": row,
            "position": position,
            "top": [
                {"id": i, "token": format_token(self.tokenizer, i), "prob": p} for i, p in entries
            ],
            "token": format_token(self.tokenizer, token_id),
            "token_id": token_id,
            "rows": labels,
            "probs": _finite(trace.token_probs[0, :, 0, 0]),
        }

    def compare(self, prompt: str, other: str, lens: str = "logit", stride: int = 1) -> dict:
        """Jensen–Shannon divergence per cell between two prompts of equal token length."""
        chosen = self._chosen([lens])
        rows = self._rows(stride)
        first, second = self.encode(prompt), self.encode(other, "second prompt")
        if first.shape != second.shape:
            raise BadRequest(
                f"the two prompts must have the same number of tokens to compare position by "
                f"position: {first.shape[1]} vs {second.shape[1]}"
            )
        with self.turn():
            results = [
                readout(self.model, chosen, ids, rows=rows, stats=(), top_k=1, keep_inputs=True)
                for ids in (first, second)
            ]
            js = divergences(*results)["js"][0].double() * PAIR_STATS["js"].scale
        tops = [
            [
                [format_token(self.tokenizer, int(t)) for t in row]
                for row in r[lens].top_ids[0, ..., 0]
            ]
            for r in results
        ]
        labels = [
            [a if a == b else f"{a}/{b}" for a, b in zip(ra, rb, strict=True)]
            for ra, rb in zip(*tops, strict=True)
        ]
        return {
            "tokens": [format_token(self.tokenizer, int(t)) for t in first[0].tolist()],
            "token_ids": first[0].tolist(),
            "other_tokens": [format_token(self.tokenizer, int(t)) for t in second[0].tolist()],
            "other_token_ids": second[0].tolist(),
            "rows": results[0].row_labels,
            "values": _finite(js),
            "labels": labels,
            "stat": {
                "name": "js",
                "title": PAIR_STATS["js"].title,
                "units": "bits",
                "vmin": 0.0,
                "vmax": 1.0,
            },
            "lens": lens,
        }


def _finite(values: torch.Tensor) -> list:
    """Nested lists with NaN and infinities as None (valid JSON)."""
    return json_safe(values.double().tolist())
