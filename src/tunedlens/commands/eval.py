"""``tunedlens eval``: load, pack data, evaluate every lens layer by layer, write the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunedlens.commands.common import open_model_and_lenses
from tunedlens.data import SelfTextSettings, TextSource, pack_blocks, sample_self_text
from tunedlens.errors import InputError
from tunedlens.evaluation.core import BASELINE, EvalReport, evaluate
from tunedlens.evaluation.prompts import load_prompts
from tunedlens.evaluation.report import REPORT_OUTPUT
from tunedlens.outputs import check_out_dir, local_inputs, staged_output
from tunedlens.plot.html import DEFAULT_PLOTLY, check_plotly_mode


@dataclass(frozen=True)
class EvalRun:
    """A finished evaluation: the report and the files written."""

    report: EvalReport
    out: Path
    written: list[Path]


def run(
    model_spec: str,
    lenses: Sequence[str] = (),
    *,
    data: str = "stdlib",
    text_column: str = "text",
    tokens: int = 8192,
    seq_len: int = 512,
    out: str | Path = "eval",
    prompts: str | None = "default",
    transfer: bool = False,
    bootstrap: int = 1000,
    batch_size: int = 1,
    seed: int = 0,
    plots: bool = True,
    plotly: str = DEFAULT_PLOTLY,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer: str | None = None,
    strict: bool = True,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    self_settings: SelfTextSettings | None = None,
    on_sample: Callable[[int, int], None] | None = None,
) -> EvalRun:
    """Evaluate lens locations on ``model_spec`` (the logit lens is always the baseline).

    ``on_start`` is called with the number of tokens once the data is packed, ``progress`` after
    every batch (see :func:`evaluate`). With ``data="self"`` the text is sampled from the model as
    ``self_settings`` says (or reused from its cache), ``on_sample(done, total)`` counting the
    tokens. Arguments as for ``tunedlens eval``. ``out`` is checked
    before anything is loaded (an earlier report is replaced only with ``force``, and nothing
    else ever is); the report is written beside it and renamed into place once complete.
    """
    if tokens < seq_len or seq_len < 2:
        raise InputError(
            f"--tokens ({tokens}) must hold at least one sequence of --seq-len ({seq_len}) tokens"
        )
    check_plotly_mode(plotly)
    inputs = local_inputs(model_spec, *lenses, data, prompts, tokenizer)
    out = check_out_dir(out, REPORT_OUTPUT, force=force, sources=inputs)
    if seq_len < 2 or batch_size < 1 or bootstrap < 0:
        raise InputError(
            f"need --seq-len >= 2, --batch-size >= 1 and --bootstrap >= 0, got {seq_len}, "
            f"{batch_size}, {bootstrap}"
        )
    suite = None if prompts in (None, "none") else load_prompts(prompts)
    source = TextSource(data, text_column=text_column, self_text=self_settings)
    source.check(allow_self=True)
    opened = open_model_and_lenses(
        model_spec,
        lenses,
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        strict=strict,
        with_logit=False,
        reserved=(BASELINE,),
        needs_tokenizer=not source.is_self,  # self text names its own need of a tokenizer
    )  # evaluate adds the logit lens
    loaded, loaded_tokenizer, named = opened.model, opened.tokenizer, opened.lenses
    sampled = None
    if source.is_self:
        sampled = sample_self_text(
            loaded,
            loaded_tokenizer,
            source.self_settings(),
            tokens_needed=tokens // seq_len * seq_len,
            progress=on_sample,
            model_name=model_spec,
        )
        source = TextSource.from_self_text(sampled)
    blocks = pack_blocks(
        source, loaded_tokenizer, seq_len=seq_len, n_sequences=tokens // seq_len, seed=seed
    )
    if on_start is not None:
        on_start(blocks.n_tokens)
    report = evaluate(
        loaded,
        named,
        blocks.tokens,
        tokenizer=loaded_tokenizer,
        prompts=suite,
        transfer=transfer,
        batch_size=batch_size,
        bootstrap=bootstrap,
        seed=seed,
        progress=progress,
        model_name=model_spec,
    )
    report.metrics["data"] = {"spec": data, "content_hash": blocks.content_hash()}
    if sampled is not None:
        report.metrics["data"]["self_text"] = sampled.record()
    with staged_output(out, REPORT_OUTPUT) as staging:
        written = report.save(staging, plots=plots, plotly=plotly)
    return EvalRun(report, out, [out / path.name for path in written])
