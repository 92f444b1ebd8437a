"""Training and evaluation data: text sources and token packing."""

from tunedlens.data.packing import TokenBlocks, pack_blocks, pack_texts
from tunedlens.data.self_text import SelfText, SelfTextMismatch, SelfTextSettings, sample_self_text
from tunedlens.data.sources import DEFAULT_HF_DATASET, DataError, TextSource, default_data_spec

__all__ = [
    "DEFAULT_HF_DATASET",
    "DataError",
    "SelfText",
    "SelfTextMismatch",
    "SelfTextSettings",
    "TextSource",
    "TokenBlocks",
    "default_data_spec",
    "pack_blocks",
    "pack_texts",
    "sample_self_text",
]
