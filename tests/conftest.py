"""Test configuration: offline, seeded, tiny models importable as ``tiny_models``."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def model():
    """A tiny random Llama (test modules may define their own ``model``)."""
    from tiny_models import tiny_model

    return tiny_model("llama")


@pytest.fixture
def lens(model):
    """A tuned lens with random translators for ``model``."""
    from tiny_models import random_lens

    return random_lens(model)


@pytest.fixture
def input_ids():
    return torch.randint(3, 120, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def tiny_tokenizer():
    """A word-level tokenizer over the tiny vocabulary (128 tokens), saved like a real one."""
    from tiny_models import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def text_file(tmp_path):
    """6,000 random words of the tiny vocabulary (``w4 w17 ...``) as a training text file."""
    from tiny_models import word_text

    return word_text(tmp_path / "train.txt")


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer):
    """A tiny llama saved with save_pretrained, with a tokenizer, as a user's local model."""
    from tiny_models import tiny_model

    path = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in ``tmp_path`` with the hub offline (tests fill it by hand)."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
