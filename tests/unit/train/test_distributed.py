"""Two gloo processes over the same global batch match one process (float tolerance).

Four ways to hold the model: replicated (ddp), loaded whole then sharded (fsdp), loaded shard by
shard from its safetensors files (sharded), and a checkpoint without safetensors, loaded whole
and sharded after one line saying so (fallback). Each trains the lens one process trains.
"""

import os
import socket

import torch
import torch.multiprocessing as mp

from tiny_models import tiny_model
from tunedlens.distributed import init_world
from tunedlens.lenses import TunedLens
from tunedlens.train import recipe_config, train_lens
from tunedlens.train.distributed import shard_blocks

# intermediate_size 63 splits unevenly (32 + 31 rows); the head is tied to the embeddings.
SHARDED_MODEL = dict(intermediate_size=63, tie_word_embeddings=True)


def _config(batch_size):
    return recipe_config(
        "default",
        tokens=16 * 64,
        tokens_per_step=16 * 8,
        seq_len=16,
        batch_size=batch_size,
        lstsq_tokens=512,
        lstsq_budget_share=0.5,
        positions_per_sequence=6,
    )


def _data():
    return torch.randint(3, 120, (64, 16), generator=torch.Generator().manual_seed(0))


def _model(mode):
    changes = SHARDED_MODEL if mode in ("sharded", "fallback") else {}
    return tiny_model("llama", initializer_range=0.2, logit_gain=3.0, **changes)


def _save(mode, folder):
    """The model as a user's checkpoint: safetensors (sharded) or a pickled state dict only."""
    model = _model(mode)
    if mode == "sharded":
        model.save_pretrained(folder, max_shard_size="20KB")  # several files and an index
        assert (folder / "model.safetensors.index.json").exists()
    else:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")


def _hold(mode, folder, world):
    """The model as ``mode`` holds it across the two processes."""
    if mode in ("ddp", "fsdp"):
        model = _model(mode)
        if mode == "fsdp":
            shard_blocks(model, world)
            local = model.model.layers[0].mlp.down_proj.weight.to_local()
            assert local.shape[0] == 16  # half of the 32 rows lives on each process
        return model
    import tunedlens.sharding as sharding

    lines = []
    plan = sharding.plan_sharded_load(folder, world)
    if mode == "fallback":
        model, _ = sharding.load_sharded(plan, world, on_status=lines.append)
        assert len(lines) == 1 and "loaded whole on every process" in lines[0], lines
        assert "model.safetensors.index.json" in lines[0]
        return model
    whole = sharding.load_model
    sharding.load_model = None  # the whole-model loader is never used
    try:
        model, _ = sharding.load_sharded(plan, world, on_status=lines.append)
    finally:
        sharding.load_model = whole
    assert lines == []
    gate = model.model.layers[1].mlp.gate_proj.weight
    assert gate.to_local().shape[0] == (32, 31)[world.rank]  # torch.chunk's split of 63 rows
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, and whole
    assert model.lm_head.weight.shape == (128, 32)
    return model


def _worker(rank, port, root):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    world = init_world()
    for mode in MODES:
        model = _hold(mode, f"{root}/{mode}-model", world)
        lens = TunedLens.from_model(model)
        train_lens(lens, model, _data(), _config(batch_size=4), world=world)
        if rank == 0:
            torch.save(lens.translator.state_dict(), f"{root}/{mode}.pt")
    world.close()
    # Its results are written: end without interpreter teardown, where gloo's threads now and
    # then abort a finished process ("terminate called without an active exception").
    os._exit(0)


MODES = ("ddp", "fsdp", "sharded", "fallback")


def test_two_processes_match_one(tmp_path):
    """One spawn for the four modes: starting two processes costs more than training here."""
    for mode in ("sharded", "fallback"):
        _save(mode, tmp_path / f"{mode}-model")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for mode in MODES:
        model = _model(mode)
        single = TunedLens.from_model(model)
        train_lens(single, model, _data(), _config(batch_size=8))
        distributed = torch.load(tmp_path / f"{mode}.pt", weights_only=True)
        for name, value in single.translator.state_dict().items():
            torch.testing.assert_close(
                distributed[name],
                value,
                rtol=1e-4,
                atol=1e-5,
                msg=lambda m, mode=mode: f"{mode}: {m}",
            )
        assert torch.count_nonzero(distributed["weight"]) > 0
