"""The workloads `opsctl tune` tunes for: prompt and output lengths and the latency goal of each.

A preset is what a team means by "a chat service" or "a batch job"; its SLO is the goal a tune must
meet unless `--slo` overrides it. Limits are per request, judged as GuideLLM's goodput profile
judges them: a load passes when at least `percentile` % of its requests meet every limit (for one
limit that is exactly "the pNN of that metric is within the limit").

On the CPU profile the GPU figures would make every trial fail or run for hours, so the lengths
and limits are scaled to what two cores running a 135M model can do, and the result says so.
"""
from __future__ import annotations

from dataclasses import dataclass

from toolkit.bench.metrics import LimitError

from .schema import Slo, TuneWorkload


@dataclass(frozen=True)
class Preset:
    input_len: int
    output_len: int
    ttft_ms: float
    tpot_ms: float
    about: str


# GPU figures. chat: TTFT p99 200 ms and TPOT p99 50 ms (a reply that starts at once and streams faster
# than reading speed); rag: long retrieved contexts, so a later first token is accepted; code: long
# completions that must stream fast; batch: offline jobs where only throughput matters within loose bounds.
PRESETS = {
    "chat": Preset(512, 256, 200.0, 50.0, "a chat assistant: short prompts, replies streamed to a reader"),
    "rag": Preset(3072, 256, 1000.0, 60.0, "retrieval-augmented answers: long contexts, short replies"),
    "code": Preset(1024, 512, 500.0, 30.0, "code completion: medium prompts, long fast-streaming outputs"),
    "batch": Preset(1024, 512, 30000.0, 200.0, "offline batch jobs: throughput within loose bounds"),
}
SHAREGPT = "sharegpt"
# The CPU profile (2 cores, the embedded 135M model): prompts and outputs cut so a trial takes tens of
# seconds; limits where 2 cores cross them between 8 and 16 streams (measured: TPOT p99 60-90 ms at 8
# streams, a decode step of ~40 ms at one).
CPU_SCALE = {"input_len": 64, "output_len": 32, "ttft_ms": 2000.0, "tpot_ms": 100.0}
DEFAULT_PERCENTILE = 99


def workload_names() -> list[str]:
    return [*PRESETS, f"{SHAREGPT}:PATH"]


def resolve_workload(spec: str, *, cpu: bool, input_len: int | None = None,
                     output_len: int | None = None) -> tuple[TuneWorkload, Slo]:
    """The workload and its default SLO for `--workload SPEC` (chat | rag | code | batch | sharegpt:PATH);
    `input_len` / `output_len` replace the preset's (or the CPU-scaled) lengths, the SLO stays the preset's."""
    name, _, path = spec.partition(":")
    if name == SHAREGPT:
        if not path:
            raise LimitError("--workload sharegpt:PATH needs the path of a ShareGPT JSON file")
        preset = PRESETS["chat"]
    elif name in PRESETS and not path:
        preset = PRESETS[name]
    else:
        raise LimitError(f"--workload {spec!r}: unknown; choose from {', '.join(workload_names())}")
    for flag, value in (("--input-len", input_len), ("--output-len", output_len)):
        if value is not None and value < 1:
            raise LimitError(f"{flag} {value}: must be >= 1")
        if value is not None and name == SHAREGPT:
            raise LimitError(f"{flag}: a sharegpt workload takes its lengths from the file")
    preset_in, preset_out, ttft, tpot = preset.input_len, preset.output_len, preset.ttft_ms, preset.tpot_ms
    if cpu:
        preset_in, preset_out = CPU_SCALE["input_len"], CPU_SCALE["output_len"]
        ttft, tpot = CPU_SCALE["ttft_ms"], CPU_SCALE["tpot_ms"]
    workload = TuneWorkload(name=name, input_len=input_len or preset_in, output_len=output_len or preset_out,
                            dataset=path or None, scaled_for_cpu=cpu)
    return workload, Slo(ttft_ms=ttft, tpot_ms=tpot, percentile=DEFAULT_PERCENTILE,
                         attainment=DEFAULT_PERCENTILE / 100)


def apply_slo_override(slo: Slo, text: str | None) -> Slo:
    """`--slo ttft_p99_ms=200,tpot_p99_ms=50`: the limits and their percentile (one for both)."""
    if not text:
        return slo
    from toolkit.bench.metrics import parse_slo

    limits = parse_slo(text)  # validates names: a typo is an error, not an ignored limit
    values = {"ttft": slo.ttft_ms, "tpot": slo.tpot_ms}
    percentiles = set()
    for name, limit in limits.items():
        metric, stat, _ = name.split("_")
        if metric not in values:
            raise LimitError(f"--slo {name}: tune judges ttft and tpot limits only")
        if not stat.startswith("p") or not stat[1:].isdigit():
            raise LimitError(f"--slo {name}: tune limits name a percentile (e.g. {metric}_p99_ms)")
        values[metric] = limit
        percentiles.add(int(stat[1:]))
    if len(percentiles) > 1:
        raise LimitError(f"--slo {text!r}: give both limits at the same percentile")
    percentile = percentiles.pop() if percentiles else slo.percentile
    if percentile >= 100:
        raise LimitError(f"--slo {text!r}: a percentile below 100 (a finite sample cannot show p100)")
    return Slo(ttft_ms=values["ttft"], tpot_ms=values["tpot"], percentile=percentile, attainment=percentile / 100)
