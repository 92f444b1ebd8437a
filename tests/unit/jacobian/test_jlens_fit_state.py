"""J-lens fits: resume is bit-identical, slices merge to the whole fit, torchrun adds the sums."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tiny_models import tiny_model
from tunedlens.distributed import init_world
from tunedlens.jacobian.fit import fit_jacobian_lens, merge_jacobian_lenses, prompt_slice
from tunedlens.jacobian.state import FitState, FitStateError, state_file


def _prompts():
    generator = torch.Generator().manual_seed(3)
    lengths = (12, 9, 3, 14, 10)  # the 3-token prompt has no valid position with skip_first=2
    return [torch.randint(3, 120, (n,), generator=generator) for n in lengths]


class Stop(Exception):
    pass


def _stop_after(count):
    def progress(done, _total):
        if done == count:
            raise Stop

    return progress


def test_resume_is_bit_identical_to_an_uninterrupted_fit(model, tmp_path):
    whole = fit_jacobian_lens(model, _prompts(), skip_first=2, dim_batch=5)
    with pytest.raises(Stop):
        fit_jacobian_lens(
            model,
            _prompts(),
            skip_first=2,
            dim_batch=5,
            checkpoint=tmp_path,
            checkpoint_every=2,
            progress=_stop_after(3),
        )
    state = FitState.load(state_file(tmp_path))
    assert (state.next_index, state.n_done, state.skipped) == (2, 2, 0)  # saved every 2 prompts
    resumed = fit_jacobian_lens(
        model,
        _prompts(),
        skip_first=2,
        dim_batch=5,
        checkpoint=tmp_path,
        checkpoint_every=2,
        resume=True,
    )
    assert resumed.n_prompts == whole.n_prompts == 4 and resumed.metadata["skipped_prompts"] == 1
    for row in whole.rows:
        assert torch.equal(resumed.matrices[row], whole.matrices[row]), row
    assert FitState.load(state_file(tmp_path)).next_index == 5  # the last state is saved too


def test_resume_refuses_other_settings_prompts_or_damage(model, tmp_path):
    fit_jacobian_lens(model, _prompts()[:2], skip_first=2, dim_batch=5, checkpoint=tmp_path)
    with pytest.raises(FitStateError, match="skip_first: 2 -> 3"):
        fit_jacobian_lens(
            model, _prompts()[:2], skip_first=3, dim_batch=5, checkpoint=tmp_path, resume=True
        )
    with pytest.raises(FitStateError, match="prompts_hash"):
        fit_jacobian_lens(
            model, _prompts()[1:3], skip_first=2, dim_batch=5, checkpoint=tmp_path, resume=True
        )
    with pytest.raises(FitStateError, match="unembed_hash"):
        fit_jacobian_lens(
            tiny_model("llama", seed=9),
            _prompts()[:2],
            skip_first=2,
            dim_batch=5,
            checkpoint=tmp_path,
            resume=True,
        )
    with pytest.raises(FitStateError, match="does not exist"):
        fit_jacobian_lens(
            model, _prompts()[:2], skip_first=2, checkpoint=tmp_path / "none", resume=True
        )
    path = state_file(tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FitStateError, match="damaged"):
        fit_jacobian_lens(
            model, _prompts()[:2], skip_first=2, dim_batch=5, checkpoint=tmp_path, resume=True
        )


def test_resume_names_the_prompt_settings_that_changed(model, tmp_path):
    source = {"data": "a.txt", "seq_len": 12, "seed": 0}
    prompts, other = _prompts()[:2], _prompts()[1:3]
    fit = {"skip_first": 2, "dim_batch": 5, "checkpoint": tmp_path}
    fit_jacobian_lens(model, prompts, **fit, metadata=source)
    changes = (("seq_len", 9, "--seq-len"), ("data", "b.txt", "--data"), ("seed", 1, "--seed"))
    for key, value, option in changes:
        with pytest.raises(FitStateError, match=rf"\({key} \({option}\): ") as caught:
            fit_jacobian_lens(model, other, **fit, resume=True, metadata={**source, key: value})
        assert "prompts_hash" not in str(caught.value)  # other prompts follow from the setting
    elsewhere = {**source, "data": "./a.txt"}  # the same text and prompts, named another way
    assert fit_jacobian_lens(model, prompts, **fit, resume=True, metadata=elsewhere).n_prompts == 2
    path = state_file(tmp_path)  # a checkpoint written before these were recorded
    state = FitState.load(path)
    state.settings = {key: v for key, v in state.settings.items() if key not in source}
    state.save(path)
    assert fit_jacobian_lens(model, prompts, **fit, resume=True, metadata=source).n_prompts == 2
    with pytest.raises(FitStateError, match="prompts_hash"):  # its prompts are still checked
        fit_jacobian_lens(model, other, **fit, resume=True, metadata={**source, "seq_len": 9})


def test_bad_arguments_are_named_one_by_one(model):
    for prompts in ([], torch.zeros(0, 8, dtype=torch.long)):
        with pytest.raises(ValueError, match="no prompts were given"):
            fit_jacobian_lens(model, prompts)
    for setting in ({"skip_first": -1}, {"dim_batch": 0}, {"checkpoint_every": 0}):
        ((name, value),) = setting.items()
        with pytest.raises(ValueError, match=rf"^{name} \(.*\) must be >= .*, got {value}$"):
            fit_jacobian_lens(model, _prompts(), **setting)


def test_slices_merge_to_the_whole_fit(model):
    prompts = _prompts()
    whole = fit_jacobian_lens(model, prompts, skip_first=2, dim_batch=5)
    parts = [
        fit_jacobian_lens(
            model, prompts[prompt_slice(len(prompts), i, 2)], skip_first=2, dim_batch=5
        )
        for i in range(2)
    ]
    assert [p.n_prompts for p in parts] == [2, 2]  # 3 + 2 prompts, one of them too short
    merged = merge_jacobian_lenses(parts)
    assert merged.n_prompts == 4 and merged.metadata["skipped_prompts"] == 1
    for row in whole.rows:
        torch.testing.assert_close(merged.matrices[row], whole.matrices[row], rtol=1e-6, atol=1e-7)
    other = fit_jacobian_lens(model, prompts[:2], skip_first=3, dim_batch=5)
    with pytest.raises(ValueError, match="skip_first=3"):
        merge_jacobian_lenses([parts[0], other])
    with pytest.raises(ValueError, match="another model"):
        merge_jacobian_lenses(
            [parts[0], fit_jacobian_lens(tiny_model("llama", seed=9), prompts[:2], skip_first=2)]
        )


def test_prompt_slices_cover_every_prompt_once():
    for n in range(1, 12):
        for size in range(1, n + 1):
            covered = [i for rank in range(size) for i in range(n)[prompt_slice(n, rank, size)]]
            assert covered == list(range(n))


def _worker(rank, port, out):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    world = init_world()
    lens = fit_jacobian_lens(
        tiny_model("llama"), _prompts(), skip_first=2, dim_batch=5, world=world
    )
    if rank == 0:
        torch.save({"n": lens.n_prompts, **{f"row.{r}": m for r, m in lens.matrices.items()}}, out)
    world.close()
    # Its results are written: end without interpreter teardown, where gloo's threads now and
    # then abort a finished process ("terminate called without an active exception").
    os._exit(0)


def test_two_processes_add_their_sums(model, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path / "dist.pt")), nprocs=2, join=True)
    whole = fit_jacobian_lens(model, _prompts(), skip_first=2, dim_batch=5)
    distributed = torch.load(tmp_path / "dist.pt", weights_only=True)
    assert distributed["n"] == whole.n_prompts
    for row in whole.rows:
        torch.testing.assert_close(
            distributed[f"row.{row}"], whole.matrices[row], rtol=1e-6, atol=1e-7
        )
