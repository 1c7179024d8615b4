"""The planner's calibration: toolkit.calibrate reproduces the profiles' figures from the committed
runs, predictions meet the 15% goal on them (leave one workload out), the default for cards with
no runs, no speeds for what does not fit, and the recommendation's serve line."""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from engine.config import EngineConfig
from engine.models.presets import preset_config
from toolkit import calibrate
from toolkit import planner
from toolkit.cli import app
from toolkit.commands.engine_options import ENGINE_FLAGS
from toolkit.commands.plan import serve_argv
from toolkit.profiles import Calibration, Efficiency, efficiency, load_profile_file, load_profiles

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "reports" / "examples"
QWEN25_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
             "tie_word_embeddings": False}
QWEN25_14B = {"model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
              "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064}
LLAMA_70B = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
             "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}


@pytest.fixture(scope="module")
def profiles():
    return load_profiles()


@pytest.fixture(scope="module")
def runs(profiles):
    return calibrate.collect([EXAMPLES], profiles)


def test_the_tool_reproduces_the_profiles_figures(profiles, runs):
    derived = calibrate.derive(runs, profiles)
    assert set(derived) == {"h100-sxm", "h200"}
    for name, figures in derived.items():
        assert profiles[name].calibration == figures, f"{name}: run `python -m toolkit.calibrate reports/examples --write`"
    assert calibrate.stale(profiles, derived) == []
    assert calibrate.main([str(EXAMPLES), "--check"]) == 0
    # What the issue quotes: the memory torch showed on each card, read from the runs.
    assert profiles["h200"].usable_memory() == (139.8, "measured")
    assert profiles["h100-sxm"].usable_memory() == (79.2, "measured")
    assert profiles["rtx4090"].usable_memory() == (24, "datasheet")


def test_decode_efficiency_is_the_measured_fraction_of_the_roofline(profiles, runs):
    # H100 decode-b1 (peers-decode-b1, 183.2 decode tok/s at context 128 + 256/2) against the planner's
    # roofline at the measured 3000 GB/s: 14,141,238,272 weight bytes + 256 x 57,344 of KV per step.
    roofline = 3000e9 / (14_141_238_272 + 256 * 57_344)
    decode = [o for o in calibrate.best_runs(runs.observations) if o.profile == "h100-sxm" and o.kind == "decode"]
    assert {o.workload.split(":")[0] for o in decode} == {"decode-b1", "long-context"}
    b1 = next(o for o in decode if o.workload.startswith("decode-b1"))
    assert b1.path == "reports/examples/h100/peers-decode-b1/result.json"  # the fastest; the torch path is slower
    assert b1.context_len == pytest.approx(256)
    assert b1.measured / roofline == pytest.approx(0.864, abs=5e-4)
    assert profiles["h100-sxm"].calibration.decode_bandwidth_efficiency == pytest.approx(0.869, abs=5e-4)


def test_leave_one_workload_out_errors_meet_the_goal(profiles, runs):
    rows = calibrate.check(runs, profiles)
    kinds = {(r.obs.profile, r.obs.kind) for r in rows}
    assert {("h100-sxm", "decode"), ("h100-sxm", "throughput"), ("h200", "throughput"), ("h200", "served")} <= kinds
    for row in rows:
        if row.obs.kind != "prefill":  # TTFT is shown, not held to the goal
            assert abs(row.left_out_error) <= calibrate.GOAL, (row.obs.path, row.obs.workload, row.left_out_error)
            assert abs(row.error) <= calibrate.GOAL


def test_h200_batch1_decode_of_qwen25_7b_within_15_percent(profiles):
    # No H200 batch-1 run is committed yet, so the H200 decode efficiency is the default from the H100's
    # runs. The engine measured 247.7 tok/s there (bench offline decode-b1 at 33e247c: 128-token prompt,
    # 256 new; the figure issue 12 quotes as 248, against a datasheet roofline of 337).
    h200 = profiles["h200"]
    shape = planner.ModelShape.from_config(preset_config("qwen2.5-7b"))
    params, weights = planner.count_params(shape), planner.weight_bytes(shape, "bf16")
    eff = efficiency(h200, profiles)
    assert eff.origins["decode_bandwidth_efficiency"].startswith("default")
    one = planner.predict_decode(shape, params, weights, batch_size=1, context_len=128 + 256 / 2,
                                 bandwidth_gbs=h200.bandwidth()[0], tflops=h200.tensor_tflops()[0], efficiency=eff)
    assert one.roofline_tokens_per_s == pytest.approx(4800e9 / (weights.decode + 256 * 57_344))
    assert abs(one.tokens_per_s / 247.7 - 1) <= 0.15
    assert one.tokens_per_s < one.roofline_tokens_per_s


def test_default_efficiency_for_cards_without_runs(profiles):
    h100, h200 = profiles["h100-sxm"], profiles["h200"]
    # The H100's decode figure is a fraction of its measured 3000 GB/s: 3000/3350 of it carries over.
    assert h100.datasheet_fraction("decode_bandwidth_efficiency") == pytest.approx(
        h100.calibration.decode_bandwidth_efficiency * 3000 / 3350)
    rtx = efficiency(profiles["rtx4090"], profiles)
    assert rtx.decode_bandwidth == pytest.approx(h100.datasheet_fraction("decode_bandwidth_efficiency"))
    assert rtx.gemm == pytest.approx((h100.datasheet_fraction("gemm_efficiency")
                                      + h200.datasheet_fraction("gemm_efficiency")) / 2)
    assert all(o.startswith("default") for o in rtx.origins.values())
    cpu = efficiency(profiles["cpu"], profiles)  # a GPU's efficiency says nothing about a CPU host
    assert cpu.is_roofline and (cpu.decode_bandwidth, cpu.gemm, cpu.prefill) == (1.0, 1.0, 1.0)
    own = efficiency(h100, profiles)
    assert own.origins["gemm_efficiency"].startswith("calibrated: ") and own.gemm == h100.calibration.gemm_efficiency


def test_throughput_prediction_by_hand(profiles):
    shape = planner.ModelShape.from_config(QWEN25_7B)
    params, weights = planner.count_params(shape), planner.weight_bytes(shape, "bf16")
    eff = Efficiency(0.8, 0.5, 0.7)
    out = planner.predict_throughput(shape, params, weights, batch_size=64, prompt_len=512, output_len=256,
                                     bandwidth_gbs=4800, tflops=989, efficiency=eff)
    prefill = (2 * params.multiplying * 512 + 2 * 28 * 28 * 128 * 512**2) / (989e12 * 0.5)
    context = 512 + 128
    memory = (weights.decode + 64 * context * 57_344) / (4800e9 * 0.8)
    compute = 64 * (2 * params.multiplying + 4 * 28 * 28 * 128 * context) / (989e12 * 0.5)
    assert out.bound == "memory" and memory > compute
    assert out.output_tokens_per_s == pytest.approx(64 * 256 / (64 * prefill + 256 * memory))
    assert out.roofline_output_tokens_per_s > out.output_tokens_per_s
    # A cache of 20 sequences of 768 tokens (12 blocks each) runs 20 of the 64 streams at a time.
    capped = planner.predict_throughput(shape, params, weights, batch_size=64, prompt_len=512, output_len=256,
                                        bandwidth_gbs=4800, tflops=989, efficiency=eff, kv_tokens=20 * 768 + 700)
    assert capped.batch_size == 20 and "holds 20 sequences" in capped.notes[0]


def test_predict_serving_for_the_tuner(profiles):
    out = planner.predict_serving(QWEN25_7B, profiles["h200"], quant="bf16", batch_size=64, prompt_len=512,
                                  output_len=256)
    assert out.fits and out.kv_tokens > 64 * 768
    assert out.throughput.output_tokens_per_s == pytest.approx(8162, rel=0.01)  # the check's H200 c=64 figure
    assert out.decode_b1.context_len == 512 + 128
    none = planner.predict_serving(LLAMA_70B, profiles["rtx4090"], quant="bf16", batch_size=8, prompt_len=512,
                                   output_len=256)
    assert not none.fits and none.decode_b1 is None and none.throughput is None


def test_plan_uses_usable_memory_and_predictions(profiles):
    plan = planner.make_plan(QWEN25_7B, profiles["h200"], quants=("bf16",), batch_sizes=(1,), context_len=2048)
    bf16 = plan.quants[0]
    assert plan.memory_bytes == int(139.8 * 2**30) and plan.memory_source == "measured"
    assert plan.datasheet_memory_bytes == 141 * 2**30
    assert bf16.free_bytes == int(139.8 * 2**30) - bf16.weights.total - 2 * 2**30
    # The datasheet roofline the issue quotes (337 tok/s at batch 1), and the prediction below it.
    assert round(bf16.decode[0].tokens_per_s) == 337
    assert bf16.predicted_decode[0].tokens_per_s == pytest.approx(337 * plan.efficiency.decode_bandwidth, rel=2e-3)


def test_no_speed_for_a_format_that_does_not_fit(profiles, tmp_path):
    plan = planner.make_plan(LLAMA_70B, profiles["rtx4090"], quants=("bf16", "awq"))
    assert all(not q.fits and not q.decode and not q.predicted_decode and not q.prefill for q in plan.quants)
    assert plan.recommendation is None and "no bf16 row fits" in plan.no_recommendation
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_14B))  # 29.5 GB in bf16, 9 GB as AWQ
    result = CliRunner().invoke(app, ["plan", str(tmp_path), "--gpu", "a10", "--quant", "bf16,awq", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_quant = {q["quant"]: q for q in data["quants"]}
    assert not by_quant["bf16"]["fits"] and by_quant["bf16"]["decode"] == [] and by_quant["bf16"]["prefill"] == []
    assert by_quant["awq"]["fits"] and len(by_quant["awq"]["predicted_decode"]) == 5


def test_no_speed_in_the_table_for_rows_that_do_not_fit(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    result = CliRunner().invoke(app, ["plan", str(tmp_path), "--gpu", "rtx4090", "--quant", "bf16"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    decode = result.output[result.output.index("Decode tokens/s"):result.output.index("Prefill time")]
    row = next(line for line in decode.splitlines() if "bf16" in line)
    assert [cell.strip() for cell in row.split("│")[3:-1]] == ["-"] * 5
    assert "Recommendation: none: no bf16 row fits" in result.output


def parse_serve(argv: list[str]) -> EngineConfig:
    """An `opsctl serve ...` argv parsed by the real command's parser, without running it."""
    assert argv[:2] == ["opsctl", "serve"]
    params = typer.main.get_command(app).commands["serve"].make_context("serve", list(argv[2:])).params
    return EngineConfig(**{name: params[param] for name, param, _, _ in ENGINE_FLAGS})


def test_recommendation_serve_line_parses_back_to_the_same_config(profiles):
    plan = planner.make_plan(QWEN25_7B, profiles["rtx4090"], quants=("bf16", "awq"))
    rec = plan.recommendation
    assert rec.quant == "bf16"  # AWQ fits better but the engine cannot run it yet
    config = EngineConfig(**rec.engine)
    argv = serve_argv(rec, "/models/Qwen2.5 7B")
    assert parse_serve(argv) == config and argv[2] == "/models/Qwen2.5 7B"
    assert config.max_batch_size == rec.batch_size and config.cache_max_entry_count == rec.cache_ratio
    kv = next(k for k in plan.quants[0].kv if k.cache_ratio == rec.cache_ratio)
    chosen = next(d for d in plan.quants[0].decode if d.batch_size == rec.batch_size)
    assert chosen.cache_ratio_needed <= rec.cache_ratio and kv.sequences_in_blocks >= 1
    fitting = [p.tokens_per_s for d, p in zip(plan.quants[0].decode, plan.quants[0].predicted_decode)
               if d.cache_ratio_needed <= max(k.cache_ratio for k in plan.quants[0].kv)]
    assert rec.tokens_per_s == max(fitting)


def test_plan_on_a_directory_holding_only_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B))  # no weights, no tokenizer
    result = CliRunner().invoke(app, ["plan", str(tmp_path), "--gpu", "h200", "--quant", "bf16"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "139.8 GiB usable (measured; 141 on the datasheet)" in result.output
    assert "decode 0.778 of 4800 GB/s: default" in result.output
    serve_line = result.output.strip().splitlines()[-1].strip()
    assert serve_line.startswith(f"opsctl serve {tmp_path} ")
    config = parse_serve(shlex.split(serve_line))
    assert config.dtype == "bfloat16" and config.session_len == 4096 and config.max_batch_size == 256


def test_write_calibration_round_trip(tmp_path, profiles):
    root = tmp_path / "profiles"
    shutil.copytree(REPO / "profiles", root)
    h200 = root / "h200.yaml"
    text = h200.read_text()
    before = profiles["h200"].calibration
    changed = Calibration(**{**before.model_dump(exclude_none=True), "gemm_efficiency": 0.5})
    calibrate.write_calibration(h200, calibrate.render_block(changed, ["decode_bandwidth_efficiency"]))
    assert load_profile_file(h200).calibration == changed
    assert h200.read_text().count("calibration:") == 1 and h200.read_text().count(calibrate.HEADER) == 1
    calibrate.write_calibration(h200, calibrate.render_block(before, ["decode_bandwidth_efficiency",
                                                                      "prefill_efficiency"]))
    assert h200.read_text() == text  # the block is replaced in place, comments and all
    rtx = root / "rtx4090.yaml"  # a profile without a block gains one before its source line
    calibrate.write_calibration(rtx, calibrate.render_block(Calibration(usable_memory_gib=23.5,
                                                                        usable_memory_source="a run"), []))
    assert load_profile_file(rtx).usable_memory() == (23.5, "measured")
    assert rtx.read_text().rstrip().splitlines()[-1].startswith("source:")


def test_a_figure_needs_its_source():
    with pytest.raises(ValueError, match="gemm_efficiency and gemm_source go together"):
        Calibration(gemm_efficiency=0.5)
    with pytest.raises(ValueError):
        Calibration(decode_bandwidth_efficiency=2.0, decode_source="x")  # above 1.5: a wrong roofline


def test_runs_over_several_gpus_calibrate_nothing(profiles, tmp_path):
    # One card's efficiencies: a tp=2 run's time holds the collectives too, which the planner adds from the
    # link, so calibrating from it would count them twice. The same file at tp=1 does calibrate.
    data = json.loads((EXAMPLES / "h200" / "formats-decode-b1" / "result.json").read_text())
    data["git_commit"] = "6baed3ed38d699ddb9cd7b9c2277f949eee78126"  # as if committed: no "+wip" skip
    engine_runs = [r for r in data["runs"] if r.get("target") == "engine" and not (r.get("config") or {}).get(
        "model_format") and not (r.get("config") or {}).get("quant_policy")]
    assert engine_runs
    (tmp_path / "tp1").mkdir()
    (tmp_path / "tp1" / "result.json").write_text(json.dumps(data))
    for r in engine_runs:
        r["config"]["tp"] = 2
    (tmp_path / "tp2").mkdir()
    (tmp_path / "tp2" / "result.json").write_text(json.dumps(data))
    one = calibrate.collect([tmp_path / "tp1"], profiles)
    two = calibrate.collect([tmp_path / "tp2"], profiles)
    assert len(one.observations) >= len(engine_runs) and not two.observations
    assert two.skipped["engine runs over several GPUs (tp > 1)"] == len(engine_runs)
