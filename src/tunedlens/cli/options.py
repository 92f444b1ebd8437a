"""Arguments and options shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

ModelArg = Annotated[
    str, typer.Argument(help="Hub id, local directory, .gguf file, or 'demo' (SmolLM2-135M).")
]
PromptArg = Annotated[str, typer.Argument(help="The text to look at.")]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")]
StrictOption = Annotated[
    bool,
    typer.Option(help="Refuse a lens whose unembedding fingerprint differs from the model's."),
]
