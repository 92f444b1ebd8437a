"""MACs per token: a hand computation, the config count against the weights, exit costs."""

import numpy as np
import pytest

from tiny_models import random_lens, tiny_model
from tunedlens import LogitLens
from tunedlens.analyze.compute import MOE, compute_model, lens_macs
from tunedlens.analyze.exit_rules import MEASURES, check_costs, check_schedule, token_costs
from tunedlens.arch.resolve import resolve_arch


def test_tiny_llama_matches_a_hand_computation():
    # d = 32, 4 query heads and 2 key/value heads of width 8, MLP width 64, vocabulary 128.
    compute = compute_model(tiny_model("llama"))
    q, k, v, o = 32 * 32, 32 * 16, 32 * 16, 32 * 32
    mlp = 3 * 32 * 64  # gate, up, down
    assert [b.fixed for b in compute.blocks] == [q + k + v + o + mlp] * 2 == [9216, 9216]
    assert [b.per_key for b in compute.blocks] == [2 * 4 * 8] * 2  # QKᵀ and the weighted values
    assert [b.kv for b in compute.blocks] == [k + v] * 2
    assert compute.head == 32 * 128
    context = np.array([1, 5, 20])
    assert compute.full(context).tolist() == [2 * (9216 + 64 * n) + 4096 for n in (1, 5, 20)]
    assert compute.propagation().tolist() == [2048, 1024, 0]


def test_mixture_of_experts_counts_the_routed_experts_and_the_router():
    compute = compute_model(tiny_model("mixtral"))  # 4 experts, 2 per token, width 64
    attention = 32 * 32 + 2 * 32 * 16 + 32 * 32
    assert compute.blocks[0].fixed == attention + 2 * 3 * 32 * 64 + 32 * 4
    assert compute.mlp == "moe"


@pytest.mark.parametrize(
    "model_type",
    [
        "gpt2",
        "gpt_bigcode",
        "bloom",
        "falcon",
        "gpt_neox",
        "opt",
        "phi",
        "qwen3",
        "gemma2",
        "phi3",
        "olmo2",
        "glm",
    ],
)
def test_the_config_count_equals_the_weights_of_each_dense_block(model_type):
    assert model_type not in MOE
    model = tiny_model(model_type)
    compute = compute_model(model)
    weights = [
        sum(
            m.weight.numel()
            for m in block.modules()
            if getattr(m, "weight", None) is not None and m.weight.dim() == 2
        )
        for block in resolve_arch(model).layers
    ]
    assert [b.fixed for b in compute.blocks] == weights


def test_sliding_window_layers_attend_to_at_most_the_window():
    compute = compute_model(tiny_model("gemma2"))  # sliding_window 16 on alternate layers
    windows = [b.window for b in compute.blocks]
    assert windows.count(16) == 1 and windows.count(None) == 1
    cumulative = compute.cumulative(np.array([40]))
    assert cumulative[0, -1] == 2 * 9216 + 64 * 16 + 64 * 40


def test_lens_maps_cost_their_matrices():
    model = tiny_model("llama")
    tuned = random_lens(model)
    assert lens_macs(tuned, 0) == 32 * 32 and lens_macs(tuned, 2) == 0  # the output row: the head
    assert lens_macs(LogitLens(model), 1) == 0


def test_an_exit_costs_its_blocks_propagation_checks_and_nothing_else():
    model = tiny_model("llama")
    compute = compute_model(model)
    decode = np.array([4096 + 1024, 4096 + 1024, 4096.0])  # tuned lens: head + translator
    schedule = check_schedule(2, 1)
    measure = MEASURES["max-prob"]
    checks = check_costs(measure, schedule, decode)
    context = np.array([3, 3, 3])
    rows = np.array([0, 1, 2])
    cost = token_costs(
        rows,
        compute.cumulative(context),
        compute.propagation(),
        checks,
        decode,
        compute.head,
        measure,
    )
    block = 9216 + 64 * 3
    assert cost.tolist() == [
        2 * 1024 + 5120,  # row 0: no block, both blocks' K/V, one check (its reading is the output)
        block + 1024 + 2 * 5120,  # row 1: block 0, block 1's K/V, two checks
        2 * block + 2 * 5120 + 4096,  # never: every block, both checks failed, the model's head
    ]
    saturation = MEASURES["saturation"]  # decides without decoding: the exit row is read once
    cost = token_costs(
        rows,
        compute.cumulative(context),
        compute.propagation(),
        check_costs(saturation, schedule, decode),
        decode,
        compute.head,
        saturation,
    )
    assert cost.tolist() == [2 * 1024 + 5120, block + 1024 + 5120, 2 * block + 4096]


def test_step_kl_checks_also_read_the_row_before_unless_it_was_checked():
    decode = np.array([10.0, 20.0, 40.0, 80.0, 160.0])
    measure = MEASURES["step-kl"]
    every = check_costs(measure, np.array([0, 1, 2, 3]), decode)
    sparse = check_costs(measure, np.array([2]), decode)
    assert every.tolist() == [10, 30, 70, 150, 150]
    assert sparse.tolist() == [0, 0, 60, 60, 60]  # row 2 and row 1
