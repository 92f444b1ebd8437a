"""Which blocks can go: removal, scores, measured truth, curves, healing, bad input, the report."""

import json
import math

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from tiny_models import random_lens, tiny_config
from tunedlens import LensMismatch, LogitLens, collect_residuals, readout
from tunedlens.analyze import PruneReport, prune
from tunedlens.analyze.errors import AnalysisError
from tunedlens.analyze.pruning import HealConfig, check_prune_args
from tunedlens.analyze.pruning.heal import fit_heal, held_out_split
from tunedlens.analyze.pruning.scores import spearman
from tunedlens.analyze.removal import blocks_removed, greedy_continuation, pruned_final_states
from tunedlens.arch.resolve import resolve_arch
from tunedlens.metrics.divergence import NATS_TO_BITS, kl_divergence
from tunedlens.plot.html import bundle_name

N_BLOCKS = 5


def deep_model(model_type: str = "llama", n_blocks: int = N_BLOCKS, seed: int = 0):
    """A seeded tiny model with ``n_blocks`` blocks (tiny_model builds 2) and O(1) logits."""
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, num_hidden_layers=n_blocks))
    model = model.eval().requires_grad_(False)
    assert resolve_arch(model).n_blocks == n_blocks
    model.get_output_embeddings().weight.mul_(30.0)
    return model


def ids(seed: int, n: int = 3, seq: int = 16) -> torch.Tensor:
    return torch.randint(3, 120, (n, seq), generator=torch.Generator().manual_seed(seed))


def make_identity(model, block: int) -> None:
    """Zero the output projections of ``block`` (attention and MLP): it returns its input."""
    layer = resolve_arch(model).layers[block]
    layer.self_attn.o_proj.weight.zero_()
    layer.mlp.down_proj.weight.zero_()


def snapshot(model) -> dict:
    arch = resolve_arch(model)
    return {
        "layers": arch.layers,
        "blocks": list(arch.layers),
        "layer_idx": [m.layer_idx for m in model.modules() if hasattr(m, "layer_idx")],
        "config": model.config.to_dict(),
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_unchanged(model, before: dict) -> None:
    after = snapshot(model)
    assert after["layers"] is before["layers"] and after["blocks"] == before["blocks"]
    assert after["layer_idx"] == before["layer_idx"]
    assert after["config"] == before["config"]
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())


@pytest.fixture(scope="module")
def report():
    model = deep_model()
    make_identity(model, 2)
    lenses = {"tuned": random_lens(model, scale=0.05)}
    before = snapshot(model)
    result = prune(
        model,
        ids(0),
        test_ids=ids(1),
        lenses=lenses,
        max_remove=3,
        heal=("gromov", "block_influence"),
        heal_config=HealConfig(steps=5),
        generation_prompts=2,
        prompt_tokens=6,
        generation_tokens=4,
    )
    return model, before, result


# --- removal -------------------------------------------------------------------------------


def test_removing_no_block_changes_nothing_exactly(model, input_ids):
    full = collect_residuals(model, input_ids, with_logits=True)
    assert torch.equal(pruned_final_states(model, input_ids, ()), full.hidden[-1])
    with blocks_removed(model, ()):
        assert torch.equal(model(input_ids=input_ids).logits, full.logits)


def test_removal_really_skips_the_block_and_keeps_the_others():
    model = deep_model()
    calls = [0] * N_BLOCKS
    layers = resolve_arch(model).layers
    for index, block in enumerate(layers):
        block.register_forward_hook(lambda *_a, i=index: calls.__setitem__(i, calls[i] + 1))
    with blocks_removed(model, [1, 3]) as pruned:
        assert pruned.n_blocks == N_BLOCKS - 2
        model(input_ids=ids(0))
    assert calls == [1, 0, 1, 0, 1]
    pruned_final_states(model, ids(0), [4])
    assert calls == [2, 1, 2, 1, 1]


def test_removed_blocks_change_the_output():
    model = deep_model()
    full = pruned_final_states(model, ids(0), ())
    assert not torch.allclose(pruned_final_states(model, ids(0), [2]), full, atol=1e-3)


def test_model_is_restored_after_removal_even_on_error():
    model = deep_model("gemma3_text")  # sliding-window layer types live in the config
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="inside"):
        with blocks_removed(model, [0, 2]):
            assert model.config.num_hidden_layers == N_BLOCKS - 2
            assert len(model.config.layer_types) == N_BLOCKS - 2
            assert [block.self_attn.layer_idx for block in resolve_arch(model).layers] == [0, 1, 2]
            raise RuntimeError("inside")
    assert_unchanged(model, before)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "gpt2", "qwen3"])
@pytest.mark.parametrize("removed", [(0,), (1, 3), (4,)])
def test_cached_generation_after_removal_equals_recomputing_every_step(model_type, removed):
    """The KV cache is laid out by layer_idx: without renumbering, removing block 0 breaks it."""
    model = deep_model(model_type)
    prompt = ids(3, n=2, seq=7)
    cached = greedy_continuation(model, prompt, 5, removed)
    sequence = prompt
    with blocks_removed(model, removed), torch.no_grad():
        for _ in range(5):
            logits = model(input_ids=sequence, use_cache=False).logits[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, sequence[:, 7:])


# --- the analysis on a model with an identity block -----------------------------------------


def test_the_model_is_unchanged_after_the_analysis(report):
    model, before, _ = report
    assert_unchanged(model, before)


def test_an_identity_block_has_zero_influence_and_zero_measured_effect(report):
    _, _, result = report
    data = result.to_dict()
    assert abs(data["scores"]["block_influence"][2]) < 1e-12
    assert data["scores"]["angular_last_token"][2] < 1e-6
    assert data["scores"]["lens_kl/logit"][2] < 1e-6
    assert (
        abs(data["measured"][2]["delta_ce_bits"]) < 1e-9 and data["measured"][2]["kl_bits"] < 1e-6
    )
    assert data["measured"][2]["top1_agree"] == 1.0
    others = [data["measured"][b]["kl_bits"] for b in range(N_BLOCKS) if b != 2]
    assert min(others) > 1e-3  # the other blocks do something
    assert min(data["scores"]["block_influence"][b] for b in range(N_BLOCKS) if b != 2) > 1e-4
    assert data["curves"]["block_influence"][1]["removed"] == [2]  # so it goes first


def test_every_curve_starts_at_the_full_model_and_truncating_nothing_is_the_model(report):
    _, _, result = report
    data = result.to_dict()
    model_ce = data["baseline"]["model_ce_bits"]
    assert data["baseline"]["ce_bits"] == pytest.approx(model_ce, abs=1e-6)
    for name, curve in data["curves"].items():
        start = curve[0]
        assert start["k"] == 0 and start["removed"] == []
        assert start["ce_bits"] == pytest.approx(model_ce, abs=1e-6), name
        assert start["kl_bits"] < 1e-6 and start["top1_agree"] == 1.0
        assert start["generation_match"] == 1.0
        assert [p["k"] for p in curve] == [0, 1, 2, 3]
        assert all(len(p["removed"]) == p["k"] for p in curve)
    assert data["curves"]["truncate/logit"][2]["removed"] == [3, 4]


def test_truncation_is_the_lens_read_at_row_l_minus_k(model, input_ids):
    lens = random_lens(model, scale=0.05)
    test_ids = ids(5, n=2, seq=9)
    result = prune(
        model,
        ids(4, n=2, seq=9),
        test_ids=test_ids,
        lenses={"tuned": lens},
        max_remove=1,
        heal=(),
        generation_prompts=0,
    )
    direct = readout(model, {"tuned": lens}, test_ids, rows=[1], stats=("kl", "ce"), top_k=0)
    point = result.to_dict()["curves"]["truncate/tuned"][1]
    assert point["kl_bits"] == pytest.approx(
        float(direct["tuned"]["kl"].double().mean()) * NATS_TO_BITS, rel=1e-5
    )
    ce = direct["tuned"]["ce"].double()
    assert point["ce_bits"] == pytest.approx(float(ce.nanmean()) * NATS_TO_BITS, rel=1e-5)


def test_measured_truth_is_the_pruned_models_own_logits():
    model = deep_model()
    calibration, test_ids = ids(0), ids(1)
    data = prune(
        model, calibration, test_ids=test_ids, max_remove=1, heal=(), generation_prompts=0
    ).to_dict()
    with torch.no_grad():
        full = model(input_ids=test_ids).logits.log_softmax(-1)
        with blocks_removed(model, [3]):
            pruned = model(input_ids=test_ids).logits.log_softmax(-1)
    kl = float(kl_divergence(full, pruned).double().mean()) * NATS_TO_BITS
    ce = -pruned[:, :-1].gather(-1, test_ids[:, 1:, None]).double().mean() * NATS_TO_BITS
    assert data["measured"][3]["kl_bits"] == pytest.approx(kl, rel=1e-4)
    assert data["measured"][3]["ce_bits"] == pytest.approx(float(ce), rel=1e-5)
    top1 = (full.argmax(-1) == pruned.argmax(-1)).double().mean()
    assert data["measured"][3]["top1_agree"] == pytest.approx(float(top1))


def test_scores_match_their_definitions():
    model = deep_model()
    calibration = ids(0)
    data = prune(
        model, calibration, test_ids=ids(1), max_remove=1, heal=(), generation_prompts=0
    ).to_dict()
    hidden = [h.double() for h in collect_residuals(model, calibration, with_logits=False).hidden]
    lens = LogitLens(model)
    for block in range(N_BLOCKS):
        cos = torch.nn.functional.cosine_similarity(hidden[block], hidden[block + 1], dim=-1)
        assert data["scores"]["block_influence"][block] == pytest.approx(
            1 - float(cos.mean()), abs=1e-9
        )
        last = torch.arccos(cos[:, -1].clamp(-1, 1)) / math.pi
        assert data["scores"]["angular_last_token"][block] == pytest.approx(
            float(last.mean()), abs=1e-9
        )
        with torch.no_grad():
            later = lens(hidden[block + 1].float(), block + 1).log_softmax(-1)
            earlier = lens(hidden[block].float(), block).log_softmax(-1)
        kl = float(kl_divergence(later, earlier).double().mean()) * NATS_TO_BITS
        assert data["scores"]["lens_kl/logit"][block] == pytest.approx(kl, rel=1e-4, abs=1e-6)
    runs = data["angular_distance"]["last_token"]
    assert len(runs) == N_BLOCKS and runs[1][N_BLOCKS - 1] is None  # a run past the last block
    cos = torch.nn.functional.cosine_similarity(hidden[1][:, -1], hidden[4][:, -1], dim=-1)
    assert runs[2][1] == pytest.approx(
        float((torch.arccos(cos.clamp(-1, 1)) / math.pi).mean()), abs=1e-9
    )


def test_lens_scores_can_read_a_few_evenly_spaced_positions():
    model = deep_model()
    calibration = ids(0)
    data = prune(
        model,
        calibration,
        test_ids=ids(1),
        max_remove=1,
        heal=(),
        lens_positions=3,
        generation_prompts=0,
    ).to_dict()
    hidden = collect_residuals(model, calibration, with_logits=False).hidden
    lens = LogitLens(model)
    with torch.no_grad():
        logprobs = [lens(h[:, [0, 8, 15]], row).log_softmax(-1) for row, h in enumerate(hidden)]
    for block in range(N_BLOCKS):
        kl = kl_divergence(logprobs[block + 1], logprobs[block]).double().mean()
        expected = float(kl) * NATS_TO_BITS
        assert data["scores"]["lens_kl/logit"][block] == pytest.approx(expected, rel=1e-4)
    assert data["settings"]["lens_positions"] == 3


def test_gromov_removes_the_run_of_least_angular_distance(report):
    _, _, result = report
    data = result.to_dict()
    for point in data["curves"]["gromov"][1:]:
        row = data["angular_distance"]["last_token"][point["k"] - 1]
        best = min((v, s) for s, v in enumerate(row) if v is not None)[1]
        assert point["removed"] == list(range(best, best + point["k"]))


def test_static_oracle_follows_the_measured_effect_and_greedy_agrees_at_k1():
    model = deep_model()
    data = prune(
        model, ids(0), test_ids=ids(1), max_remove=2, heal=(), oracle="greedy", generation_prompts=0
    ).to_dict()
    ce = [m["ce_bits"] for m in data["measured"]]
    assert data["curves"]["oracle"][1]["removed"] == [ce.index(min(ce))]
    assert data["settings"]["oracle"] == "greedy"
    second = data["curves"]["oracle"][2]
    assert data["curves"]["oracle"][1]["removed"][0] in second["removed"]


def test_spearman_of_each_score_with_the_measured_truth(report):
    _, _, result = report
    data = result.to_dict()
    for name, values in data["scores"].items():
        expected = spearman(values, [m["delta_ce_bits"] for m in data["measured"]])
        assert data["spearman"][name]["delta_ce"] == pytest.approx(expected)


def test_spearman_ranks_with_ties_like_scipy():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    stats = pytest.importorskip("scipy.stats")
    x = torch.randint(0, 5, (30,), generator=torch.Generator().manual_seed(0)).tolist()
    y = torch.randn(30, generator=torch.Generator().manual_seed(1)).tolist()
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


# --- healing ---------------------------------------------------------------------------------


def test_heal_inverts_a_linear_distortion_of_the_last_state(model):
    full = collect_residuals(model, ids(6, n=8, seq=16), with_logits=False).hidden[-1]
    # A rotation with uneven scales and an offset: well conditioned, far from the identity.
    rotation = torch.linalg.qr(torch.randn(full.shape[-1], full.shape[-1]))[0]
    mix = rotation * torch.linspace(0.5, 2.0, full.shape[-1])
    distorted = full @ mix.T + full.std()
    head = LogitLens(model)
    translator, log = fit_heal(head, distorted, full, HealConfig(steps=0))
    assert log["final"] < 1e-3 < log["identity"] and log["chosen_ridge"] == 1e-4
    with torch.no_grad():
        assert torch.allclose(translator(distorted, 0), full, atol=1e-2)


def test_heal_is_never_worse_than_no_heal_on_held_out_tokens(model):
    full = collect_residuals(model, ids(6, n=1, seq=12), with_logits=False).hidden[-1]
    unrelated = torch.randn_like(full) * full.std()
    translator, log = fit_heal(LogitLens(model), unrelated, full, HealConfig(steps=20, lr=1e-2))
    assert log["final"] <= log["identity"]
    if translator is None:
        assert log["chosen_ridge"] is None and log["steps"] == 0


def test_heal_holds_out_whole_sequences_when_there_are_several():
    fit, held = held_out_split(torch.Size([5, 4, 32]), HealConfig(held_out=0.2))
    assert (
        len(held) == 4 and held.min() % 4 == 0 and torch.equal(held, held.min() + torch.arange(4))
    )
    assert sorted([*fit.tolist(), *held.tolist()]) == list(range(20))
    fit, held = held_out_split(torch.Size([1, 10, 32]), HealConfig(held_out=0.2))
    assert len(held) == 2 and len(fit) == 8 and not set(fit.tolist()) & set(held.tolist())


def test_heal_report_says_what_it_recovered(report):
    _, _, result = report
    data = result.to_dict()
    assert set(data["heal"]) == {"gromov", "block_influence"}
    heal = data["heal"]["gromov"]
    assert heal["k"] == 3 and heal["removed"] == data["curves"]["gromov"][3]["removed"]
    lost = heal["before"]["delta_ce_bits"]
    if lost > 0:
        assert heal["recovered"] == pytest.approx(
            (heal["before"]["ce_bits"] - heal["after"]["ce_bits"]) / lost
        )
    assert 0.0 <= heal["after"]["generation_match"] <= 1.0


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(max_remove=5), "every block"),
        (dict(max_remove=7), "every block"),
        (dict(max_remove=0), "max_remove"),
        (dict(max_remove=True), "max_remove"),
        (dict(input_ids=torch.tensor([[5]])), "calibration ids are shorter than one sequence"),
        (
            dict(test_ids=torch.zeros(0, 8, dtype=torch.long)),
            "test ids are shorter than one sequence",
        ),
        (dict(test_ids="same"), "share 3 of 3"),
        (dict(oracle="best"), "oracle"),
        (dict(heal=("truncate/logit",)), "cannot heal"),
        (dict(generation_prompts=9), "generation"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_input_is_one_clear_error_before_any_model_work(changes, message):
    model = deep_model()
    calls = []
    model.get_input_embeddings().register_forward_hook(lambda *_: calls.append(1))
    arguments = dict(input_ids=ids(0), test_ids=ids(1), max_remove=2)
    arguments.update(changes)
    if arguments["test_ids"] == "same":
        arguments["test_ids"] = arguments["input_ids"].clone()
    input_ids = arguments.pop("input_ids")
    with pytest.raises(AnalysisError, match=message):
        prune(model, input_ids, **arguments)
    assert not calls


def test_same_data_is_accepted_with_the_flag_and_checked_without_a_model():
    calibration, test_ids = check_prune_args(ids(0), ids(0), max_remove=1, allow_same_data=True)
    assert torch.equal(calibration, test_ids)
    with pytest.raises(AnalysisError, match="allow_same_data"):
        check_prune_args(ids(0), torch.cat([ids(1), ids(0)[:1]]), max_remove=1)
    with pytest.raises(TypeError, match="integer token ids"):
        check_prune_args(ids(0).float(), ids(1), max_remove=1)


def test_lens_reading_mid_points_reserved_name_and_another_models_lens_are_refused():
    model = deep_model()
    calls = []
    model.get_input_embeddings().register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(LensMismatch, match="another model's head"):
        prune(model, ids(0), test_ids=ids(1), lenses={"other": random_lens(deep_model(seed=1))})
    assert not calls
    with pytest.raises(AnalysisError, match="reserved"):
        prune(model, ids(0), test_ids=ids(1), lenses={"logit": LogitLens(model)})
    with pytest.raises(AnalysisError, match="mid points"):
        prune(model, ids(0), test_ids=ids(1), lenses={"mid": LogitLens(model, points="mid")})


# --- the report ------------------------------------------------------------------------------


def test_report_saves_json_csv_summary_and_figures(report, tmp_path):
    pytest.importorskip("plotly")
    pytest.importorskip("matplotlib")
    _, _, result = report
    assert isinstance(result, PruneReport)
    written = result.save(tmp_path)
    names = {path.name for path in written}
    assert {
        "prune.json",
        "prune_summary.md",
        "prune_blocks.csv",
        "prune_curves.csv",
        "prune_angular.csv",
        "prune_curves.png",
        "prune_curves.html",
        "prune_angular.png",
        "prune_angular.html",
        bundle_name(),  # one plotly.js shared by both pages
    } == names
    assert f'<script src="{bundle_name()}">' in (tmp_path / "prune_curves.html").read_text()
    data = json.loads((tmp_path / "prune.json").read_text())
    assert data["schema"] == "tunedlens.prune/1" and data["n_blocks"] == N_BLOCKS
    curves = (tmp_path / "prune_curves.csv").read_text().splitlines()
    assert curves[0].startswith("method,k,removed,ce_bits")
    assert len(curves) == 1 + len(data["curves"]) * 4
    summary = (tmp_path / "prune_summary.md").read_text()
    assert "| 1 | " in summary and "ρ with ΔCE" in summary and "Healing at k = 3" in summary
    assert (tmp_path / "prune_curves.png").read_bytes()[:4] == b"\x89PNG"
    angular = (tmp_path / "prune_angular.html").read_text()
    assert '<script src="http' not in angular and f'<script src="{bundle_name()}">' in angular


def test_the_package_exports_the_function_even_after_its_module_is_imported():
    import tunedlens.analyze.pruning

    assert callable(tunedlens.analyze.prune) and tunedlens.analyze.prune is prune
    assert tunedlens.analyze.PruneReport is PruneReport
