"""Arguments and options shared by several commands (help written once, here or in TrainConfig)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunedlens.engine.stats import VIEW_STATS
from tunedlens.plot.html import DEFAULT_PLOTLY, PLOTLY_HELP

ModelArg = Annotated[
    str,
    typer.Argument(
        help="Hub id, local directory, .gguf file, or 'demo' ("
        "SmolLM2-135M-Instruct, dequantised from a Q4_1 GGUF)."
    ),
]
PromptArg = Annotated[str, typer.Argument(help="The text to look at.")]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")]
DeviceOption = Annotated[
    Optional[str],
    typer.Option(help="Where to run the model: cpu, cuda, cuda:1, ... (default cpu)."),
]
TokenizerOption = Annotated[
    Optional[str],
    typer.Option(help="Tokenizer hub id or directory, for models saved without tokenizer files."),
]
StrictOption = Annotated[
    bool,
    typer.Option(help="Refuse a lens whose unembedding fingerprint differs from the model's."),
]
PlotlyOption = Annotated[str, typer.Option(help=PLOTLY_HELP)]
PLOTLY_DEFAULT = DEFAULT_PLOTLY
LENS_HELP = (
    "Lens location: 'logit'; a lens directory (tuned lens, native or tuned-lens format, or native "
    "J-lens) or a J-lens file (.pt); hf:ORG/REPO[/SUB][@REV] (a hub repository); "
    "hf:datasets/ORG/REPO/lenses/MODEL/NAME[@REV] (a lens collection); tuned-lens:MODEL_ID[@REV] "
    "(the reference's published tuned lenses); jlens:NAME[@REV] (a published J-lens, see "
    "'tunedlens lens list')."
)
STAT_HELP = f"{', '.join(VIEW_STATS)}, or all (the first four)."
PointsOption = Annotated[
    Optional[str],
    typer.Option(
        help="Where the logit lens reads: block (block inputs), mid (after attention, before the "
        "MLP: rows 3.mid) or both, interleaved. Default: the points the other lenses were "
        "trained on (block)."
    ),
]
DATA_FORMS = (
    "(a .txt/.jsonl[.gz]/.parquet file or folder, hf:NAME[:CONFIG][@REV], stdlib, stdlib-prose "
    "or kjv)."
)
"""The data specs every --data option takes."""

SELF_PANEL = "Text from the model itself (--data self)"
SelfTokensOption = Annotated[
    Optional[int],
    typer.Option(
        help="Tokens to sample (default: as many as the command packs).",
        rich_help_panel=SELF_PANEL,
    ),
]
SelfTemperatureOption = Annotated[
    Optional[float],
    typer.Option(help="Sampling temperature, > 0 (default 1).", rich_help_panel=SELF_PANEL),
]
SelfTopPOption = Annotated[
    Optional[float],
    typer.Option(
        "--self-top-p",
        help="Nucleus sampling: keep the likeliest tokens holding this much probability, in "
        "(0, 1] (default 1: all).",
        rich_help_panel=SELF_PANEL,
    ),
]
SelfPrefixOption = Annotated[
    Optional[list[str]],
    typer.Option(
        help="Text the documents start with, in turn; repeatable (default: the BOS token alone).",
        rich_help_panel=SELF_PANEL,
    ),
]
SelfSeedOption = Annotated[
    Optional[int],
    typer.Option(help="Seed of the sampling (default 0).", rich_help_panel=SELF_PANEL),
]
SelfDocTokensOption = Annotated[
    Optional[int],
    typer.Option(
        help="New tokens per document at most; a document also ends at EOS (default 512, or the "
        "model's context).",
        rich_help_panel=SELF_PANEL,
    ),
]
SelfBatchSizeOption = Annotated[
    Optional[int],
    typer.Option(
        help="Documents sampled together (default 32; more is cheaper per token, the KV cache "
        "grows with it).",
        rich_help_panel=SELF_PANEL,
    ),
]
SelfCacheOption = Annotated[
    Optional[Path],
    typer.Option(
        help="Folder of the sampled text, one MODEL-SETTINGS.jsonl.gz file per model and "
        "settings, reused by later runs (default: $TUNEDLENS_CACHE/self, else "
        "~/.cache/tunedlens/self).",
        rich_help_panel=SELF_PANEL,
    ),
]


def self_text_settings(
    tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    prefix: list[str] | None = None,
    seed: int | None = None,
    doc_tokens: int | None = None,
    batch_size: int | None = None,
    cache: Path | None = None,
):
    """The ``--self-*`` options given, as sampling settings; ``None`` when none was given."""
    from tunedlens.data import SelfTextSettings

    given = {
        "tokens": tokens,
        "temperature": temperature,
        "top_p": top_p,
        "prefixes": tuple(prefix) if prefix else None,
        "seed": seed,
        "doc_tokens": doc_tokens,
        "batch_size": batch_size,
        "cache_dir": cache,
    }
    given = {key: value for key, value in given.items() if value is not None}
    return SelfTextSettings(**given) if given else None
