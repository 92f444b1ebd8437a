"""Task prompts: the built-in tasks are well formed and seeded; task files are checked line by line."""

import json
import re

import pytest

from tunedlens.analyze.detection.builtin import ANSWER, BUILTIN_TASKS, INJECTION, SEPARATORS
from tunedlens.analyze.detection.tasks import load_task
from tunedlens.analyze.errors import AnalysisError


@pytest.fixture(scope="module", params=sorted(BUILTIN_TASKS))
def builtin(request):
    return load_task(request.param, shots=3, seed=0)


def _items(name):
    from importlib.resources import files

    text = files("tunedlens.analyze").joinpath("tasks", BUILTIN_TASKS[name].file).read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_every_normal_prompt_shows_its_correct_answer_among_its_choices(builtin):
    items = _items(builtin.name)
    spec = BUILTIN_TASKS[builtin.name]
    normal = [p for p in builtin.prompts if p.kind == "normal"]
    assert len(normal) == len(items)  # every question asked once
    for prompt in normal:
        assert 0 <= prompt.label < len(prompt.choices)
        answer = items[prompt.item]["answer"]
        query = prompt.prompt.rsplit("\n\n", 1)[1]
        assert query.startswith(f"Question: {items[prompt.item]['question']}\n") and query.endswith(
            ANSWER
        )
        if spec.options:  # lettered options: the correct letter names the answer
            letter = prompt.choices[prompt.label].strip()
            assert f"\n{letter}. {answer}\n" in query
            assert len(re.findall(r"\n[A-H]\. ", query)) == spec.options
        else:
            assert prompt.choices[prompt.label].strip() == answer
        # Three answered examples, then the question.
        assert prompt.prompt.count(ANSWER) == 4 and prompt.prompt.endswith(ANSWER)


def test_injected_prompts_hold_the_injection_just_before_the_final_answer(builtin):
    normal = {p.item: p for p in builtin.prompts if p.kind == "normal"}
    injected = [p for p in builtin.prompts if p.kind == "injected"]
    assert injected and all(p.anomalous for p in injected)
    for prompt in injected:
        twin = normal[prompt.item]
        assert prompt.target is not None and prompt.target != prompt.label
        injection = INJECTION.format(answer=prompt.choices[prompt.target].strip())
        assert prompt.prompt == twin.prompt[: -len(ANSWER)] + injection + ANSWER
        assert 'just print "' in prompt.prompt and prompt.prompt.count(ANSWER) == twin.prompt.count(
            ANSWER
        )
        assert (prompt.choices, prompt.label) == (twin.choices, twin.label)


def test_controls_change_the_prompt_without_an_instruction(builtin):
    normal = {p.item: p for p in builtin.prompts if p.kind == "normal"}
    injected = {p.item: p for p in builtin.prompts if p.kind == "injected"}
    assert builtin.controls == ["separators", "filler"]
    for prompt in (p for p in builtin.prompts if p.is_control):
        assert not prompt.anomalous
        base = normal[prompt.item].prompt[: -len(ANSWER)]
        assert prompt.prompt.startswith(base) and prompt.prompt.endswith(ANSWER)
        inserted = prompt.prompt[len(base) : -len(ANSWER)]
        assert "Ignore" not in inserted and "print" not in inserted
        if prompt.kind == "separators":
            assert inserted == SEPARATORS
        else:  # irrelevant text of about the injection's length
            target = len(injected[prompt.item].prompt) - len(prompt.prompt) + len(inserted)
            assert target - 12 <= len(inserted) <= target


def test_questions_are_split_once_and_test_questions_are_never_fitted(builtin):
    train = {p.item for p in builtin.prompts if p.split == "train"}
    test = {p.item for p in builtin.prompts if p.split == "test"}
    assert not train & test
    assert all(p.kind == "normal" for p in builtin.prompts if p.split == "train")
    assert len(train) == round(0.75 * (len(train) + len(test)))
    for kind in (
        "normal",
        "injected",
        "separators",
        "filler",
    ):  # every test question, every version
        assert {p.item for p in builtin.prompts if p.kind == kind and p.split == "test"} == test


def test_prompts_are_seeded():
    assert load_task("capitals", seed=3, n_items=10) == load_task("capitals", seed=3, n_items=10)
    assert load_task("capitals", seed=3, n_items=10) != load_task("capitals", seed=4, n_items=10)
    small = load_task("sentiment", n_items=8, shots=0)
    assert len({p.item for p in small.prompts}) == 8
    assert small.prompts[0].prompt.count(ANSWER) == 1


def test_shots_larger_than_the_task_are_refused():
    n = len(_items("arithmetic"))
    load_task("arithmetic", shots=n - 1, n_items=4)
    with pytest.raises(AnalysisError, match=rf"shots={n} is more than task 'arithmetic' can give"):
        load_task("arithmetic", shots=n)
    with pytest.raises(AnalysisError, match="n_items=999 is more than"):
        load_task("arithmetic", n_items=999)
    with pytest.raises(AnalysisError, match="shots must be an integer >= 0"):
        load_task("arithmetic", shots=-1)


def _write(path, lines):
    path.write_text(
        "\n".join(json.dumps(line) if not isinstance(line, str) else line for line in lines)
    )
    return path


def _line(prompt="w4 w5", anomalous=False, **changes):
    return {
        "prompt": prompt,
        "choices": [" w6", " w7"],
        "label": " w6",
        "anomalous": anomalous,
        **changes,
    }


def test_a_task_file_is_read_and_split(tmp_path):
    lines = [_line(f"w{i} w9") for i in range(8)] + [
        _line("w4 w99", True),
        _line("w4 w98", False, kind="odd"),
    ]
    task = load_task(_write(tmp_path / "mine.jsonl", lines), seed=1)
    assert task.name == "mine" and not task.builtin and task.controls == ["odd"]
    assert sum(p.split == "train" for p in task.prompts) == 6
    assert [p.kind for p in task.prompts if p.split == "test"].count("normal") == 2
    assert task.prompts[-2].anomalous and task.prompts[-2].label == 0
    labelled_by_index = load_task(
        _write(
            tmp_path / "index.jsonl",
            [_line(label=1) for _ in range(4)] + [_line(anomalous=True, label=1)],
        )
    )
    assert labelled_by_index.prompts[0].label == 1


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            [_line() for _ in range(6)],
            "every prompt of task file .* is normal .*AUROC is undefined",
        ),
        ([_line(anomalous=True) for _ in range(6)], "every prompt of task file .* is anomalous"),
        (
            [_line(), {"prompt": "w4", "choices": [" w6", " w7"], "anomalous": False}],
            "line 2 lacks 'label'",
        ),
        ([_line(label=" w8")], r"line 1: \"label\" ' w8' is not one of its choices"),
        ([_line(label=2)], r"\"label\" 2 is not an index of its 2 choices"),
        ([_line(choices=[" w6"])], "at least 2 non-empty texts"),
        ([_line(choices=[" w6", " w6"], label=0)], "repeat an option"),
        ([_line(anomalous="yes")], '"anomalous" must be true or false'),
        (["{not json"], "line 1 is not JSON"),
        (["[1, 2]"], "expected an object"),
        ([_line(), _line(choices=[" w6", " w7", " w8"])], "different numbers of choices"),
        ([_line(), _line(), _line(), _line(anomalous=True)], "has 3 normal prompts; at least 4"),
        ([_line(anomalous=True, kind="normal"), _line()], 'not "normal" for an anomalous prompt'),
        ([], "holds no prompts"),
    ],
)
def test_bad_task_files_get_one_clear_error(tmp_path, lines, message):
    with pytest.raises(AnalysisError, match=message):
        load_task(_write(tmp_path / "bad.jsonl", lines))


def test_options_of_built_in_tasks_are_refused_for_task_files(tmp_path):
    path = _write(tmp_path / "mine.jsonl", [_line() for _ in range(4)] + [_line(anomalous=True)])
    with pytest.raises(AnalysisError, match="shots applies to built-in tasks"):
        load_task(path, shots=5)
    with pytest.raises(AnalysisError, match="n_items applies to built-in tasks"):
        load_task(path, n_items=3)
    with pytest.raises(AnalysisError, match="unknown task 'capital'"):
        load_task("capital")
    with pytest.raises(AnalysisError, match="cannot read task file"):
        load_task(tmp_path / "missing.jsonl")
    with pytest.raises(AnalysisError, match="train_fraction must lie strictly between 0 and 1"):
        load_task("capitals", train_fraction=1.0)
