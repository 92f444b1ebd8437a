"""The prompt suite: per-prompt trajectories, their KPIs and the gates A–D a lens must pass.

KPIs are computed at each prompt's answer position (the last prompt token, whose next token is
the answer), over every layer row ``0..L``:

- ``delta_kl_bits`` at depth percentiles 25/50/75 (row ``round(p/100 · L)``): the median over
  prompts of KL(logit lens) − KL(tuned lens), in bits; positive = the tuned lens is closer.
- earliness: per prompt, the first row where the answer's rank is ≤ 10/5/1 and where KL is
  ≤ 1.0/0.5 bits; the shift is baseline row − lens row (positive = earlier under the lens),
  defined where both reach the threshold.
- ``kl_after_temp_bits``: KL(model's forward logits ‖ the lens's output row) at the answer
  position after fitting one scalar temperature: a check that the head the lens decodes with
  (final norm, unembedding, soft-capping, logit scale) reproduces the model's own forward pass.
  Every lens decodes its output row with the model's head, so a correctly resolved model scores
  about 0 for every lens; a wrong final norm or a missed logit transform fails it.
- ``rank1_coverage_gain``: mean over prompts of (share of rows with the answer at rank 1 under
  the lens) − (the same under the logit lens).
- ``cos_to_final``: per row, mean cosine of the lens's centred logits to the model's.
- copy collapse: rows where the top-1 token is one of the prompt's tokens with p > 0.95.
"""

from __future__ import annotations

import math
import statistics

import torch

from tunedlens.arch.residuals import collect_residuals
from tunedlens.engine.core import LensReadout, readout
from tunedlens.errors import InputError
from tunedlens.evaluation.prompts import PromptSuite, encode_suite, load_prompts
from tunedlens.metrics.divergence import NATS_TO_BITS, kl_divergence

SUITE_STATS = ("kl", "entropy", "max-prob", "cos")
"""What the prompt suite asks the readout for, besides the top token and the answer's rank."""

PERCENTILES = (25, 50, 75)
RANK_THRESHOLDS = (10, 5, 1)
KL_THRESHOLDS = (1.0, 0.5)
COPY_PROBABILITY = 0.95
GATE_A = {25: 0.2, 50: 0.3, 75: 0.3}
GATE_B = {10: 4, 5: 2}
GATE_B_SHARE = 0.6
GATE_C = 0.05
GATE_D = -0.1


def depth_row(percentile: int, output_row: int) -> int:
    """The row at ``percentile`` % of the depth (rounded half up), below the output row."""
    return min(output_row - 1, math.floor(percentile / 100 * output_row + 0.5))


def _first(values: list[float], ok) -> int | None:
    return next((row for row, value in enumerate(values) if ok(value)), None)


def fit_temperature(target_logprobs: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """The scalar T minimising mean KL(target ‖ softmax(logits / T)); returns ``(T, KL nats)``.

    Golden-section search over ``log T`` in ``[-4, 4]`` (KL is unimodal in T here).
    """

    def loss(log_t: float) -> float:
        scaled = (logits / math.exp(log_t)).log_softmax(-1)
        return float(kl_divergence(target_logprobs, scaled).mean())

    low, high = -4.0, 4.0
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(b)
    best = (low + high) / 2
    return math.exp(best), min(loss(best), loss(0.0))


def _prompt_rows(lens: LensReadout, output_logprobs: torch.Tensor, ids: list[int]) -> dict:
    """Per-row statistics of one lens on one prompt: all positions and the answer position.

    ``lens`` is the prompt's readout (``SUITE_STATS``, top-1, the answer as its only token);
    ``output_logprobs`` the lens's output row at the answer position.
    """
    top_id, top_prob = lens.top_ids[0, :, :, 0], lens.top_probs[0, :, :, 0]
    prompt_ids = set(ids)
    copy = [
        int(top_id[row, -1]) in prompt_ids and float(top_prob[row, -1]) > COPY_PROBABILITY
        for row in range(top_id.shape[0])
    ]
    return {
        "kl": lens["kl"][0] * NATS_TO_BITS,
        "entropy": lens["entropy"][0] * NATS_TO_BITS,
        "top_id": top_id,
        "top_prob": top_prob,
        "answer_rank": lens.token_ranks[0, :, :, 0].long(),
        "answer_prob": lens.token_probs[0, :, :, 0],
        "cos": lens["cos"][0, :, -1],
        "copy": copy,
        "output_logits": output_logprobs,
    }


def run_suite(report, model, tokenizer, lenses: dict, suite: PromptSuite | str) -> None:
    """Add prompt records, KPIs and gates to ``report`` (mutated in place).

    Each prompt runs once through the model; one readout gives every lens's rows and positions,
    a second the output row's full distribution at the answer position (for the temperature).
    """
    if tokenizer is None:
        raise InputError("the prompt suite needs the model's tokenizer")
    suite = load_prompts(suite) if isinstance(suite, str) else suite
    max_length = getattr(model.config, "max_position_embeddings", None)
    encoded = encode_suite(suite, tokenizer, max_length)
    first = next(iter(lenses.values()))
    output_row, arch, device = first.output_row, first.unembed.arch, first.unembed.device
    per_lens: dict[str, list[dict]] = {name: [] for name in lenses}
    answer_logprobs = []
    for item in encoded.usable:
        ids = torch.tensor([item.input_ids])
        states = collect_residuals(
            model, ids.to(device), arch=arch, with_logits=True, points=first.points
        )
        rows = readout(
            model, lenses, ids, states=states, stats=SUITE_STATS, top_k=1, tokens=[item.answer_id]
        )
        output = readout(
            model,
            lenses,
            ids,
            states=states,
            rows=[output_row],
            positions=-1,
            stats=(),
            top_k=0,
            logprobs=True,
        )
        # Gate C's reference: the model's own forward pass, not the head the lenses share.
        answer_logprobs.append(states.logits[0, -1].float().log_softmax(-1).cpu())
        tokens = [tokenizer.decode([token]) for token in item.input_ids]
        for name in lenses:
            prompt_rows = _prompt_rows(rows[name], output[name].logprobs[0, 0, 0], item.input_ids)
            per_lens[name].append(prompt_rows)
            _append_records(report, name, item, prompt_rows, tokens, tokenizer)
    metrics = report.metrics
    metrics["prompts"] = {
        "source": suite.source,
        "total": len(suite.prompts),
        "used": len(encoded.usable),
        "skipped_count": len(encoded.skipped),
        "skipped": encoded.skipped,
    }
    if not encoded.usable:
        metrics["kpis"], metrics["gates"] = {}, {}
        return
    kpis = {name: _lens_kpis(rows, output_row) for name, rows in per_lens.items()}
    targets = torch.stack(answer_logprobs)
    for name, rows in per_lens.items():
        # The lens's output row against the model's forward logits, after one temperature: a
        # lens whose head reproduces the model's scores 0.
        output = torch.stack([row["output_logits"] for row in rows])
        temperature, kl = fit_temperature(targets, output)
        kpis[name].update({"kl_after_temp_bits": kl * NATS_TO_BITS, "temperature": temperature})
    baseline = next(iter(lenses))
    gates = {}
    for name in list(lenses)[1:]:
        kpis[name].update(compare_kpis(kpis[baseline], kpis[name], output_row))
        gates[name] = gates_for(kpis[name])
    metrics["kpis"], metrics["gates"] = kpis, gates


def _append_records(report, name, item, rows, tokens, tokenizer) -> None:
    seq = len(item.input_ids)
    for row in range(rows["kl"].shape[0]):
        for position in range(seq):
            report.records.append(
                {
                    "prompt_id": item.index,
                    "lens": name,
                    "layer": row,
                    "position": position,
                    "token": tokens[position],
                    "top1_token": tokenizer.decode([int(rows["top_id"][row, position])]),
                    "top1_prob": float(rows["top_prob"][row, position]),
                    "answer_rank": int(rows["answer_rank"][row, position]),
                    "answer_prob": float(rows["answer_prob"][row, position]),
                    "kl_bits": float(rows["kl"][row, position]),
                    "entropy_bits": float(rows["entropy"][row, position]),
                }
            )
        report.next_token.append(
            {
                "prompt_id": item.index,
                "category": item.prompt.category,
                "lens": name,
                "layer": row,
                "answer": item.prompt.answer,
                "top1_token": tokenizer.decode([int(rows["top_id"][row, -1])]),
                "top1_prob": float(rows["top_prob"][row, -1]),
                "answer_rank": int(rows["answer_rank"][row, -1]),
                "answer_prob": float(rows["answer_prob"][row, -1]),
                "kl_bits": float(rows["kl"][row, -1]),
                "entropy_bits": float(rows["entropy"][row, -1]),
                "cos_to_final": float(rows["cos"][row]),
                "copy_collapse": rows["copy"][row],
            }
        )


def _lens_kpis(prompts: list[dict], output_row: int) -> dict:
    """Per-prompt answer-position series and first crossings of one lens."""
    kl = [p["kl"][:, -1].tolist() for p in prompts]
    ranks = [p["answer_rank"][:, -1].tolist() for p in prompts]
    first = {
        f"rank_le_{k}": [_first(r, lambda v, k=k: v <= k) for r in ranks] for k in RANK_THRESHOLDS
    }
    first |= {
        f"kl_le_{t}": [_first(series, lambda v, t=t: v <= t) for series in kl]
        for t in KL_THRESHOLDS
    }
    flags = [p["copy"] for p in prompts]
    cos = torch.stack([p["cos"] for p in prompts]).mean(0)
    return {
        "answer_kl_bits": kl,
        "answer_rank": ranks,
        "first_layer": first,
        "rank1_share": [sum(v == 1 for v in r[:output_row]) / output_row for r in ranks],
        "cos_to_final": cos.tolist(),
        "copy_collapse": {
            "flags": sum(map(sum, flags)),
            "prompts_flagged": sum(any(f) for f in flags),
            "first_layer": [_first(f, bool) for f in flags],
        },
    }


def compare_kpis(baseline: dict, lens: dict, output_row: int) -> dict:
    """ΔKL at depth percentiles, earliness shifts and the rank-1 coverage gain vs the baseline."""
    delta, rows = {}, {}
    for p in PERCENTILES:
        row = depth_row(p, output_row)
        rows[str(p)] = row
        delta[str(p)] = statistics.median(
            b[row] - t[row]
            for b, t in zip(baseline["answer_kl_bits"], lens["answer_kl_bits"], strict=True)
        )
    shifts = {}
    for key, firsts in lens["first_layer"].items():
        pairs = zip(baseline["first_layer"][key], firsts, strict=True)
        values = [b - t for b, t in pairs if b is not None and t is not None]
        shifts[key] = {
            "shift": values,
            "applicable": len(values),
            "median_shift": statistics.median(values) if values else None,
        }
    gain = statistics.fmean(lens["rank1_share"]) - statistics.fmean(baseline["rank1_share"])
    return {
        "delta_kl_bits": delta,
        "depth_rows": rows,
        "earliness_shift": shifts,
        "rank1_coverage_gain": gain,
    }


def gates_for(kpis: dict) -> dict:
    """Gates A–D (thresholds: ``GATE_A`` ... ``GATE_D``), each ``{"pass": bool, ...its numbers}``."""
    delta = {int(k): v for k, v in kpis["delta_kl_bits"].items()}
    gate_a = all(delta[p] >= GATE_A[p] for p in PERCENTILES)
    shares = {}
    for k, need in GATE_B.items():
        values = kpis["earliness_shift"][f"rank_le_{k}"]["shift"]
        shares[k] = sum(v >= need for v in values) / len(values) if values else 0.0
    gate_b = all(share >= GATE_B_SHARE for share in shares.values())
    worst = min(delta.values())
    return {
        "A": {"pass": gate_a, "delta_kl_bits": kpis["delta_kl_bits"], "thresholds": GATE_A},
        "B": {
            "pass": gate_b,
            "share_rank_le_10_shift_ge_4": shares[10],
            "share_rank_le_5_shift_ge_2": shares[5],
            "required_share": GATE_B_SHARE,
        },
        "C": {
            "pass": kpis["kl_after_temp_bits"] <= GATE_C,
            "kl_after_temp_bits": kpis["kl_after_temp_bits"],
            "threshold": GATE_C,
        },
        "D": {"pass": worst >= GATE_D, "worst_delta_kl_bits": worst, "threshold": GATE_D},
    }
