"""J-lens files: every field of a native config and an artifact is type-checked; torch files are
told apart (not a torch file, a pickle, code) without ever advising ``weights_only=False``."""

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from tunedlens.errors import LensFileError
from tunedlens.jacobian.fit import fit_jacobian_lens
from tunedlens.lenses.io.info import describe_lens
from tunedlens.lenses.io.jlens_files import read_stored_jlens


@pytest.fixture
def native(model, input_ids, tmp_path):
    fit_jacobian_lens(model, input_ids, skip_first=2).save(tmp_path / "jlens")
    return tmp_path / "jlens"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_hidden_layers", "thirty", "'num_hidden_layers' must be a positive integer"),
        ("n_prompts", "many", "'n_prompts' must be an integer >= 0"),
        ("n_prompts", -1, "'n_prompts' must be an integer >= 0"),
        ("unembed_hash", 12345, "'unembed_hash' must be a sha256 hex digest"),
        ("vocab_size", True, "'vocab_size' must be a positive integer"),
        ("base_model_name_or_path", ["a"], "'base_model_name_or_path' must be a string"),
        ("d_model", 32.0, "'d_model' must be a positive integer"),
        ("rows", "all", "'rows' must be a list of row numbers"),
        ("rows", [0], r"holds rows \[0, 1\], config.json lists \[0\]"),
        ("metadata", [1], "'metadata' must be a JSON object"),
        ("format_version", "1", "not a tunedlens J-lens config"),
    ],
)
def test_every_native_config_field_is_type_checked(native, model, key, value, message):
    config = json.loads((native / "config.json").read_text())
    config[key] = value
    (native / "config.json").write_text(json.dumps(config))
    for read in (read_stored_jlens, describe_lens):  # loading and `lens info` alike
        with pytest.raises(LensFileError, match=message):
            read(native)


def test_native_tensors_are_checked(native):
    tensors = load_file(native / "jlens.safetensors")
    save_file({**tensors, "row.x": tensors["row.0"].clone()}, native / "jlens.safetensors")
    with pytest.raises(LensFileError, match="'row.x'; a J-lens holds tensors 'row.N' only"):
        read_stored_jlens(native)
    save_file({"row.0": torch.zeros(4, 4)}, native / "jlens.safetensors")
    with pytest.raises(LensFileError, match=r"'row.0' has shape \(4, 4\), config.json says"):
        read_stored_jlens(native)


def test_every_artifact_field_is_type_checked(native, tmp_path):
    read_stored_jlens(native)  # a good lens reads
    lens_file = tmp_path / "lens.pt"
    from tunedlens.lenses.io.jlens_files import convert_jlens

    convert_jlens(native, lens_file, "artifact")
    payload = torch.load(lens_file, weights_only=True)

    def stored(**changes):
        torch.save({**payload, **changes}, tmp_path / "changed.pt")
        return read_stored_jlens(tmp_path / "changed.pt")

    assert stored(n_prompts=torch.tensor(3)).n_prompts == 3  # a 0-d tensor is a count too
    for changes, message in (
        ({"n_prompts": "many"}, "'n_prompts' must be an integer >= 0"),
        ({"d_model": "wide"}, "'d_model' must be a positive integer"),
        ({"J": {"x": payload["J"][0]}}, "the keys of 'J' must be block indices"),
        ({"source_layers": "all"}, "'source_layers' must be a list of block indices"),
        ({"metadata": [1]}, "'metadata' must be a dict"),
    ):
        with pytest.raises(LensFileError, match=message):
            stored(**changes)


class _Code:
    def __reduce__(self):
        return (print, ("ran code",))


def _random_bytes():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2000,), generator=generator, dtype=torch.uint8).numpy().tobytes()


FILES = {
    "random bytes": (
        _random_bytes,
        r"is not a torch file \(neither a torch.save archive nor a pickle",
    ),
    "text": (lambda: b"plain text\n" * 20, "so it is not a J-lens artifact"),
    "empty": (lambda: b"", "is not a readable torch file"),
    "pickle": (lambda: pickle.dumps({"J": [1, 2]}), "is a plain Python pickle"),
    "pickle with code": (lambda: pickle.dumps({"J": _Code()}), "is a plain Python pickle"),
    "torch file with code": ("code", r"holds Python objects other than tensors \(print\)"),
    "truncated": ("truncated", "truncated or corrupt"),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_a_file_that_is_not_a_lens_says_so(native, tmp_path, capsys, case):
    content, message = FILES[case]
    path = tmp_path / "file.pt"
    if content == "code":
        torch.save({"J": _Code()}, path)
    elif content == "truncated":
        convert_to = tmp_path / "good.pt"
        from tunedlens.lenses.io.jlens_files import convert_jlens

        convert_jlens(native, convert_to, "artifact")
        path.write_bytes(convert_to.read_bytes()[:300])
    else:
        path.write_bytes(content())
    for read in (read_stored_jlens, describe_lens):
        with pytest.raises(LensFileError, match=message) as caught:
            read(path)
        assert "weights_only" not in str(caught.value)  # never the advice to unpickle anyway
    assert "ran code" not in capsys.readouterr().out
