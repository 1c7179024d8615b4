"""Quantization's quality acceptance on the CPU: held-out perplexity of the embedded SmolLM2 through the
engine, side by side: the unquantized baseline, round-to-nearest int4, AWQ int4, int8 weights and an
int8 KV cache (issue 13), and int8 / AWQ with the int8 LM head that --lm-head-int8 auto adds on the GPU.

Text: `opsctl eval ppl --text builtin`'s held-out half of the standard library's docstrings, never the
calibration half. Group size 64, not LMDeploy's 128: SmolLM2's hidden size (576) does not divide by 128.
AWQ is calibrated with AutoAWQ's default calibration size, 128 windows of 512 tokens (LMDeploy's 128 x 2048
takes 4x the forward passes on two cores), the scale search (both scale forms) and the clipping search.
"""
from __future__ import annotations

import pytest

from engine.config import EngineConfig

TOKENS = 8192  # scored tokens of held-out text: 8 windows of 1024
GROUP = 64
# The goals, against the unquantized baseline.
INT8_GOAL = KV_INT8_GOAL = 1.01
HEAD_INT8_COST = 1.005  # the int8 LM head (--lm-head-int8) on top of a format's own perplexity
AWQ_GOAL = 1.10
CALIB_SAMPLES, CALIB_SEQLEN = 128, 512  # AutoAWQ's defaults (n_samples, seqlen)
# What AWQ reaches here: 1.0984x (18.539 against 16.878, 2026-12-05; the fixture took 11.6 min on 2 cores,
# 9 of them quantizing), the scale search trying both forms of scale (AwqOptions.scale_forms). History,
# same text and group size, each step kept only where it helped:
# - AutoAWQ's recipe (duo scales only, clipping on 512 sampled tokens), 32 x 512 windows: 1.114x.
# - The clipping search's statistic over every calibration token (awq_search.second_moment): 1.111x.
# - Tried and not kept (2026-12-02..04, 32 x 512): asymmetric clipping 1.112x; least-squares group scales
#   1.120x; GPTQ rounding after the AWQ scales 1.109x; 16 windows of 1024 1.119x; q/k/v judged on the whole
#   layer 1.115x; the ratio searched with each candidate's clipping 1.116-1.121x; norm tweaking 1.111-1.115x;
#   q/k clipped too 1.111x; the scale search on 16,384 tokens instead of 4,096 1.111x; o_proj scaled under
#   GQA 1.119x; a clipping grid of 100 instead of 20 1.112x (2026-12-05).
# - 2026-12-05: the calibration sample matters more than the 2026-12-04 subsets showed (1.1108 / 1.1074 /
#   1.1035x, windows shifted within the stream): three subsets of 32 x 512 windows with the stream cut at 0,
#   1/4 and 1/2 of the window spacing give 1.1114 / 1.1278 / 1.0994x with duo scales only, and 1.1026 /
#   1.1156 / 1.1012x with both forms (-0.006 on average, better on two subsets of three). With AutoAWQ's 128
#   windows: duo only 1.1052x, both forms 1.0983x. So the test calibrates on 128 windows (a larger sample
#   should move less; not measured at 128) and holds AWQ to the goal itself. The margin is thin (0.002), but
#   the quantization with torch on one thread instead of two (other reduction orders) gave the bit-identical
#   perplexity; a CPU with other SIMD kernels could still tip one grid choice of the search.


@pytest.fixture(scope="module")
def perplexities(default_model_dir, tmp_path_factory):
    from engine.engine import LLMEngine
    from engine.quant.awq import AwqOptions, quantize_awq, quantize_rtn
    from toolkit.perplexity import load_text, perplexity

    root = tmp_path_factory.mktemp("quality")
    rtn = quantize_rtn(default_model_dir, root / "rtn", w_group_size=GROUP, progress=False).work_dir
    awq = quantize_awq(default_model_dir, root / "awq",
                       AwqOptions(calib_samples=CALIB_SAMPLES, calib_seqlen=CALIB_SEQLEN, w_group_size=GROUP,
                                  search_scale=True),
                       progress=False).work_dir
    text = load_text("builtin")
    runs = {"baseline": (default_model_dir, {}), "rtn": (str(rtn), {}), "awq": (str(awq), {}),
            "int8": (default_model_dir, {"model_format": "int8"}),
            "kv_int8": (default_model_dir, {"quant_policy": 8}),
            # what --lm-head-int8 auto gives these formats on the CUDA kernels: the head in int8 too
            "int8_head8": (default_model_dir, {"model_format": "int8", "lm_head_int8": "on"}),
            "awq_head8": (str(awq), {"lm_head_int8": "on"})}
    out = {}
    for name, (model, settings) in runs.items():
        engine = LLMEngine(model, EngineConfig(device="cpu", dtype="float32", **settings))
        result = perplexity(engine, text, window=1024, max_tokens=TOKENS)
        assert result.tokens_scored == TOKENS - TOKENS // 1024  # every window's first token has no context
        out[name] = result.perplexity
        del engine
    print("\n" + "\n".join(f"{name:9s} {p:8.3f}  {p / out['baseline']:.4f}x" for name, p in out.items()))
    return out


@pytest.mark.slow
def test_int8_weights_and_int8_kv_cache_within_one_percent(perplexities):
    base = perplexities["baseline"]
    assert perplexities["int8"] <= INT8_GOAL * base
    assert perplexities["kv_int8"] <= KV_INT8_GOAL * base
    assert perplexities["int8_head8"] <= INT8_GOAL * base  # int8 linears and an int8 head together


@pytest.mark.slow
def test_an_int8_head_costs_awq_at_most_half_a_percent(perplexities):
    assert perplexities["awq_head8"] <= HEAD_INT8_COST * perplexities["awq"]


@pytest.mark.slow
def test_awq_beats_round_to_nearest(perplexities):
    base, awq, rtn = perplexities["baseline"], perplexities["awq"], perplexities["rtn"]
    assert base < awq < rtn
    assert awq <= AWQ_GOAL * base, f"AWQ {awq / base:.4f}x the baseline (goal {AWQ_GOAL}x)"
