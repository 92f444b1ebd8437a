"""Arguments and options shared by several commands (help written once, here or in TrainConfig)."""

from __future__ import annotations

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
