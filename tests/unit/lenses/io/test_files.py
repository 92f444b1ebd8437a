import json
import pickle
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from paths import DATA
from tiny_models import tiny_model
from tunedlens.errors import LensFileError, LensMismatch
from tunedlens.lenses import TunedLens, load_lens, read_lens
from tunedlens.lenses.io.files import REFERENCE_KEYS, convert_tuned
from tunedlens.lenses.io.info import describe_lens


def _randomised(lens):
    with torch.no_grad():
        for parameter in lens.translator.parameters():
            parameter.normal_()
    return lens


@pytest.fixture
def reference_lens(tmp_path):
    """A copy of the reference-written gpt2 fixture lens and its model."""
    shutil.copytree(DATA / "reference" / "gpt2" / "lens", tmp_path / "lens")
    model = AutoModelForCausalLM.from_pretrained(DATA / "reference" / "gpt2" / "model").eval()
    return tmp_path / "lens", model


@pytest.mark.parametrize(
    "options", [dict(), dict(use_bias=False), dict(translator="lowrank", use_temperature=True)]
)
def test_native_round_trip_is_bitwise(model, tmp_path, options):
    lens = _randomised(TunedLens.from_model(model, **options))
    lens.save(tmp_path / "lens", provenance={"note": "test"})
    assert sorted(p.name for p in (tmp_path / "lens").iterdir()) == [
        "config.json",
        "lens.safetensors",
        "provenance.json",
    ]
    loaded = load_lens(tmp_path / "lens", model)
    for (name, a), (_, b) in zip(
        lens.translator.state_dict().items(), loaded.translator.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    provenance = json.loads((tmp_path / "lens" / "provenance.json").read_text())
    assert provenance["note"] == "test" and provenance["translator"]["kind"] == lens.translator.kind
    assert provenance["model"]["unembed_hash"] == lens.unembed.hash()
    assert provenance["torch_version"] and provenance["transformers_version"]


def test_reference_round_trip_is_bitwise_and_readable_by_plain_torch(model, tmp_path):
    lens = _randomised(TunedLens.from_model(model))
    lens.save(tmp_path / "lens", format="tuned-lens")
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert list(config) == list(REFERENCE_KEYS)
    assert config["lens_type"] == "linear_tuned_lens" and config["d_model"] == 32
    state = torch.load(tmp_path / "lens" / "params.pt", weights_only=True)
    assert sorted(state) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert torch.equal(state["1.weight"], lens.translator.weight[1])
    loaded = load_lens(tmp_path / "lens", model)
    assert torch.equal(loaded.translator.weight, lens.translator.weight)
    assert torch.equal(loaded.translator.bias, lens.translator.bias)


def test_low_rank_saved_as_tuned_lens_keeps_its_predictions(model, tmp_path):
    lens = TunedLens.from_model(model, translator="lowrank")
    with torch.no_grad():
        lens.translator.V.normal_()
    lens.save(tmp_path / "ref", format="tuned-lens")
    loaded = load_lens(tmp_path / "ref", model)
    hidden = torch.randn(4, 32)
    torch.testing.assert_close(loaded(hidden, 0), lens(hidden, 0), rtol=1e-5, atol=1e-5)


def test_low_rank_with_temperature_refuses_the_tuned_lens_format(model, tmp_path):
    lens = TunedLens.from_model(model, translator="lowrank", use_temperature=True)
    with pytest.raises(ValueError, match="temperatures"):
        lens.save(tmp_path / "ref", format="tuned-lens")
    assert not (tmp_path / "ref" / "params.pt").exists()


def test_legacy_typo_key_is_read_and_checked(reference_lens):
    path, model = reference_lens
    config = json.loads((path / "config.json").read_text())
    config["unemebd_hash"] = config.pop("unembed_hash")
    (path / "config.json").write_text(json.dumps(config))
    assert load_lens(path, model).model_info["unembed_hash"] == config["unemebd_hash"]
    config["unemebd_hash"] = "0" * 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LensMismatch, match="fingerprint"):
        load_lens(path, model)


def test_legacy_missing_hash_and_unknown_keys(reference_lens):
    path, model = reference_lens
    config = json.loads((path / "config.json").read_text())
    del config["unembed_hash"]
    config["trained_on"] = "the pile"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="ignoring keys .*trained_on"):
        lens = load_lens(path, model)
    assert lens.model_info["unembed_hash"] is None


def test_hash_mismatch_is_an_error_unless_not_strict(reference_lens):
    path, _ = reference_lens
    with pytest.raises(LensMismatch, match="strict=False"):
        load_lens(path, _gpt2_like_fixture())
    with pytest.warns(UserWarning, match="fingerprint"):
        load_lens(path, _gpt2_like_fixture(), strict=False)


def _gpt2_like_fixture():
    model = AutoModelForCausalLM.from_pretrained(DATA / "reference" / "gpt2" / "model").eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(3)
    return model


def test_lens_for_another_model_is_refused(model, tmp_path):
    TunedLens.from_model(tiny_model("gpt2")).save(tmp_path / "lens")  # same width, vocab
    TunedLens.from_model(model).save(tmp_path / "ok")
    from tiny_models import tiny_config

    config = tiny_config("llama")
    config.num_hidden_layers = 3
    deeper = AutoModelForCausalLM.from_config(config)
    with pytest.raises(LensMismatch, match="2 layers vs the model's 3"):
        load_lens(tmp_path / "ok", deeper)
    config = tiny_config("llama")
    config.hidden_size, config.head_dim = 64, 16
    with pytest.raises(LensMismatch, match="d_model 32 vs the model's 64"):
        load_lens(tmp_path / "ok", AutoModelForCausalLM.from_config(config))
    config = tiny_config("llama")
    config.vocab_size = 100
    with pytest.raises(LensMismatch, match="vocabulary 128 vs the model's 100"):
        load_lens(tmp_path / "ok", AutoModelForCausalLM.from_config(config))
    with pytest.raises(LensMismatch, match="fingerprint"):
        load_lens(tmp_path / "lens", model)


def test_truncated_params_pt(reference_lens):
    path, model = reference_lens
    data = (path / "params.pt").read_bytes()
    (path / "params.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(LensFileError, match="truncated or corrupt"):
        load_lens(path, model)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/tunedlens-pwned",))


def test_pickle_with_code_is_refused_and_not_run(reference_lens, tmp_path):
    path, model = reference_lens
    marker = "/tmp/tunedlens-pwned"
    torch.serialization.save({"0.weight": _Exploit()}, path / "params.pt")
    import os

    if os.path.exists(marker):
        os.remove(marker)
    with pytest.raises(LensFileError, match="could run code"):
        load_lens(path, model)
    assert not os.path.exists(marker)
    # A raw pickle (not a torch zip) is refused too.
    (path / "params.pt").write_bytes(pickle.dumps({"0.weight": _Exploit()}))
    with pytest.raises(LensFileError):
        load_lens(path, model)
    assert not os.path.exists(marker)


def test_params_pt_that_does_not_match_its_config(reference_lens):
    path, model = reference_lens
    state = torch.load(path / "params.pt", weights_only=True)
    del state["2.bias"]
    torch.save(state, path / "params.pt")
    with pytest.raises(LensFileError, match=r"missing \['2.bias'\]"):
        load_lens(path, model)
    state["2.bias"] = torch.zeros(7)
    torch.save(state, path / "params.pt")
    with pytest.raises(LensFileError, match=r"'2.bias' has shape \(7,\)"):
        load_lens(path, model)


def test_corrupt_safetensors_and_config(model, tmp_path):
    TunedLens.from_model(model).save(tmp_path / "lens")
    data = (tmp_path / "lens" / "lens.safetensors").read_bytes()
    (tmp_path / "lens" / "lens.safetensors").write_bytes(data[:100])
    with pytest.raises(LensFileError, match="truncated or corrupt"):
        load_lens(tmp_path / "lens", model)
    (tmp_path / "lens" / "config.json").write_text("{not json")
    with pytest.raises(LensFileError, match="not valid JSON"):
        read_lens(tmp_path / "lens")


def test_missing_files(model, tmp_path):
    with pytest.raises(LensFileError, match="no lens directory at"):
        load_lens(tmp_path / "nowhere", model)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(LensFileError, match="found notes.txt"):
        load_lens(tmp_path / "empty", model)
    TunedLens.from_model(model).save(tmp_path / "lens", format="tuned-lens")
    (tmp_path / "lens" / "config.json").unlink()
    with pytest.raises(LensFileError, match="config.json is missing"):
        load_lens(tmp_path / "lens", model)


def test_saving_never_mixes_formats(model, tmp_path):
    lens = TunedLens.from_model(model)
    lens.save(tmp_path / "lens", format="tuned-lens")
    with pytest.raises(LensFileError, match="other format"):
        lens.save(tmp_path / "lens", format="native")
    assert (tmp_path / "lens" / "params.pt").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("bias", "yes", "'bias' must be true or false"),
        ("unembed_hash", "xyz", "sha256 hex digest"),
        ("vocab_size", -3, "'vocab_size' must be a positive integer"),
        ("base_model_name_or_path", 7, "must be a string or null"),
    ],
)
def test_reference_config_fields_are_checked(lens, tmp_path, key, value, message):
    import json

    lens.save(tmp_path / "ref", format="tuned-lens")
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    config[key] = value
    (tmp_path / "ref" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LensFileError, match=message):
        read_lens(tmp_path / "ref")


@pytest.mark.parametrize("points", ["block", "both"])
def test_native_lenses_written_before_the_rows_vocabulary_still_load(model, tmp_path, points):
    lens = _randomised(TunedLens.from_model(model, points=points))
    lens.save(tmp_path / "lens")
    config_path, provenance_path = (
        tmp_path / "lens" / "config.json",
        tmp_path / "lens" / "provenance.json",
    )
    config, provenance = (
        json.loads(config_path.read_text()),
        json.loads(provenance_path.read_text()),
    )
    assert config["n_rows"] == lens.output_row == (4 if points == "both" else 2)
    assert provenance["translator"]["n_rows"] == lens.output_row
    assert "num_hidden_layers" not in config and "n_layers" not in provenance["translator"]
    # The same lens as written before: the number of translators under num_hidden_layers (config)
    # and n_layers (provenance).
    config["num_hidden_layers"] = config.pop("n_rows")
    provenance["translator"]["n_layers"] = provenance["translator"].pop("n_rows")
    config_path.write_text(json.dumps(config))
    provenance_path.write_text(json.dumps(provenance))
    loaded = load_lens(tmp_path / "lens", model)
    assert loaded.points == points and loaded.n_blocks == 2 and loaded.output_row == lens.output_row
    hidden = torch.randn(lens.output_row + 1, 3, 32)
    for row in range(lens.output_row + 1):
        assert torch.equal(loaded(hidden[row], row), lens(hidden[row], row))
    info = describe_lens(tmp_path / "lens")
    labels = ["0", "0.mid", "1", "1.mid"] if points == "both" else ["0", "1"]
    assert info["n_blocks"] == 2 and [row["label"] for row in info["rows"]] == labels
    assert [row["row"] for row in info["rows"]] == list(range(lens.output_row))
    # Converting it writes the new key.
    convert_tuned(tmp_path / "lens", tmp_path / "new", "native")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["n_rows"] == lens.output_row


def test_a_native_config_without_its_number_of_rows_is_refused(model, tmp_path):
    TunedLens.from_model(model).save(tmp_path / "lens")
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    del config["n_rows"]
    (tmp_path / "lens" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LensFileError, match="'n_rows' must be a positive integer, found None"):
        read_lens(tmp_path / "lens")
