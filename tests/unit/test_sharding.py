"""Sharded loading (``--fsdp``) for J-lens fits and training, under two gloo processes.

One spawn runs, on a model loaded shard by shard from its safetensors files: a J-lens fit (the
VJPs pass through the FSDP-sharded blocks, uneven prompt shares and a skipped prompt included),
and the ``fit-jlens`` and ``train`` commands with ``fsdp=True``. Each equals what one process
computes with the whole model, and each command's data is packed once, by the first process.
Bad input is refused before any weight is read.
"""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

from tiny_models import N_LAYERS, tiny_model, tiny_tokenizer, word_text
from tunedlens.commands import fit_jlens, train
from tunedlens.distributed import World, init_world
from tunedlens.errors import InputError, ModelLoadError
from tunedlens.jacobian.fit import fit_jacobian_lens
from tunedlens.sharding import is_sharded, load_sharded, plan_sharded_load
from tunedlens.train import recipe_config

FIT = dict(prompts=3, seq_len=16, skip_first=2, dim_batch=8)


def _prompts():
    generator = torch.Generator().manual_seed(3)
    lengths = (12, 9, 3, 14, 10)  # 3 + 2 prompts; the 3-token one has no valid position
    return [torch.randint(3, 120, (n,), generator=generator) for n in lengths]


def _config(batch_size):
    return recipe_config(
        "default",
        tokens=16 * 32,
        tokens_per_step=16 * 8,
        seq_len=16,
        batch_size=batch_size,
        lstsq_tokens=256,
        lstsq_budget_share=0.5,
        positions_per_sequence=6,
    )


def _model():
    # intermediate_size 63 splits unevenly (32 + 31 rows) between two processes
    return tiny_model("llama", initializer_range=0.2, logit_gain=3.0, intermediate_size=63)


@pytest.fixture
def root(tmp_path):
    """model/ (safetensors in several files with an index, and a tokenizer) and text.txt."""
    _model().save_pretrained(tmp_path / "model", max_shard_size="20KB")
    assert (tmp_path / "model" / "model.safetensors.index.json").exists()
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    word_text(tmp_path / "text.txt")
    return tmp_path


def _count_packing(counts):
    """Count the packings this process does (fit-jlens packs prompts, train plans its data)."""
    import tunedlens.data

    pack, plan = tunedlens.data.pack_blocks, train.plan_data

    def counted_pack(*args, **kwargs):
        counts["fit-jlens"] += 1
        return pack(*args, **kwargs)

    def counted_plan(*args, **kwargs):
        counts["train"] += 1
        return plan(*args, **kwargs)

    tunedlens.data.pack_blocks = counted_pack
    train.plan_data = counted_plan


def _worker(rank, port, root):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    counts = {"fit-jlens": 0, "train": 0}
    _count_packing(counts)
    world = init_world()
    lines = []
    model, _ = load_sharded(
        plan_sharded_load(f"{root}/model", world), world, on_status=lines.append
    )
    assert lines == [] and is_sharded(model)
    local = model.model.layers[0].mlp.up_proj.weight.to_local()
    assert local.shape[0] == (32, 31)[rank]
    lens = fit_jacobian_lens(model, _prompts(), skip_first=2, dim_batch=5, world=world)
    with torch.no_grad():  # as training runs the model: each block lets go of its gathered weights
        model(input_ids=_prompts()[0][None])
    assert all(isinstance(p, DTensor) for p in model.model.layers.parameters())
    if rank == 0:
        matrices = {f"row.{r}": m for r, m in lens.matrices.items()}
        torch.save({"n": lens.n_prompts, **matrices}, f"{root}/direct.pt")
    model = None
    text = f"{root}/text.txt"
    train.run(f"{root}/model", _config(4), f"{root}/lens-2", data=text, fsdp=True, world=world)
    fit_jlens.run(f"{root}/model", f"{root}/jlens-2", data=text, fsdp=True, world=world, **FIT)
    with open(f"{root}/counts-{rank}.json", "w") as file:
        json.dump(counts, file)
    world.close()
    # Its results are written: end without interpreter teardown, where gloo's threads now and
    # then abort a finished process ("terminate called without an active exception").
    os._exit(0)


def test_sharded_fits_and_training_equal_one_process(root):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, str(root)), nprocs=2, join=True)

    # The fit's VJPs through the sharded blocks add up to one process's fit of every prompt.
    whole = fit_jacobian_lens(_model(), _prompts(), skip_first=2, dim_batch=5)
    direct = torch.load(root / "direct.pt", weights_only=True)
    assert direct["n"] == whole.n_prompts == 4
    for row in whole.rows:
        torch.testing.assert_close(direct[f"row.{row}"], whole.matrices[row], rtol=1e-5, atol=1e-6)

    # The commands, sharded on two processes and whole on one.
    text = str(root / "text.txt")
    train.run(str(root / "model"), _config(8), root / "lens-1", data=text)
    fit_jlens.run(str(root / "model"), root / "jlens-1", data=text, **FIT)
    for name in ("lens-", "jlens-"):
        (one,) = (root / f"{name}1").glob("*.safetensors")
        two = load_file(root / f"{name}2" / one.name)
        for key, value in load_file(one).items():
            assert torch.count_nonzero(value) > 0, key
            torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}{key}")

    # Start-up does not grow with processes: the first process packs, the other receives.
    counts = [json.loads((root / f"counts-{rank}.json").read_text()) for rank in (0, 1)]
    assert counts == [{"fit-jlens": 1, "train": 1}, {"fit-jlens": 0, "train": 0}]


# Bad input: refused from configs and indexes alone, before any weight is read.


def _no_weights(monkeypatch):
    """Any attempt to load a model whole fails the test."""
    import tunedlens.sharding

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(tunedlens.sharding, "load_model", refuse)


def test_one_process_is_refused(root, monkeypatch):
    _no_weights(monkeypatch)
    with pytest.raises(InputError, match="torchrun --nproc-per-node N"):
        plan_sharded_load(str(root / "model"), World())
    with pytest.raises(InputError, match="torchrun --nproc-per-node N"):
        train.run(
            str(root / "model"), _config(8), root / "out", data=str(root / "text.txt"), fsdp=True
        )
    with pytest.raises(InputError, match="torchrun --nproc-per-node N"):
        fit_jlens.run(str(root / "model"), root / "out", data=str(root / "text.txt"), fsdp=True)
    assert not (root / "out").exists()


def test_more_processes_than_blocks_are_refused(root, monkeypatch):
    _no_weights(monkeypatch)
    world = World(rank=0, size=N_LAYERS + 1)
    with pytest.raises(InputError, match=f"{N_LAYERS + 1} processes for a model of {N_LAYERS}"):
        plan_sharded_load(str(root / "model"), world)
    for run, options in ((train.run, {"config": _config(8)}), (fit_jlens.run, {})):
        with pytest.raises(InputError, match=f"use at most {N_LAYERS}"):
            run(
                str(root / "model"),
                out=root / "out",
                data=str(root / "text.txt"),
                fsdp=True,
                world=world,
                **options,
            )
    assert not (root / "out").exists()


def test_gguf_before_its_copy_is_refused(root, monkeypatch, tmp_path):
    _no_weights(monkeypatch)
    gguf = tmp_path / "model-Q8_0.gguf"
    gguf.write_bytes(b"GGUF")  # never read: its safetensors copy is looked up first
    monkeypatch.setenv("TUNEDLENS_CACHE", str(tmp_path / "cache"))
    world = World(rank=0, size=2)
    with pytest.raises(ModelLoadError, match="not made yet") as caught:
        plan_sharded_load(str(gguf), world)
    assert f"tunedlens predict {gguf} hello" in str(caught.value)
    with pytest.raises(ModelLoadError, match="not made yet"):
        train.run(
            str(gguf), _config(8), root / "out", data=str(root / "text.txt"), fsdp=True, world=world
        )
    assert not (root / "out").exists()


def test_checkpoint_without_index_says_it_loads_whole(root, tiny_tokenizer):
    """The fallback itself (loaded whole, then sharded) is trained in train/test_distributed.py."""
    folder = root / "pickled"
    model = _model()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    plan = plan_sharded_load(str(folder), World(rank=0, size=2))
    assert plan.weights is None
    assert "no model.safetensors.index.json" in plan.why
    single = root / "single"
    model.save_pretrained(single)  # one file: its header serves as the index
    assert not (single / "model.safetensors.index.json").exists()
    plan = plan_sharded_load(str(single), World(rank=0, size=2))
    assert plan.why is None and set(plan.weights.values()) == {single / "model.safetensors"}
