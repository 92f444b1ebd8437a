"""Greedy decoding with a real early exit per token, against the full model in the same process.

The model's own forward pass runs one token at a time with its KV cache; every decoder block's
``forward`` is wrapped for the duration. At each row of the schedule the lens reads the newest
position and the confidence measure decides; once a token exits at row ``r`` the remaining
blocks ``r..L-1`` do not run. Instead (CALM's state propagation) each skipped block receives the
copied exit state, and only its key and value projections run, so later tokens can attend to
this position at every layer:

- ``kv-only`` (attention with ``input_layernorm``, ``k_proj``, ``v_proj``, rotary embeddings,
  an optional ``k_norm``: the Llama family and its relatives): the block's input norm of the copied
  state, the K and V projections, rotary embedding of K, written into the cache. The path is
  verified once per model against what the block's own attention writes into the cache; a
  family it does not reproduce falls back to
- ``full-block``: the whole skipped block runs on the copied state (which writes exactly the
  K/V it would) and its output is discarded. Correct, but it saves no time: the report says which.

The first token of the prompt's continuation is predicted from the last prompt position, which
is therefore run as a step of its own (the rest of the prompt is one prefill), so every new
token can exit. After the last block the forward pass is stopped before the model's head; the
token is the exit reading, or the model's head on the last block's output.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tunedlens.analyze.compute import compute_model, lens_macs
from tunedlens.analyze.errors import AnalysisError
from tunedlens.analyze.exit_rules import MEASURES, check_costs, check_schedule, token_costs
from tunedlens.arch.residuals import block_input, block_output, token_ids
from tunedlens.lenses.lens import Lens
from tunedlens.metrics.divergence import NATS_TO_BITS


@dataclass
class ExitGeneration:
    """One prompt's greedy continuation with early exit."""

    prompt: list[int]
    tokens: list[int]
    """The new tokens."""
    exit_rows: list[int]
    """Per new token, the row it exited at (``L``: it ran every block)."""
    macs: list[float]
    """Per new token, the MACs counted as in the teacher-forced analysis."""
    full_macs: list[float]
    """Per new token, the MACs of the full model at the same context."""
    seconds: float
    """Wall time of the whole call, prefill included."""
    propagation: str
    """``kv-only``, ``full-block`` (see the module), or ``none`` (no exit)."""


class _Stop(Exception):
    """Raised after the last block: the head of the model is not needed."""


def _new_cache(model: nn.Module):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def _cached(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


def _cache_of(kwargs: dict):
    for name in ("cache", "past_key_values", "past_key_value", "layer_past"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _kv_only(
    block: nn.Module, state: torch.Tensor, kwargs: dict
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The keys and values ``block``'s attention would cache for ``state``, or None if unknown."""
    attention = getattr(block, "self_attn", None)
    embeddings = kwargs.get("position_embeddings")
    if attention is None or not all(
        hasattr(attention, n) for n in ("k_proj", "v_proj", "head_dim")
    ):
        return None
    if not isinstance(embeddings, tuple) or len(embeddings) != 2:
        return None
    norm = getattr(block, "input_layernorm", None)
    normed = state if norm is None else norm(state)
    shape = (*state.shape[:-1], -1, attention.head_dim)
    keys = attention.k_proj(normed)
    k_norm = getattr(attention, "k_norm", None)
    if (
        k_norm is not None
        and getattr(k_norm, "weight", None) is not None
        and k_norm.weight.shape[0] != attention.head_dim
    ):
        keys = k_norm(keys)  # normalises the whole projection (OLMo 2)
        k_norm = None
    keys = keys.view(shape)
    if k_norm is not None:
        keys = k_norm(keys)  # per head (Qwen 3, Gemma 3)
    keys = keys.transpose(1, 2)
    values = attention.v_proj(normed).view(shape).transpose(1, 2)
    cos, sin = embeddings
    if cos.shape[-1] != keys.shape[-1]:
        return None  # partial rotary: not this path
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return keys * cos + _rotate_half(keys) * sin, values


class _Driver:
    """Wraps every block's forward of one model for exit decisions and state propagation."""

    def __init__(
        self,
        model: nn.Module,
        lens: Lens,
        measure: str | None,
        threshold: float | None,
        schedule: np.ndarray,
    ):
        self.model, self.lens = model, lens
        self.arch = lens.unembed.arch
        self.n_blocks = self.arch.n_blocks
        self.measure = MEASURES[measure] if measure is not None else None
        self.threshold = threshold
        self.schedule = set(schedule.tolist()) if measure is not None else set()
        self.cache_arg = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )
        self.active = False
        self.tuple_output: int | None = None
        self.kv_only = True
        self.verified = False
        self._originals: list = []

    def __enter__(self):
        for index, block in enumerate(self.arch.layers):
            original = block.forward
            self._originals.append(original)
            block.forward = self._wrap(index, block, original)
        return self

    def __exit__(self, *exc):
        for block in self.arch.layers:
            del block.forward  # the class's forward again
        self._originals.clear()

    # --- one token ---------------------------------------------------------------------------

    def start_token(self) -> None:
        self.exited, self.exit_row, self.token = False, self.n_blocks, None
        self.exit_state = self.previous = None
        self.last_top1, self.patience, self.last_probs, self.last_probs_row = None, 0, None, -1

    def _wrap(self, index: int, block: nn.Module, original):
        def forward(*args, **kwargs):
            if not self.active:
                output = original(*args, **kwargs)
                self._record(index, block, args, kwargs, output)
                return output
            hidden = block_input(args, kwargs)
            if not self.exited:
                if index in self.schedule:
                    self._check(index, hidden[:, -1])
                self.previous = hidden[:, -1]
            if self.exited:
                self._propagate(index, block, original, args, kwargs)
                output = self._as_output(self.exit_state)
            else:
                output = original(*args, **kwargs)
            if index == self.n_blocks - 1:
                if not self.exited:
                    self.final = block_output(output)[:, -1]
                raise _Stop
            return output

        return forward

    def _record(self, index, block, args, kwargs, output) -> None:
        """In the prefill: the blocks' output format, and whether the K/V-only path is exact."""
        self.tuple_output = len(output) if isinstance(output, tuple) else None
        if self.verified or not self.kv_only:
            return
        cache = _cache_of(kwargs)
        try:
            computed = (
                _kv_only(block, block_input(args, kwargs), kwargs) if cache is not None else None
            )
        except (RuntimeError, ValueError, TypeError, AttributeError):  # another family's attention
            computed = None
        if computed is None:
            self.kv_only = False
            return
        keys, values = _cached(cache, index)
        length = computed[0].shape[-2]
        scale = 1e-4 * (1 + float(keys.abs().max()) + float(values.abs().max()))
        if (
            keys.shape[-2] < length
            or (keys[..., -length:, :] - computed[0]).abs().max() > scale
            or (values[..., -length:, :] - computed[1]).abs().max() > scale
        ):
            self.kv_only = False
        if index == self.n_blocks - 1:
            self.verified = True

    def _as_output(self, state: torch.Tensor):
        if self.tuple_output is None:
            return state
        return (state,) + (None,) * (self.tuple_output - 1)

    def _propagate(self, index, block, original, args, kwargs) -> None:
        state = self.exit_state.unsqueeze(1)  # (1, 1, d)
        cache = _cache_of(kwargs)
        if self.kv_only:
            keys, values = _kv_only(block, state, kwargs)
            cache.update(keys, values, block.self_attn.layer_idx)
            return
        if args and isinstance(args[0], torch.Tensor):
            args = (state, *args[1:])
        else:
            kwargs = {**kwargs, "hidden_states": state}
        original(*args, **kwargs)

    def _decode(self, state: torch.Tensor, row: int) -> torch.Tensor:
        return self.lens(state, row).float().log_softmax(-1)[0]

    def _check(self, row: int, state: torch.Tensor) -> None:
        measure = self.measure
        logprobs = None
        if measure.name == "saturation":
            value = (
                math.nan
                if self.previous is None
                else float(
                    torch.nn.functional.cosine_similarity(
                        state.double(), self.previous.double(), dim=-1
                    )[0]
                )
            )
        else:
            logprobs = self._decode(state, row)
            probs = logprobs.exp()
            top = probs.topk(2)
            top1 = int(top.indices[0])
            if measure.name == "max-prob":
                value = float(top.values[0])
            elif measure.name == "margin":
                value = float(top.values[0] - top.values[1])
            elif measure.name == "entropy":
                value = float(-(probs * logprobs).sum()) * NATS_TO_BITS
            elif measure.name == "patience":
                self.patience = self.patience + 1 if top1 == self.last_top1 else 0
                value = float(self.patience) if self.last_top1 is not None else 0.0
            else:  # step-kl: KL(row r ‖ row r-1)
                if row == 0:
                    value = math.nan
                else:
                    previous = self.last_probs if self.last_probs_row == row - 1 else None
                    if previous is None:  # counted by check_costs
                        previous = self._decode(self.previous, row - 1)
                    value = float((probs * (logprobs - previous)).sum()) * NATS_TO_BITS
            self.last_top1 = top1
            self.last_probs, self.last_probs_row = logprobs, row
        if bool(measure.passes(np.array([value]), self.threshold)[0]):
            self.exited, self.exit_row, self.exit_state = True, row, state
            if logprobs is None:
                logprobs = self._decode(state, row)
            self.token = int(logprobs.argmax())

    # --- a whole continuation ----------------------------------------------------------------

    def step(self, ids: torch.Tensor, cache) -> None:
        self.start_token()
        self.active = True
        try:
            self.model(input_ids=ids, use_cache=True, **{self.cache_arg: cache})
        except _Stop:
            pass
        finally:
            self.active = False
        if not self.exited:
            self.token = int(self.lens(self.final, self.n_blocks)[0].argmax())

    def prefill(self, ids: torch.Tensor, cache) -> None:
        options = (
            {"logits_to_keep": 1}
            if "logits_to_keep" in inspect.signature(self.model.forward).parameters
            else {}
        )
        self.model(input_ids=ids, use_cache=True, **{self.cache_arg: cache}, **options)


def _check_measure(measure: str | None, threshold) -> float | None:
    if measure is None:
        return None
    if measure not in MEASURES:
        raise AnalysisError(f"unknown measure {measure!r}; choose from {', '.join(MEASURES)}")
    if threshold is None:
        raise AnalysisError(f"pass the threshold of {measure} (or measure=None for no exit)")
    return MEASURES[measure].check(threshold)


@torch.no_grad()
def generate_with_exit(
    model: nn.Module,
    lens: Lens,
    input_ids,
    max_new_tokens: int = 32,
    *,
    measure: str | None = "max-prob",
    threshold: float | None = None,
    check_every: int = 1,
    check_rows: Sequence[int] | None = None,
    eos_token_id: int | None = None,
    propagation: str = "auto",
) -> ExitGeneration:
    """Greedy-decode one prompt, each new token exiting at its first confident check.

    Args:
        model: The causal LM.
        lens: The lens that reads each check row (its own map, then the model's head).
        input_ids: The prompt, ``(seq,)`` or ``(1, seq)``.
        max_new_tokens: Tokens to add.
        measure: A confidence measure (:data:`~tunedlens.analyze.exit_rules.MEASURES`), or
            ``None``: no exit (the full model, through the same driver).
        threshold: The measure's threshold.
        check_every: Check every ``k``-th row from row 0.
        check_rows: Check only at these rows (overrides ``check_every``).
        eos_token_id: Stop after this token (default: never, exactly ``max_new_tokens``).
        propagation: ``auto`` (the K/V-only path where it is verified exact, else the full
            block) or ``full-block`` (always run skipped blocks on the copied state: slower,
            the same tokens).

    Returns:
        An :class:`ExitGeneration` (tokens, exit rows, MACs counted, wall time).
    """
    threshold = _check_measure(measure, threshold)
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise AnalysisError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise AnalysisError(f"check_every must be a positive integer, got {check_every!r}")
    if lens.points != "block":
        raise AnalysisError(
            f"the lens reads {lens.points} points; early exit needs a block-point lens"
        )
    if propagation not in ("auto", "full-block"):
        raise AnalysisError(f"propagation must be 'auto' or 'full-block', got {propagation!r}")
    ids = token_ids(input_ids)
    ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise AnalysisError(
            f"input_ids must be one non-empty prompt, (seq,) or (1, seq); got {tuple(ids.shape)}"
        )
    compute = compute_model(model)
    schedule = check_schedule(compute.n_blocks, check_every, check_rows)
    driver = _Driver(model, lens, measure, threshold, schedule)
    driver.kv_only = propagation == "auto"
    return _generate(driver, ids, max_new_tokens, eos_token_id, compute, schedule)


def _generate(
    driver: _Driver, ids, max_new_tokens, eos_token_id, compute, schedule
) -> ExitGeneration:
    model, lens = driver.model, driver.lens
    device = lens.unembed.device
    ids = ids.to(device)
    cache = _new_cache(model)
    tokens, rows = [], []
    started = time.perf_counter()
    with driver:
        if ids.shape[1] > 1:
            driver.prefill(ids[:, :-1], cache)
        else:
            driver.kv_only = driver.kv_only and _verify_on(driver, ids)
        step = ids[:, -1:]
        for _ in range(max_new_tokens):
            driver.step(step, cache)
            tokens.append(driver.token)
            rows.append(driver.exit_row)
            if eos_token_id is not None and driver.token == eos_token_id:
                break
            step = torch.tensor([[driver.token]], device=device)
    seconds = time.perf_counter() - started
    n = compute.n_blocks
    context = ids.shape[1] + np.arange(len(tokens))
    decode = np.array(
        [compute.head + lens_macs(lens, row) for row in range(n + 1)], dtype=np.float64
    )
    exits = np.array(rows)
    if driver.measure is None:
        macs = compute.full(context)
        propagation = "none"
    else:
        checks = check_costs(driver.measure, schedule, decode)
        macs = token_costs(
            exits,
            compute.cumulative(context),
            compute.propagation(),
            checks,
            decode,
            compute.head,
            driver.measure,
        )
        propagation = "kv-only" if driver.kv_only else "full-block"
    return ExitGeneration(
        prompt=ids[0].tolist(),
        tokens=tokens,
        exit_rows=rows,
        macs=macs.tolist(),
        full_macs=compute.full(context).tolist(),
        seconds=seconds,
        propagation=propagation,
    )


def _verify_on(driver: _Driver, ids) -> bool:
    """A one-token prompt has no prefill: check the K/V-only path on a throwaway cache."""
    driver.prefill(ids, _new_cache(driver.model))
    return driver.kv_only


def _hf_greedy(model: nn.Module, ids: torch.Tensor, new: int) -> tuple[list[int], float]:
    """The model's own greedy ``generate`` (no stop at EOS), its new tokens and wall time."""
    pad = getattr(model.generation_config, "pad_token_id", None)
    pad = 0 if pad is None else pad
    started = time.perf_counter()
    try:
        out = model.generate(
            ids, max_new_tokens=new, do_sample=False, eos_token_id=[], pad_token_id=pad
        )
    except (TypeError, ValueError, IndexError):  # an older transformers without an empty EOS list
        out = model.generate(
            ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad
        )
    return out[0, ids.shape[1] :].tolist(), time.perf_counter() - started


@torch.no_grad()
def compare_generation(
    model: nn.Module,
    lenses: dict[str, Lens],
    metrics: dict,
    prompts: list[torch.Tensor],
    new_tokens: int,
    *,
    tokenizer=None,
    delta: float = 0.10,
    measures: Sequence[str] | None = None,
) -> dict:
    """Greedy continuations by the full model and by each lens x measure, timed alike.

    Each lens x measure generates at its threshold certified for ``delta`` in ``metrics`` (an
    early-exit report's payload); the model's own greedy ``generate`` is the baseline.

    Returns:
        JSON-ready: per run the share of continuations identical to the full model's, the first
        position where each differs, rows used, counted compute saved and measured tokens/s.
    """
    compute = compute_model(model)
    schedule = np.array(metrics["check_rows"], dtype=np.int64)
    device = next(model.parameters()).device
    prompts = [token_ids(p).reshape(1, -1).to(device) for p in prompts]
    logit = lenses["logit"]
    _hf_greedy(model, prompts[0], 2)  # warm up
    full, hf_seconds = [], 0.0
    for ids in prompts:
        tokens, seconds = _hf_greedy(model, ids, new_tokens)
        full.append(tokens)
        hf_seconds += seconds
    plain = [
        _generate(
            _Driver(model, logit, None, None, schedule), ids, new_tokens, None, compute, schedule
        )
        for ids in prompts
    ]
    text = (
        (lambda tokens: tokenizer.decode(tokens))
        if tokenizer is not None
        else (lambda tokens: None)
    )
    total = new_tokens * len(prompts)
    out = {
        "new_tokens": new_tokens,
        "prompts": [text(ids[0].tolist()) for ids in prompts],
        "delta": float(delta),
        "check_rows": schedule.tolist(),
        "full": {
            "tokens_per_s": total / hf_seconds,
            "driver_tokens_per_s": total / sum(g.seconds for g in plain),
            "driver_identical": float(
                np.mean([g.tokens == f for g, f in zip(plain, full, strict=True)])
            ),
            "texts": [text(tokens) for tokens in full],
        },
        "runs": [],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "timing": "wall time in this process, prefill included, one prompt at a time (batch 1); "
        "the model's own greedy generate is the baseline",
    }
    key = f"{float(delta):g}"
    for name, lens in lenses.items():
        for measure in measures or MEASURES:
            certified = (
                metrics["calibration"]["results"].get(name, {}).get(measure, {}).get(key, {})
            )
            if not certified.get("certified"):
                out["runs"].append(
                    {
                        "lens": name,
                        "measure": measure,
                        "threshold": None,
                        "skipped": f"no threshold certified for δ={key}",
                    }
                )
                continue
            threshold = certified["threshold"]
            runs = [
                _generate(
                    _Driver(model, lens, measure, threshold, schedule),
                    ids,
                    new_tokens,
                    None,
                    compute,
                    schedule,
                )
                for ids in prompts
            ]
            differs = [
                next((i for i, (a, b) in enumerate(zip(g.tokens, f, strict=True)) if a != b), None)
                for g, f in zip(runs, full, strict=True)
            ]
            macs = sum(sum(g.macs) for g in runs)
            full_macs = sum(sum(g.full_macs) for g in runs)
            seconds = sum(g.seconds for g in runs)
            out["runs"].append(
                {
                    "lens": name,
                    "measure": measure,
                    "threshold": threshold,
                    "identical": float(np.mean([d is None for d in differs])),
                    "first_difference": differs,
                    "rows_used": float(np.mean([r for g in runs for r in g.exit_rows])),
                    "macs_per_token": macs / total,
                    "saved": 1 - macs / full_macs,
                    "tokens_per_s": total / seconds,
                    "speedup": hf_seconds / seconds,
                    "propagation": runs[0].propagation,
                    "texts": [text(g.tokens) for g in runs],
                }
            )
    return out


__all__ = ["ExitGeneration", "compare_generation", "generate_with_exit"]
