"""Every consumer of the readout engine reproduces the numbers recorded before it existed.

``tests/golden/readout.json`` was written by ``tests/golden/record.py`` on the code before the
readout engine (predict, trajectories, the notebook facade, evaluate with its prompt suite and
transfer matrix, layer_kl each had their own mechanism then). Float32 results must agree within
1e-5; token ids, labels and ranks exactly.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parents[2] / "golden"


def _record_module():
    spec = importlib.util.spec_from_file_location("golden_record", GOLDEN_DIR / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compare(expected, actual, where: str, problems: list) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        missing = set(expected) ^ set(actual)
        if missing:
            problems.append(f"{where}: keys differ {sorted(missing)[:5]}")
        for key in expected:
            if key in actual:
                _compare(expected[key], actual[key], f"{where}/{key}", problems)
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            problems.append(
                f"{where}: length {len(expected)} vs {len(actual) if isinstance(actual, list) else actual!r}"
            )
            return
        for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _compare(e, a, f"{where}[{index}]", problems)
    elif isinstance(expected, float) and not isinstance(actual, str):
        # The fitted temperature is the argmin of a KL that is flat to ~1e-9 bits around T = 1
        # when the output row is exact: its location moves with the last bit of the logits.
        tolerance = 1e-3 if where.endswith("/temperature") else 1e-5
        if actual is None or (math.isnan(expected) != math.isnan(float(actual))):
            problems.append(f"{where}: {expected} vs {actual}")
        elif not math.isnan(expected) and abs(expected - actual) > tolerance * max(
            1.0, abs(expected)
        ):
            problems.append(f"{where}: {expected} vs {actual}")
    elif expected != actual:
        problems.append(f"{where}: {expected!r} vs {actual!r}")


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_consumers_reproduce_the_golden_numbers(model_type, tmp_path):
    golden = json.loads((GOLDEN_DIR / "readout.json").read_text())[model_type]
    actual = json.loads(json.dumps(_record_module().record(model_type, tmp_path)))
    problems: list[str] = []
    _compare(golden, actual, model_type, problems)
    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} differences)"
