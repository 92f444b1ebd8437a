"""Two gloo processes over the same global batch match one process (float tolerance)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tiny_models import tiny_model
from tunedlens.distributed import init_world
from tunedlens.lenses import TunedLens
from tunedlens.train import recipe_config, train_lens
from tunedlens.train.distributed import shard_blocks


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


def _worker(rank, port, out, fsdp):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    world = init_world()
    model = tiny_model("llama", initializer_range=0.2, logit_gain=3.0)
    lens = TunedLens.from_model(model)
    if fsdp:
        shard_blocks(model, world)
        local = model.model.layers[0].mlp.down_proj.weight.to_local()
        assert local.shape[0] == 16  # half of the 32 rows lives on each process
    train_lens(lens, model, _data(), _config(batch_size=4), world=world)
    if rank == 0:
        torch.save(lens.translator.state_dict(), out)
    world.close()


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, fsdp):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path / "ddp.pt"), fsdp), nprocs=2, join=True)
    model = tiny_model("llama", initializer_range=0.2, logit_gain=3.0)
    single = TunedLens.from_model(model)
    train_lens(single, model, _data(), _config(batch_size=8))
    distributed = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for name, value in single.translator.state_dict().items():
        torch.testing.assert_close(distributed[name], value, rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(distributed["weight"]) > 0
