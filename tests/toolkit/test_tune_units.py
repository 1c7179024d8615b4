"""The tuner's parts against their definitions: the Wilson interval by hand, GuideLLM's goodput search
order, SLO attainment per request, workload SLO overrides, planner pruning, and the coordinate search
(trial count against the grid, the default measured first, stored trials never re-run).
"""
from __future__ import annotations

import math

import pytest

from engine.config import EngineConfig, default_max_batch_size
from toolkit.bench.metrics import LimitError, RequestRecord
from toolkit.profiles import capped_memory, get_profile
from toolkit.tune.load_search import LoadSearch, attainment, requests_to_resolve, score, wilson_interval
from toolkit.tune.schema import LoadPoint, Slo, Trial, TuneResult, TuneWorkload
from toolkit.tune.runner import explain_choice
from toolkit.tune.search import Budget, CoordinateSearch, GridSearch, objective
from toolkit.tune.space import Space, build_space, drop_default_batch, parse_axis, pin_auto_kernels
from toolkit.tune.workloads import apply_slo_override, resolve_workload

SLO = Slo(ttft_ms=100, tpot_ms=10, percentile=95, attainment=0.95)


def test_wilson_interval_by_hand():
    # 95/100 at z = 1.96: centre (0.95 + 3.8416/200) / 1.038416 = 0.933352;
    # spread 1.96 * sqrt(0.000475 + 3.8416/40000) / 1.038416 = 0.045104
    low, high = wilson_interval(95, 100)
    assert low == pytest.approx(0.888248, abs=1e-5) and high == pytest.approx(0.978456, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(10 / (10 + 1.96 ** 2), abs=1e-3)


def test_attainment_counts_requests_meeting_every_limit():
    records = [RequestRecord(0, 0, 8, output_tokens=11, ttft_s=0.05, e2e_s=0.05 + 10 * 0.009),  # meets both
               RequestRecord(1, 0, 8, output_tokens=11, ttft_s=0.15, e2e_s=0.15 + 10 * 0.009),  # TTFT misses
               RequestRecord(2, 0, 8, output_tokens=11, ttft_s=0.05, e2e_s=0.05 + 10 * 0.011),  # TPOT misses
               RequestRecord(3, 0, 8, output_tokens=1, ttft_s=0.05, e2e_s=0.05),  # no TPOT: cannot miss it
               RequestRecord(4, 0, 8, error="HTTP 500")]  # judged, never good
    assert attainment(records, SLO) == (2, 5)


def _probe_at(knee: int, calls: list):
    def probe(c, n):
        calls.append((c, n))
        good = n if c <= knee else n // 2
        point = LoadPoint(concurrency=c, requests=n, output_tok_s=10.0 * c, request_s=1)
        return score(point, good, n, SLO)
    return probe


def test_load_search_doubles_then_bisects_as_guidellm_does():
    calls = []
    search = LoadSearch(_probe_at(37, calls), SLO, initial=4, max_streams=256, requests_for=lambda c: 200)
    best = search.run()
    assert [c for c, _ in calls] == [4, 8, 16, 32, 64, 48, 40, 36, 38]
    assert best.concurrency == 36 and search.stop_reason.startswith("converged")


def test_load_search_reruns_an_unresolved_probe_only_when_twice_the_requests_could_resolve_it():
    assert requests_to_resolve(0.95) == 73 and requests_to_resolve(0.99) == 381 and requests_to_resolve(0.9) == 35
    calls = []
    search = LoadSearch(_probe_at(1000, calls), SLO, initial=4, max_streams=8, requests_for=lambda c: 40)
    search.run()
    # 40/40 has a Wilson lower bound of 0.91 < 0.95; 80/80 could resolve it (0.954): one re-run per level
    assert calls == [(4, 40), (4, 80), (8, 40), (8, 80)]
    assert all(p.resolved for p in search.points) and "most streams tried" in search.stop_reason
    calls.clear()
    search = LoadSearch(_probe_at(1000, calls), SLO, initial=4, max_streams=8, requests_for=lambda c: 20)
    search.run()
    # 40 could not resolve 0.95 either (73 needed): the verdicts stand, marked unresolved
    assert calls == [(4, 20), (8, 20)] and not any(p.resolved for p in search.points)


def test_load_search_walks_down_when_one_stream_fails():
    calls = []
    search = LoadSearch(_probe_at(0, calls), SLO, initial=4, requests_for=lambda c: 200)
    assert search.run() is None
    assert [c for c, _ in calls] == [4, 2, 1] and "one stream" in search.stop_reason


def test_workload_presets_and_slo_overrides():
    work, slo = resolve_workload("chat", cpu=False)
    assert (work.input_len, work.output_len, slo.ttft_ms, slo.tpot_ms, slo.percentile) == (512, 256, 200, 50, 99)
    work, slo = resolve_workload("chat", cpu=True)
    assert work.scaled_for_cpu and slo.tpot_ms > 50
    assert apply_slo_override(slo, "ttft_p90_ms=300").model_dump() == {
        "ttft_ms": 300, "tpot_ms": slo.tpot_ms, "percentile": 90, "attainment": 0.9}
    for bad in ("ttft_p99_ms=1,tpot_p90_ms=2", "e2e_p99_ms=5", "ttft_mean_ms=5", "tft_p99_ms=5"):
        with pytest.raises(LimitError):
            apply_slo_override(slo, bad)
    with pytest.raises(LimitError):
        resolve_workload("chatty", cpu=False)
    assert resolve_workload("sharegpt:/x.json", cpu=False)[0].dataset == "/x.json"
    # --input-len / --output-len replace the lengths (each on its own), never the SLO
    work, slo = resolve_workload("chat", cpu=False, output_len=64)
    assert (work.input_len, work.output_len, slo.ttft_ms) == (512, 64, 200)
    work, slo = resolve_workload("chat", cpu=True, input_len=100)
    assert (work.input_len, work.output_len, slo.tpot_ms) == (100, 32, 100)
    with pytest.raises(LimitError, match="--output-len 0"):
        resolve_workload("chat", cpu=False, output_len=0)
    with pytest.raises(LimitError, match="from the file"):
        resolve_workload("sharegpt:/x.json", cpu=False, input_len=100)


def test_axis_parsing():
    assert parse_axis("max_batch_size=8,16") == ("max_batch_size", [8, 16])
    assert parse_axis("cache-max-entry-count=0.5,2") == ("cache_max_entry_count", [0.5, 2.0])
    assert parse_axis("enable_prefix_caching=on,off") == ("enable_prefix_caching", [True, False])
    assert parse_axis("model_format=hf,int8,AWQ") == ("model_format", [None, "int8", "awq"])
    assert parse_axis("quant_policy=0,8") == ("quant_policy", [0, 8])
    assert parse_axis("tp=1,2") == ("tp", [1, 2])
    assert parse_axis("w4_kernel=triton,CUDA") == ("w4_kernel", ["triton", "cuda"])
    for bad in ("max_batch_size", "tp=0", "tp=two", "max_batch_size=x", "enable_prefix_caching=maybe",
                "model_format=gptq", "quant_policy=4", "pp=2", "w4_kernel=marlin"):
        with pytest.raises(ValueError):
            parse_axis(bad)


def test_planner_prunes_what_cannot_fit_on_a_24_gib_card():
    from engine.models.presets import preset_config

    work = TuneWorkload(name="rag", input_len=3072, output_len=256)
    space = build_space(preset_config("qwen2.5-7b"), get_profile("rtx4090"), work, cpu=False, weight_format="bf16",
                        session_len=32768)
    preset = build_space(preset_config("qwen2.5-7b"), get_profile("rtx4090"), work, cpu=False, weight_format="bf16",
                         session_len=32768, model_kind="preset")
    awq = build_space(preset_config("qwen2.5-7b"), get_profile("rtx4090"), work, cpu=False, weight_format="bf16",
                      session_len=32768, model_kind="awq")
    assert preset.axes["model_format"] == [None, "int8", "awq"]  # random weights round to AWQ at load
    assert awq.axes["model_format"] == [None] and any("AWQ only" in p.reason for p in awq.pruned)
    on_h200 = build_space(preset_config("qwen2.5-7b"), get_profile("h200"), work, cpu=False, weight_format="bf16",
                          session_len=32768)
    # a 16-bit checkpoint offers int8 and 16-bit weights; AWQ is pruned with the command that makes one
    assert space.axes["model_format"] == [None, "int8"] and space.axes["quant_policy"] == [0, 8]
    assert any("opsctl quantize awq" in p.reason for p in space.pruned)
    # Pruned is only what fits in no format offered: int8 weights (8.7 GB) and the int8 KV cache (30,464
    # bytes a token against 57,344) leave ~14.9 GB, ~465k tokens at 0.95: ~139 sequences of 3,328 tokens,
    # so every batch stays (16-bit weights and KV alone would hold ~35 and prune 128 and 256).
    assert space.axes["max_batch_size"] == [32, 64, 128, 256] and 256 in on_h200.axes["max_batch_size"]
    long_work = TuneWorkload(name="long", input_len=12000, output_len=256)  # ~37 sequences even at int8
    long = build_space(preset_config("qwen2.5-7b"), get_profile("rtx4090"), long_work, cpu=False,
                       weight_format="bf16", session_len=32768)
    assert long.axes["max_batch_size"] == [32, 64]
    assert any("batch 256 would only preempt" in p.reason for p in long.pruned)


def test_a_batch_cap_equal_to_the_cards_default_is_not_a_second_configuration():
    """The engine's default batch is 256 on an H200 (>= 64 GiB), 128 on a 24 GiB card: that value on the
    axis would measure the default configuration twice, so it is dropped with its reason; a base with
    its own cap keeps the axis whole."""
    assert [default_max_batch_size(m) for m in (None, 24 * 2**30, 64 * 2**30 - 1, 64 * 2**30, 139.8 * 2**30)] \
        == [32, 128, 128, 256, 256]
    for card, default, left in ((256, 256, [32, 64, 128]), (24, 128, [32, 64, 256])):
        space = Space("bf16", {"max_batch_size": [32, 64, 128, 256]})
        drop_default_batch(space, EngineConfig(), default_max_batch_size(card * 2**30))
        assert space.axes["max_batch_size"] == left
        assert [p.engine for p in space.pruned] == [{"max_batch_size": default}]
        assert f"already runs batch {default}" in space.pruned[0].reason
    kept = Space("bf16", {"max_batch_size": [32, 64, 128, 256]})
    drop_default_batch(kept, EngineConfig(max_batch_size=16), 256)
    assert kept.axes["max_batch_size"] == [32, 64, 128, 256] and not kept.pruned


def test_an_emulated_card_is_predicted_with_its_capped_memory():
    """An H200 allowed 24 GiB (--gpu-memory-gb 24) keeps the H200's speeds but sizes its cache as a
    24 GiB card's: the planner's KV tokens follow the cap, its bandwidth does not."""
    from engine.models.presets import preset_config
    from toolkit.tune.space import predict

    h200 = get_profile("h200")
    capped = capped_memory(h200, 24)
    assert capped.usable_memory() == (24, "measured") and capped.bandwidth() == h200.bandwidth()
    assert capped_memory(h200, 500) is h200  # a cap above the card changes nothing
    work = TuneWorkload(name="batch", input_len=1024, output_len=256)
    config = preset_config("qwen2.5-7b")
    full = predict(config, h200, weight_format="bf16", batch=128, workload=work, cache_ratio=0.8)
    small = predict(config, capped, weight_format="bf16", batch=128, workload=work, cache_ratio=0.8)
    rtx = predict(config, get_profile("rtx4090"), weight_format="bf16", batch=128, workload=work, cache_ratio=0.8)
    assert small.kv_tokens == rtx.kv_tokens < full.kv_tokens / 10
    # 117k tokens hold ~91 of these 1,280-token sequences: batch 128 cannot all run, so less throughput
    assert small.output_tok_s < full.output_tok_s


class _Runner:
    """Stands in for real trials: goodput = a made-up function of the settings."""

    def __init__(self, score):
        self.score, self.ran = score, []

    def __call__(self, trial: Trial) -> Trial:
        self.ran.append(trial.engine)
        tok_s = self.score(trial.engine)
        best = LoadPoint(concurrency=8, requests=32, output_tok_s=tok_s, request_s=1, meets_slo=True)
        return trial.model_copy(update={"best": best, "points": [best]})


def _result() -> TuneResult:
    return TuneResult(run_id="x", model="m", target_profile="h200", workload=TuneWorkload(
        name="chat", input_len=8, output_len=8), slo=SLO)


AXES = {"max_batch_size": [32, 64, 128, 256], "cache_max_entry_count": [0.8, 0.9],
        "max_prefill_token_num": [2048, 8192], "enable_prefix_caching": [False, True]}


def _score(e):
    return (e.get("max_batch_size", 256) ** 0.5 * (1.1 if e.get("cache_max_entry_count") == 0.9 else 1.0)
            * (1.08 if e.get("max_prefill_token_num") == 2048 else 1.0))


def test_coordinate_search_finds_the_grid_best_with_a_quarter_of_the_trials():
    coordinate, grid = _Runner(_score), _Runner(_score)
    r1, r2 = _result(), _result()
    s1 = CoordinateSearch(Space("bf16", dict(AXES)), EngineConfig(), r1, coordinate, lambda: None, Budget()).run_search()
    s2 = GridSearch(Space("bf16", dict(AXES)), EngineConfig(), r2, grid, lambda: None, Budget()).run_search()
    best_grid = max(t.best.output_tok_s for t in r2.trials)
    chosen = r1.trial(r1.chosen)
    assert chosen.best.output_tok_s >= 0.95 * best_grid
    # both searches report the same grid: the one the coordinate search is judged against (40 = 5 x 2 x 2 x 2)
    assert s1.trials_run <= 0.25 * s2.trials_run and s1.grid_size == s2.grid_size
    assert coordinate.ran[0] == {} and r1.trials[0].is_default  # the default first
    # max_batch_size 256 scores as the default (256 here): not 5% better, so the default's None is kept
    assert chosen.engine == {"cache_max_entry_count": 0.9, "max_prefill_token_num": 2048}
    # the grid takes the base's own value on each axis (the unset batch cap: 5 x 2 x 2 x 2), so every
    # configuration the coordinate search ran is one the grid measured (toolkit/tune/replay.py needs it)
    assert s2.grid_size == 40 and all(engine in grid.ran for engine in coordinate.ran)


def test_a_configuration_within_the_noise_margin_never_replaces_the_default():
    # int8 KV 3% faster than the default (inside search.NOISE, 5%), a bigger batch cap 2% slower: the
    # default is chosen although int8 KV is the fastest trial, and the choice says what it was kept against
    def score(e):
        return 1000.0 * (1.03 if e.get("quant_policy") == 8 else 1.0) * (0.98 if "max_batch_size" in e else 1.0)

    result = _result()
    axes = {"quant_policy": [0, 8], "max_batch_size": [128, 256]}
    CoordinateSearch(Space("bf16", axes), EngineConfig(), result, _Runner(score), lambda: None, Budget()).run_search()
    chosen = result.trial(result.chosen)
    assert chosen.is_default and max(objective(t) for t in result.trials) == 1030.0
    why = explain_choice(result)
    assert "it is the default configuration, kept because none of the other 3 measured beat it by more than 5%" in why
    assert "the fastest, --quant-policy 8, read 1,030.0 tok/s (1.03x)" in why
    # 6% faster clears the margin: chosen, and said against the default
    result = _result()
    CoordinateSearch(Space("bf16", axes), EngineConfig(), result,
                     _Runner(lambda e: 1060.0 if e.get("quant_policy") == 8 else 1000.0), lambda: None, Budget()).run_search()
    assert result.trial(result.chosen).engine == {"quant_policy": 8}
    assert explain_choice(result).endswith("1.06x the default configuration's 1,000.0 tok/s")
    # a change kept against a faster one within the margin says both, and what it bought over the default
    result = _result()
    CoordinateSearch(Space("bf16", axes), EngineConfig(), result,
                     _Runner(lambda e: 1000.0 * (1.1 if e.get("quant_policy") == 8 else 1.0)
                             * (1.02 if e.get("max_batch_size") == 128 else 1.0)), lambda: None, Budget()).run_search()
    assert result.trial(result.chosen).engine == {"quant_policy": 8}
    why = explain_choice(result)
    assert "; kept because none of the other 3 measured beat it by more than 5%" in why
    assert "the fastest, --max-batch-size 128 --quant-policy 8, read 1,122.0 tok/s (1.02x)" in why
    assert why.endswith("1.10x the default configuration's 1,000.0 tok/s") and "the most of" not in why


def test_stored_trials_are_not_rerun():
    first = _Runner(_score)
    result = _result()
    CoordinateSearch(Space("bf16", dict(AXES)), EngineConfig(), result, first, lambda: None, Budget(max_trials=3)).run_search()
    assert len(result.trials) == 3 and "trial budget" in result.search.stop_reason if result.search else True
    again = _Runner(_score)
    summary = CoordinateSearch(Space("bf16", dict(AXES)), EngineConfig(), result, again, lambda: None, Budget()).run_search()
    assert again.ran and not any(e in first.ran for e in again.ran)
    assert summary.trials_run == len(result.trials) == len(first.ran) + len(again.ran)
    assert math.isclose(result.trial(result.chosen).best.output_tok_s, max(t.best.output_tok_s for t in result.trials))


# The base the tune hands its search for a card where auto runs the Triton kernels (toolkit/tune/runner.py).
PINNED = EngineConfig(w4_kernel="triton", w8_kernel="triton")


def test_auto_kernels_are_pinned_to_what_auto_would_run_on_the_target_card():
    """The engine's default kernel choice (auto) is one of the two kernels; the search measures them by name, so
    the base takes auto's pick where the space searches the axis, and keeps auto where it does not."""
    axes = {"model_format": [None, "int8", "awq"], "w4_kernel": ["triton", "cuda"], "w8_kernel": ["triton", "cuda"]}
    space = Space("bf16", dict(axes))
    assert pin_auto_kernels(space, EngineConfig(), "triton") == PINNED
    on_hopper = pin_auto_kernels(space, EngineConfig(), "cuda")
    assert (on_hopper.w4_kernel, on_hopper.w8_kernel) == ("cuda", "cuda")
    assert len(space.grid(on_hopper)) == len(space.grid(PINNED)) == 5  # auto is never a third value
    pruned = Space("bf16", {"model_format": [None, "awq"], "w4_kernel": ["triton"]})
    assert pin_auto_kernels(pruned, EngineConfig(), "cuda").w4_kernel == "triton"  # not on offer: the axis's own
    assert pin_auto_kernels(pruned, EngineConfig(), "cuda").w8_kernel == "auto"  # not searched: left alone
    assert pin_auto_kernels(space, EngineConfig(w4_kernel="triton"), "cuda").w4_kernel == "triton"  # the user's


def test_auto_kernel_is_what_the_target_cards_default_would_run(monkeypatch):
    """The CUDA kernels only for a Hopper target measured on a Hopper GPU that can build them: an RTX 4090 tuned on
    an H200 starts from Triton, as a 4090's auto would."""
    import torch

    from toolkit.tune import runner

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert runner.auto_kernel(get_profile("h200"), None) == "cuda"
    assert runner.auto_kernel(get_profile("rtx4090"), None) == "triton"
    assert runner.auto_kernel(get_profile("h200"), "the CUDA W4A16 kernel ... needs nvcc") == "triton"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert runner.auto_kernel(get_profile("h200"), None) == "triton"


def test_the_awq_kernel_is_a_choice_only_where_awq_weights_are():
    """w4_kernel (engine/kernels/w4_mma.py): offered with AWQ formats (a preset, an AWQ checkpoint), absent for a
    16-bit checkpoint, pruned with its reason where the CUDA kernel cannot run; the search never pairs the
    CUDA kernel with 16-bit or int8 weights, and measures it with AWQ weights."""
    from engine.models.presets import preset_config

    work = TuneWorkload(name="chat", input_len=512, output_len=128)

    def space(kind, why=None, preset="qwen2.5-7b"):
        return build_space(preset_config(preset), get_profile("h200"), work, cpu=False, weight_format="bf16",
                           session_len=4096, model_kind=kind, w4_cuda_unavailable=why)

    assert space("preset").axes["w4_kernel"] == ["triton", "cuda"]
    assert space("awq").axes["w4_kernel"] == ["triton", "cuda"]
    assert "w4_kernel" not in space("hf").axes
    no_nvcc = space("preset", why="the CUDA W4A16 kernel ... needs nvcc")
    assert no_nvcc.axes["w4_kernel"] == ["triton"]
    reasons = [p.reason for p in no_nvcc.pruned if p.engine == {"w4_kernel": "cuda"}]
    assert reasons == ["the CUDA W4A16 kernel ... needs nvcc"]
    odd = space("preset", preset="tiny-qwen2")  # hidden size 112: no groups of 128
    assert odd.axes["w4_kernel"] == ["triton"] and any("multiples of 64" in p.reason for p in odd.pruned)
    # an AWQ checkpoint of group 64, or an fp16 one: what the engine would refuse is pruned with its words
    for change, words in (({"quantization_config": {"quant_method": "awq", "group_size": 64}}, "group size 128"),
                          ({"torch_dtype": "float16"}, "runs bf16 models")):
        config = preset_config("qwen2.5-7b")
        for key, value in change.items():
            setattr(config, key, value)
        pruned = build_space(config, get_profile("h200"), work, cpu=False, weight_format="bf16", session_len=4096,
                             model_kind="awq")
        assert pruned.axes["w4_kernel"] == ["triton"] and any(words in p.reason for p in pruned.pruned)

    axes = {"model_format": [None, "int8", "awq"], "w4_kernel": ["triton", "cuda"]}
    grid = Space("bf16", dict(axes)).grid(PINNED)
    assert {"model_format": "awq", "w4_kernel": "cuda"} in grid and len(grid) == 4  # 3 formats x triton + AWQ x cuda
    # the ascent: AWQ wins the format axis, then the CUDA kernel is tried with it (and only with it)
    runner = _Runner(lambda e: {"awq": 1200.0}.get(e.get("model_format"), 1000.0)
                     * (1.2 if e.get("w4_kernel") == "cuda" else 1.0))
    result = _result()
    CoordinateSearch(Space("bf16", dict(axes)), PINNED, result, runner, lambda: None, Budget()).run_search()
    assert runner.ran == [{}, {"model_format": "int8"}, {"model_format": "awq"},
                          {"model_format": "awq", "w4_kernel": "cuda"}]
    assert result.trial(result.chosen).engine == {"model_format": "awq", "w4_kernel": "cuda"}
    # AWQ that loses with the Triton kernels and wins with the CUDA one (batch-1 traffic): the format's step
    # tries both kernels, so the winner is found although AWQ never led with its default kernel
    runner = _Runner(lambda e: 1100.0 if e.get("w4_kernel") == "cuda" else
                     {"awq": 900.0, "int8": 1020.0}.get(e.get("model_format"), 1000.0))
    result = _result()
    CoordinateSearch(Space("bf16", dict(axes)), PINNED, result, runner, lambda: None, Budget()).run_search()
    assert runner.ran == [{}, {"model_format": "int8"}, {"model_format": "awq"},
                          {"model_format": "awq", "w4_kernel": "cuda"}]  # and the kernel axis re-runs nothing
    assert result.trial(result.chosen).engine == {"model_format": "awq", "w4_kernel": "cuda"}
    # int8 winning the format axis: the CUDA kernel is tried with AWQ only, never paired with int8
    runner = _Runner(lambda e: 1500.0 if e.get("model_format") == "int8" else 1000.0)
    result = _result()
    CoordinateSearch(Space("bf16", dict(axes)), PINNED, result, runner, lambda: None, Budget()).run_search()
    assert all(e.get("model_format") == "awq" for e in runner.ran if e.get("w4_kernel") == "cuda")
    assert result.trial(result.chosen).engine == {"model_format": "int8"}
    # an AWQ checkpoint loads AWQ with model_format unset: the kernel applies to the default format
    assert Space("bf16", {}, awq_values=("awq", None)).applies({"w4_kernel": "cuda"}, EngineConfig())
    assert not Space("bf16", {}).applies({"w4_kernel": "cuda"}, EngineConfig())


def test_the_int8_kernel_is_a_choice_only_where_int8_weights_are():
    """w8_kernel (engine/kernels/w8_mma.py): offered with int8 on offer, pruned with its reason where the CUDA
    kernels cannot run (no build, a layer size they refuse, an fp16 model); int8's step of the search tries
    both kernels, and the CUDA one is never paired with other weights."""
    from engine.models.presets import preset_config

    work = TuneWorkload(name="chat", input_len=512, output_len=128)

    def space(why=None, preset="qwen2.5-7b", **change):
        config = preset_config(preset)
        for key, value in change.items():
            setattr(config, key, value)
        return build_space(config, get_profile("h200"), work, cpu=False, weight_format="bf16",
                           session_len=4096, model_kind="preset", w4_cuda_unavailable=why)

    assert space().axes["w8_kernel"] == ["triton", "cuda"]
    for pruned, words in ((space(why="... needs nvcc"), "needs nvcc"),
                          (space(preset="tiny-qwen2"), "the CUDA W8A16 kernel needs N"),
                          (space(torch_dtype="float16"),
                           "the CUDA W8A16 kernel runs bf16 models (this one runs in float16)")):
        assert pruned.axes["w8_kernel"] == ["triton"]
        assert any(words in p.reason for p in pruned.pruned if p.engine == {"w8_kernel": "cuda"})
    assert "w8_kernel" not in build_space(preset_config("qwen2.5-7b"), get_profile("h200"), work, cpu=False,
                                          weight_format="bf16", session_len=4096, model_kind="awq").axes

    axes = {"model_format": [None, "int8", "awq"], "w4_kernel": ["triton", "cuda"], "w8_kernel": ["triton", "cuda"]}
    grid = Space("bf16", dict(axes)).grid(PINNED)
    assert {"model_format": "int8", "w4_kernel": "triton", "w8_kernel": "cuda"} in grid
    assert len(grid) == 5  # 3 formats with the Triton kernels, AWQ with its CUDA kernel, int8 with its own
    assert not Space("bf16", {}).applies({"model_format": "awq", "w8_kernel": "cuda"}, EngineConfig())
    # int8 that wins only with the CUDA kernels (64 requests): its format step measures both
    runner = _Runner(lambda e: 1100.0 if e.get("w8_kernel") == "cuda" else
                     {"awq": 900.0, "int8": 950.0}.get(e.get("model_format"), 1000.0))
    result = _result()
    CoordinateSearch(Space("bf16", dict(axes)), PINNED, result, runner, lambda: None, Budget()).run_search()
    assert {"model_format": "int8", "w8_kernel": "cuda"} in runner.ran
    assert all(e.get("model_format") == "int8" for e in runner.ran if e.get("w8_kernel") == "cuda")
    assert result.trial(result.chosen).engine == {"model_format": "int8", "w8_kernel": "cuda"}
