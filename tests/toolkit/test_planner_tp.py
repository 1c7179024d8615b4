"""Tensor parallelism in the planner and the tuner: memory per GPU by hand (Qwen2.5-7B at tp 2), the
engine's own rank models counted on the meta device, KV heads replicated past their count, the
all-reduce cost over PCIe and NVLink by hand, the `NAMExN` card count, and the tuner's tp axis."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from engine.config import EngineConfig
from toolkit import profiles as prof
from toolkit.cli import app
from toolkit.model_sizes import ModelShape, PlanError, count_params, kv_bytes_per_token, weight_bytes
from toolkit.planner import make_plan
from toolkit.predictions import allreduce_seconds, tp_comm
from toolkit.profiles import Efficiency, ProfileError, get_profile
from toolkit.tune.schema import LoadPoint, Slo, Trial, TuneResult, TuneWorkload
from toolkit.tune.search import Budget, CoordinateSearch
from toolkit.tune.space import Space, build_space, predict

GIB = 2**30
# Qwen2.5-7B-Instruct's config.json, the fields that size it (as in test_planner.py).
QWEN25_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
             "tie_word_embeddings": False, "max_position_embeddings": 32768}
# 32 query heads over 4 KV heads (Yi-6B's attention): tp 8 divides the heads but not the KV heads.
FOUR_KV_HEADS = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 64000}
# Llama-2-7B's shape (every head its own KV head: 0.5 MiB of cache a token), with a 32k context.
LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}
# Qwen2.5-14B: 29.5 GB of bf16 weights, more than a 24 GB card holds.
QWEN25_14B = {"model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
              "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False}


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "240"})


def test_qwen25_7b_per_gpu_memory_at_tp2_by_hand():
    # One rank of two: head_dim 128; 14 of 28 query heads (1,792 wide), 2 of 4 KV heads (256 wide), 9,472 of
    # the 18,944 MLP columns, 76,032 = ceil(152,064 / 2) vocab rows of the embedding and of the LM head.
    q = 3584 * 1792 + 1792  # column-parallel: the bias splits with the outputs
    k = v = 3584 * 256 + 256
    o = 1792 * 3584  # row-parallel: the inputs split (Qwen2's o_proj has no bias)
    mlp = 2 * 3584 * 9472 + 9472 * 3584  # gate and up split their outputs, down its inputs
    norms = 2 * 3584  # replicated
    per_layer = q + k + v + o + mlp + norms
    embedding = 76032 * 3584
    params = 2 * embedding + 28 * per_layer + 3584  # embedding, lm_head, layers, final norm (replicated)
    assert per_layer == 116_532_480 and params == 3_807_910_400
    weights = 2 * params
    assert weights == 7_615_820_800  # half of one card's 15,231,233,024 + the replicated norms (204,288 bytes)
    kv = 2 * 28 * 2 * 128 * 2  # K and V x layers x 2 KV heads a rank x head_dim x 2 bytes
    assert kv == 57_344 * 2 // 4 == 28_672  # the brief's kv bytes x max(kv_heads / tp, 1) / kv_heads

    shape = ModelShape.from_config(QWEN25_7B)
    assert count_params(shape, 2).total == params
    assert weight_bytes(shape, "bf16", 2).total == weights and weight_bytes(shape, "bf16", 2).decode == weights - 2 * embedding
    assert kv_bytes_per_token(shape, 0, 2) == kv

    plan = make_plan(QWEN25_7B, get_profile("rtx4090x2"), quants=("bf16",))
    assert plan.tps == [1, 2] and plan.gpu_count == 2 and plan.profile_spec == "rtx4090x2"
    one, two = (next(q for q in plan.quants if q.tp == tp) for tp in (1, 2))
    assert one.weights.total == 15_231_233_024 and one.kv_bytes_per_token == 57_344  # tp 1 as before
    free = 24 * GIB - weights - 2 * GIB  # per GPU: its card, its weights, its reserve
    assert two.weights.total == weights and two.kv_bytes_per_token == kv and two.free_bytes == free
    at_08 = next(r for r in two.kv if r.cache_ratio == 0.8)
    assert at_08.tokens == int(0.8 * free) // kv == 446_609  # the cache's tokens: each GPU holds its heads' share
    assert at_08.sequences_in_blocks == int(0.8 * free) // (64 * kv) // 64 == 109
    assert two.decode[0].bytes_per_step == weights - 2 * embedding + 2048 * kv  # batch 1 at context 2,048, per GPU


@pytest.mark.parametrize("preset, tp", [("qwen2.5-7b", 2), ("tiny-qwen2-tp", 3), ("tiny-qwen2-tp", 6),
                                        ("qwen3-0.6b", 16)])
def test_per_gpu_params_and_kv_heads_are_the_engines_rank_models(preset, tp):
    """What the planner counts per GPU is what the engine builds on every rank (on the meta device: no
    memory): the same parameters, and the KV heads whose cache each rank keeps. tiny-qwen2-tp's one KV
    head and qwen3-0.6b's 8 at tp 16 are replicated; its vocab is not a multiple of 3 or 6 (padding)."""
    import torch

    from engine.layers.options import LayerOptions
    from engine.models.presets import preset_config
    from engine.models.registry import model_class

    config = preset_config(preset)
    shape = ModelShape.from_config(config)
    for rank in range(tp):
        with torch.device("meta"):
            model = model_class(config)(config, LayerOptions(tp_size=tp, tp_rank=rank))
        assert sum(p.numel() for p in model.parameters()) == count_params(shape, tp).total, rank
        attention = model.attention_layers()[0]
        per_token = 2 * shape.num_layers * attention.num_kv_heads * attention.head_dim * 2
        assert per_token == kv_bytes_per_token(shape, 0, tp), rank


def test_kv_heads_replicate_past_their_count_and_a_tp_the_engine_refuses_is_refused():
    shape = ModelShape.from_config(FOUR_KV_HEADS)
    whole = 2 * 32 * 4 * 128 * 2
    assert whole == 65_536
    by_tp = {tp: kv_bytes_per_token(shape, 0, tp) for tp in (1, 2, 4, 8)}
    # 4 KV heads: 2 a rank at tp 2, 1 at tp 4, and at tp 8 still 1 (each head on two ranks), not half of one
    assert by_tp == {1: whole, 2: whole // 2, 4: whole // 4, 8: whole // 4}
    k_proj = next(lin for lin in _rank_linears(shape, 8) if lin.name == "k_proj")
    assert k_proj.out_features == 128  # the one head this rank's 4 query heads read

    # Qwen2.5-7B: 8 does not divide 28 heads; the engine's own words, in the planner and in its pruned list
    from engine.errors import InvalidRequestError
    from engine.layers.partition import check_tensor_parallel
    from engine.models.presets import preset_config

    with pytest.raises(InvalidRequestError) as engine_says:
        check_tensor_parallel(preset_config("qwen2.5-7b"), 8)
    qwen = ModelShape.from_config(QWEN25_7B)
    with pytest.raises(PlanError) as planner_says:
        kv_bytes_per_token(qwen, 0, 8)
    assert str(planner_says.value) == str(engine_says.value)  # "... of this model: use a tp that divides 28 ..."
    plan = make_plan(QWEN25_7B, get_profile("rtx4090x8"), quants=("bf16",))
    assert sorted({q.tp for q in plan.quants}) == [1, 2, 4]
    refused = {p.tp: p.reason for p in plan.tp_pruned}
    assert sorted(refused) == [3, 5, 6, 7, 8] and "28 attention heads" in refused[8] and "4 KV heads" in refused[7]
    with pytest.raises(PlanError, match="does not divide the 28 attention heads"):
        make_plan(QWEN25_7B, get_profile("rtx4090x8"), tps=[8])


def _rank_linears(shape, tp):
    from toolkit.model_sizes import layer_linears

    return layer_linears(shape, tp)


def test_allreduce_cost_over_pcie_gen4_and_nvlink_by_hand():
    pcie, nvlink = get_profile("rtx4090x2").tp_link(2), get_profile("h100-sxmx2").tp_link(2)
    # PCIe 4.0 x16: 16 GT/s x 16 lanes x 128/130 / 8 = 31.5 GB/s a direction, 0.8 of it reached; 15 us a collective.
    assert (pcie.kind, pcie.gbs, pcie.latency_us) == ("PCIe 4.0 x16", pytest.approx(25.2), 15.0)
    # H100 NVLink: 900 GB/s counts both directions, 450 each way, 0.8 of it; 5 us.
    assert (nvlink.kind, nvlink.gbs, nvlink.latency_us) == ("NVLink", pytest.approx(360.0), 5.0)

    buffer = 8 * 3584 * 2  # a decode step of 8 sequences: 8 tokens x hidden x bf16
    ring = 2 * (2 - 1) / 2 * buffer  # bytes each GPU sends (and receives) in a ring of 2
    assert allreduce_seconds(buffer, 2, pcie) == pytest.approx(ring / 25.2e9 + 15e-6)
    assert allreduce_seconds(buffer, 2, nvlink) == pytest.approx(ring / 360e9 + 5e-6)
    assert allreduce_seconds(buffer, 1, pcie) == 0.0
    # A ring of 4 sends 2 x 3/4 of the buffer from every GPU; the fixed latency doubles (log2 4).
    four = get_profile("rtx4090x4").tp_link(4)
    assert four.latency_us == 30.0
    assert allreduce_seconds(buffer, 4, four) == pytest.approx(1.5 * buffer / 25.2e9 + 30e-6)

    # The step: 2 x 28 + 1 all-reduces, rank 1's fp32 logits (8 rows x 76,032) into rank 0, the ids broadcast.
    shape = ModelShape.from_config(QWEN25_7B)
    gather = 8 * 76032 * 4
    by_hand = {"pcie": 57 * (ring / 25.2e9 + 15e-6) + gather / 25.2e9 + 15e-6 + 15e-6,
               "nvlink": 57 * (ring / 360e9 + 5e-6) + gather / 360e9 + 5e-6 + 5e-6}
    assert by_hand["pcie"] == pytest.approx(1.111e-3, rel=1e-3) and by_hand["nvlink"] == pytest.approx(0.311e-3, rel=2e-3)
    for name, link in (("pcie", pcie), ("nvlink", nvlink)):
        comm = tp_comm(shape, tokens=8, sampled_rows=8, tp=2, link=link)
        assert comm.allreduces == 57 and comm.allreduce_bytes == buffer and comm.gather_bytes == gather
        assert comm.seconds == pytest.approx(by_hand[name])

    # In the plan: the step is the longer of memory and compute, plus the collectives (roofline efficiency here).
    plan = make_plan(QWEN25_7B, get_profile("rtx4090x2"), quants=("bf16",), batch_sizes=(8,), tps=[2],
                     efficiency=Efficiency.roofline())
    row = plan.quants[0]
    step = row.predicted_decode[0]
    nbytes = row.weights.decode + 8 * 2048 * 28_672
    flops = 8 * (2 * count_params(shape, 2).multiplying + 4 * 28 * 14 * 128 * 2048)
    assert step.comm_ms == pytest.approx(by_hand["pcie"] * 1e3)
    assert step.step_ms == pytest.approx(1e3 * (max(nbytes / 1008e9, flops / 165.2e12) + by_hand["pcie"]))
    assert row.decode[0].step_ms == pytest.approx(step.step_ms)  # roofline efficiency: the same figure

    # An RTX 3090's bridge joins two cards: tp 4 crosses PCIe, its latency twice (log2 4) the pair's.
    rtx3090 = get_profile("rtx3090x4")
    assert rtx3090.tp_link(2).kind == "NVLink" and rtx3090.tp_link(2).gbs == pytest.approx(112.5 / 2 * 0.8)
    assert (rtx3090.tp_link(4).kind, rtx3090.tp_link(4).latency_us) == ("PCIe 4.0 x16", 30.0)
    assert get_profile("cpu").tp_link(2) is None


def test_a_model_that_one_24gb_card_cannot_serve_fits_two():
    # Qwen2.5-14B's bf16 weights (27.5 GiB) exceed one card; half of them per GPU fit.
    plan = make_plan(QWEN25_14B, get_profile("rtx4090x2"), quants=("bf16",))
    one, two = (next(q for q in plan.quants if q.tp == tp) for tp in (1, 2))
    assert not one.fits and one.flags[0].startswith("does not fit: weights 27.5 GiB + reserve") and one.decode == []
    assert two.fits and two.weights.total < 14 * GIB
    rec = plan.recommendation
    assert rec.tp == 2 and rec.engine["tp"] == 2 and "on fewer cards no row fits" in rec.why
    assert make_plan(QWEN25_14B, get_profile("rtx4090"), quants=("bf16",)).recommendation is None

    # A 7B in bf16 (Llama-2-7B's shape: 12.6 GiB) loads on one 4090, but its 0.5 MiB a token of cache
    # cannot hold one 32k session there (16 GiB); at tp 2 each GPU keeps half of every token.
    kv = 2 * 32 * 32 * 128 * 2
    assert kv == 524_288 and 32768 * kv == 16 * GIB
    plan = make_plan(LLAMA2_7B, get_profile("rtx4090x2"), quants=("bf16",), session_len=32768, batch_sizes=(1, 2))
    one, two = (next(q for q in plan.quants if q.tp == tp) for tp in (1, 2))
    assert one.fits and max(r.tokens for r in one.kv) < 32768 <= max(r.tokens for r in two.kv)
    assert two.kv_bytes_per_token == kv // 2
    assert plan.recommendation.tp == 2
    serve = EngineConfig(**plan.recommendation.engine).to_flags()
    assert serve[:2] == ["--tp", "2"]
    single = make_plan(LLAMA2_7B, get_profile("rtx4090"), quants=("bf16",), session_len=32768)
    assert single.recommendation is None and single.tps == [1]


def test_plan_cli_with_a_card_count(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B))
    data = json.loads(_invoke("plan", str(tmp_path), "--gpu", "rtx4090x2", "--json").output)
    assert data["gpu_count"] == 2 and data["tps"] == [1, 2] and data["profile"] == "rtx4090"
    assert [(q["quant"], q["tp"]) for q in data["quants"]] == [("bf16", 1), ("int8", 1), ("awq", 1),
                                                               ("bf16", 2), ("int8", 2), ("awq", 2)]
    assert data["quants"][3]["link"]["kind"] == "PCIe 4.0 x16"
    assert data["recommendation"]["tp"] == 2 and data["recommendation"]["serve"][3:5] == ["--tp", "2"]

    table = _invoke("plan", str(tmp_path), "--gpu", "rtx4090x2", "--quant", "bf16")
    assert table.exit_code == 0, table.output
    out = table.output
    assert "2 x NVIDIA GeForce RTX 4090 (rtx4090x2)" in out and "bf16 tp2" in out and "per GPU" in out
    assert "Tensor-parallel collectives" in out and "PCIe 4.0 x16 25.2 GB/s, 15 us" in out
    assert "Recommendation: bf16, tp 2" in out and "--tp 2" in out

    only = json.loads(_invoke("plan", str(tmp_path), "--gpu", "rtx4090x2", "--tp", "2", "--json").output)
    assert only["tps"] == [2] and {q["tp"] for q in only["quants"]} == {2}
    one_card = _invoke("plan", str(tmp_path), "--gpu", "rtx4090")
    assert "tp" not in json.loads(_invoke("plan", str(tmp_path), "--gpu", "rtx4090", "--json").output)["recommendation"]["engine"]
    assert "collectives" not in one_card.output and "bf16 tp1" not in one_card.output


@pytest.mark.parametrize("args, words", [
    (("--gpu", "rtx4090x0"), "the card count after 'rtx4090x' must be a whole number >= 1 (NAMExN"),
    (("--gpu", "rtx4090xtwo"), "the card count after 'rtx4090x' must be a whole number >= 1 (NAMExN"),
    (("--gpu", "rtx4090x"), "the card count after 'rtx4090x' must be a whole number >= 1 (NAMExN"),
    (("--gpu", "cpux2"), "the 'cpu' profile is the host, not a card"),
    (("--gpu", "autox2"), "'auto' counts the local GPUs itself"),
    (("--gpu", "rtx5090x2"), "unknown GPU profile 'rtx5090x2': known profiles are a10"),
    (("--gpu", "rtx4090", "--tp", "2"), "--tp 2 needs 2 cards and --gpu rtx4090 has one card: ask for the "
                                        "machine as rtx4090x2"),
    (("--gpu", "rtx4090x4", "--tp", "3"), "--tp 3 does not divide the 28 attention heads"),
])
def test_bad_card_counts_are_one_clear_line(tmp_path, args, words):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B))
    result = _invoke("plan", str(tmp_path), *args)
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: ") and words in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_card_count_in_profiles_and_auto(tmp_path, monkeypatch):
    two = get_profile("RTX4090x2")
    assert (two.name, two.gpu_count, two.spec, two.memory_gib) == ("rtx4090", 2, "rtx4090x2", 24)
    assert all(p.gpu_count == 1 for p in prof.load_profiles().values())  # every YAML as it was: one card
    # A YAML may say how many cards its machine has; 0 is refused like any bad figure.
    data = __import__("yaml").safe_load((prof.profiles_dir() / "rtx4090.yaml").read_text())
    (tmp_path / "rtx4090.yaml").write_text(__import__("yaml").safe_dump({**data, "gpu_count": 0}))
    with pytest.raises(ProfileError, match="gpu_count: Input should be greater than or equal to 1"):
        prof.load_profiles(tmp_path)

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(prof, "detect_local_gpus", lambda: ([(0, "NVIDIA GeForce RTX 4090", 23.99),
                                                             (1, "NVIDIA GeForce RTX 4090", 23.99),
                                                             (2, "NVIDIA A10", 22.0)], ""))
    resolved = prof.resolve_gpu("auto")
    assert resolved.profile.gpu_count == 2 and "2 of this kind" in resolved.note and "rtx4090x2" in resolved.note
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert prof.resolve_gpu("auto").profile.gpu_count == 1


WORK = TuneWorkload(name="chat", input_len=512, output_len=256)


def test_tune_space_offers_tp_up_to_the_card_count():
    from engine.models.presets import preset_config

    qwen = preset_config("qwen2.5-7b")
    one = build_space(qwen, get_profile("rtx4090"), WORK, cpu=False, weight_format="bf16", session_len=4096)
    two = build_space(qwen, get_profile("rtx4090x2"), WORK, cpu=False, weight_format="bf16", session_len=4096)
    assert one.axes["tp"] == [1] and two.axes["tp"] == [1, 2]
    assert list(two.axes)[0] == "tp" and len(two.grid()) == 2 * len(one.grid())
    assert "tp" not in build_space(qwen, get_profile("cpu"), WORK, cpu=True, weight_format="float32",
                                   session_len=4096).axes
    eight = build_space(qwen, get_profile("rtx4090x8"), WORK, cpu=False, weight_format="bf16", session_len=4096)
    assert eight.axes["tp"] == [1, 2, 4]
    reasons = {p.engine["tp"]: p.reason for p in eight.pruned if list(p.engine) == ["tp"]}
    assert sorted(reasons) == [3, 5, 6, 7, 8] and "28 attention heads" in reasons[8]
    local = build_space(qwen, get_profile("rtx4090x2"), WORK, cpu=False, weight_format="bf16", session_len=4096,
                        local_gpus=1)
    assert local.axes["tp"] == [1] and any("the machine that measures has 1" in p.reason for p in local.pruned)


def test_tune_prunes_tp1_when_no_format_fits_one_card():
    # Qwen2.5-14B's layers twice over: ~58 GB of bf16 weights, ~30 GB in int8, so one card holds neither;
    # 3 does not divide its 40 heads; tp 2 and 4 stay.
    heavy = dict(QWEN25_14B, num_hidden_layers=96)
    space = build_space(heavy, get_profile("rtx4090x4"), WORK, cpu=False, weight_format="bf16", session_len=4096)
    assert space.axes["tp"] == [2, 4]
    assert any(p.engine == {"tp": 1} and "per GPU + reserve do not fit in 24 GiB" in p.reason for p in space.pruned)
    assert any(p.engine == {"tp": 3} and "40 attention heads" in p.reason for p in space.pruned)


def test_tune_trials_and_launch_carry_tp(tmp_path):
    from engine.models.presets import preset_config
    from toolkit.tune.launch import write_launch_files

    space = Space("bf16", {"tp": [1, 2], "max_batch_size": [64, 128]})
    result = TuneResult(run_id="x", model="m", target_profile="rtx4090", workload=WORK,
                        slo=Slo(ttft_ms=200, tpot_ms=50))

    def run(trial: Trial) -> Trial:  # tp 2 carries twice the traffic
        best = LoadPoint(concurrency=8, requests=32, output_tok_s=100.0 * trial.engine.get("tp", 1), request_s=1,
                         meets_slo=True)
        return trial.model_copy(update={"best": best, "points": [best]})

    CoordinateSearch(space, EngineConfig(), result, run, lambda: None, Budget()).run_search()
    chosen = result.trial(result.chosen)
    assert chosen.engine["tp"] == 2 and chosen.flags[:2] == ["--tp", "2"]
    config = EngineConfig().replace(**chosen.engine)
    files = write_launch_files(tmp_path, "preset:qwen2.5-7b", config, profile_name="rtx4090x2", weights_gib=14.2,
                               memory_gib=24, gpus=config.tp)
    assert "--tp 2" in files["launch.sh"].read_text() and "nvidia.com/gpu: 2" in files["deploy.yaml"].read_text()

    # The prediction beside a tp 2 trial: one GPU's memory and work plus the collectives; weights whole.
    qwen = preset_config("qwen2.5-7b")
    p1 = predict(qwen, get_profile("rtx4090x2"), weight_format="bf16", batch=1, workload=WORK, cache_ratio=0.8)
    p2 = predict(qwen, get_profile("rtx4090x2"), weight_format="bf16", batch=1, workload=WORK, cache_ratio=0.8, tp=2)
    assert p2.weights_gib == p1.weights_gib and p2.kv_tokens > 2 * p1.kv_tokens
    assert p1.decode_tok_s_b1 < p2.decode_tok_s_b1 < 2 * p1.decode_tok_s_b1  # the collectives cost something
    assert any("per GPU" in n for n in p2.notes)
    refused = predict(qwen, get_profile("rtx4090x8"), weight_format="bf16", batch=1, workload=WORK, cache_ratio=0.8,
                      tp=8)
    assert refused.decode_tok_s_b1 is None and "28 attention heads" in refused.notes[0]


def test_tune_refuses_a_tp_beyond_the_cards_in_the_plans_words():
    result = _invoke("tune", "--gpu", "rtx4090", "--tp", "2", "--device", "cpu")
    assert result.exit_code == 2
    assert "error: --tp 2 needs 2 cards and --gpu rtx4090 has one card: ask for the machine as rtx4090x2" in \
        result.output
