"""Lab 16: the CUDA W4A16 / W8A16 kernels' one-row launch choices, swept inside the engine's own decode step.

Labs 5 and 10 timed one kernel after another of the same shape; the engine runs a layer's chain under early
launch (programmatic dependent launch), where launch_config's docstring records the two disagreeing. This lab
times what decides batch-1 tok/s: the engine's batch-1 decode CUDA graph (recaptured for each choice) and the
LM head after it, on a loaded engine, one linear shape's choice changed at a time from the default (warps,
min blocks an SM, pipelined, K splits: the variants the build instantiates), the default re-timed every few
arms to show the machine's drift. Then the best choice of every shape together against the default, A B A B,
in step time and in the engine's own decode-b1 tok/s (`toolkit.bench.offline`), bf16's decode-b1 in the same
process as the peer of the ratio.

    python3 ci/kernel_lab/one_row_configs.py --formats awq-cuda,int8-cuda --out $OUT/one_row.json

Nothing here changes the engine: the choices are swapped in by wrapping w4_mma.launch_config (the name
w4_mma.launch and w8_mma.launch_few call) for one-row calls only.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

# The few-row variants the build instantiates for one row (w4_mma.cu's launch_t): (warps, min blocks, pipelined).
AWQ_VARIANTS = ((8, 2, False), (8, 1, True), (4, 1, True))
INT8_VARIANTS = ((8, 2, False), (8, 1, False), (4, 1, False))


class Choices:
    """launch_config with one-row overrides keyed by (n, k, pipelined): pipelined tells the AWQ kernel's calls
    (True) from the int8 kernel's (False: int8 linears and the int8 LM head)."""

    def __init__(self, default):
        self.default, self.override, self.seen = default, {}, {}

    def __call__(self, m, n, k, num_sms, pipelined=True):
        base = self.default(m, n, k, num_sms, pipelined)
        if m != 1:
            return base
        key = (n, k, pipelined)
        self.seen[key] = base
        return self.override.get(key, base)


def split_choices(groups: int) -> list[int]:
    """K splits worth trying: every split count whose splits all hold work and at least 4 groups (divisors
    first, then a few uneven ones for long K)."""
    out = [d for d in range(1, min(groups, 16) + 1) if groups % d == 0 and groups // d >= 4]
    if groups >= 64:
        for s in (6, 8, 12, 16):
            per = -(-groups // s)
            if s not in out and per >= 4 and (s - 1) * per < groups:
                out.append(s)
    return sorted(out)


def arms_for(key, default, int8: bool) -> list[tuple]:
    n, k, _ = key
    groups = k // 128
    splits = split_choices(groups)
    if n // 64 >= 256:  # very wide (gate_up, the head): about two waves of stripes or more unsplit already
        splits = [s for s in splits if s <= 2]
    variants = INT8_VARIANTS if int8 else AWQ_VARIANTS
    return [(w, b, p, s) for (w, b, p) in variants for s in splits if (w, b, p, s) != tuple(default)]


def decode_state(buffers, context: int) -> None:
    """One sequence of `context` tokens in the cache's first blocks, its new row written nowhere (slot -1): the
    batch-1 decode graph's inputs for timing (the KV rows read are whatever the cache holds)."""
    import torch

    bs = buffers.block_size
    blocks = -(-context // bs)
    buffers.device_view("seq_lens")[:1].fill_(context)
    buffers.device_view("slot_mapping")[:1].fill_(-1)
    buffers.device_view("block_tables")[0, :blocks].copy_(torch.arange(blocks, dtype=torch.int32))
    buffers.device_view("positions")[:1].fill_(context - 1)
    buffers.device_view("input_ids")[:1].fill_(1000)


def step_us(runner, context: int, reps: int, iters: int) -> float:
    """Median over `reps` of the mean GPU time of one batch-1 step (graph replay, then the LM head), the batch-1
    graph captured afresh (under whatever launch choices are patched in) on a sequence of `context` tokens."""
    import torch

    recapture(runner, 1)
    decode_state(runner.buffers, context)
    graphs = runner.graphs
    times = []
    for r in range(reps + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            hidden = graphs.replay(1)
            runner.model.compute_logits(hidden[:1])
        end.record()
        end.synchronize()
        if r:  # the first pass warms up
            times.append(start.elapsed_time(end) * 1000 / iters)
    return statistics.median(times)


def recapture(runner, max_batch: int) -> None:
    from engine.runner.cuda_graph import DecodeGraphs

    if runner.graphs is not None:
        runner.graphs.release()
    runner.graphs = DecodeGraphs(runner.model, runner.buffers, max_batch)
    runner.graphs.capture()


def stamped_log():
    """A print with the seconds since this call in front (the labs' progress lines)."""
    start = time.time()

    def log(line: str) -> None:
        print(f"[{time.time() - start:6.0f} s] {line}", flush=True)

    return log


def free_memory() -> None:
    """Hand the GPU memory of an engine the caller has dropped back before the next one loads."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def decode_b1(engine) -> float:
    from toolkit.bench.offline import bench_engine, build_workload

    work = build_workload("decode-b1", engine.vocab_size, max_len=engine.session_len)
    return bench_engine(engine, "lab", work, "")[0].summary.output_throughput


def sweep(fmt: str, model: str, choices: Choices, args, log, report: dict) -> dict:
    from engine.config import EngineConfig
    from engine.engine import LLMEngine
    from toolkit.bench.formats import WEIGHT_FORMATS

    engine = LLMEngine(model, EngineConfig(**WEIGHT_FORMATS[fmt]))
    runner = engine.runner
    full_batch = max(runner.graphs.sizes)
    result: dict = {"format": fmt, "arms": []}
    if fmt == "bf16":
        result["decode_b1_tok_s"] = [decode_b1(engine) for _ in range(2)]
        result["step_us"] = step_us(runner, args.context, args.reps, args.iters)
        log(f"bf16: decode-b1 {result['decode_b1_tok_s']} tok/s, step {result['step_us']:.1f} us")
    else:
        step_us(runner, args.context, 1, 5)  # one step first: the LM head's call is made outside the graph
        shapes = dict(choices.seen)
        result["shapes"] = {f"{n}x{k}{'' if p else ' (int8 kernel)'}": list(cfg) for (n, k, p), cfg in shapes.items()}
        log(f"{fmt}: one-row shapes and default choices {result['shapes']}")

        def timed(label: str, override: dict) -> float:
            choices.override = override
            us = step_us(runner, args.context, args.reps, args.iters)
            result["arms"].append({"label": label, "override": {f"{n}x{k}": list(v) for (n, k, _), v in
                                                                 override.items()}, "step_us": us})
            log(f"  {label:40s} {us:8.1f} us")
            args.out.write_text(json.dumps(report | {"partial": result}, indent=1))  # a cut-off run keeps its arms
            return us

        base = timed("default", {})
        best: dict = {}
        count = 0
        for key, default in shapes.items():
            n, k, pipelined = key
            scores = []
            for arm in arms_for(key, default, int8=not pipelined):
                count += 1
                if count % args.default_every == 0:
                    base = timed("default", {})
                us = timed(f"{n}x{k} {arm}", {key: arm})
                scores.append((us / base, arm))
            if scores:
                ratio, arm = min(scores)
                if ratio < 1 - args.min_gain:
                    best[key] = arm
        result["best"] = {f"{n}x{k}": list(v) for (n, k, _), v in best.items()}
        log(f"{fmt}: best per shape {result['best']}")
        if best:
            ab = {"default": [], "best": []}
            for _ in range(args.ab_rounds):
                ab["default"].append(timed("A default", {}))
                ab["best"].append(timed("B best", best))
            result["ab_step_us"] = ab
            tok = {"default": [], "best": []}
            for _ in range(args.ab_rounds):
                for label, override in (("default", {}), ("best", best)):
                    choices.override = override
                    recapture(runner, full_batch)
                    tok[label].append(decode_b1(engine))
                    log(f"  decode-b1 {label}: {tok[label][-1]:.1f} tok/s")
            result["ab_decode_b1_tok_s"] = tok
        choices.override = {}
    del engine, runner
    free_memory()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preset:qwen2.5-7b")
    parser.add_argument("--formats", default="awq-cuda,int8-cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--context", type=int, default=384, help="Tokens in the timed sequence's cache.")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--default-every", type=int, default=8)
    parser.add_argument("--min-gain", type=float, default=0.005, help="A shape's best arm must beat the default "
                                                                      "by this fraction to be kept.")
    parser.add_argument("--ab-rounds", type=int, default=2)
    args = parser.parse_args()

    from engine.kernels import w4_mma, w8_mma

    choices = Choices(w4_mma.launch_config)
    w4_mma.launch_config = w8_mma.launch_config = choices
    log = stamped_log()

    report = {"model": args.model, "context": args.context, "args": vars(args) | {"out": str(args.out)},
              "results": []}
    for fmt in ["bf16"] + [f for f in args.formats.split(",") if f]:
        choices.seen = {}
        report["results"].append(sweep(fmt, args.model, choices, args, log, report))
        args.out.write_text(json.dumps(report, indent=1))
    bf16 = report["results"][0]
    for r in report["results"][1:]:
        for label, runs in r.get("ab_decode_b1_tok_s", {}).items():
            log(f"{r['format']} {label}: decode-b1 {max(runs) / max(bf16['decode_b1_tok_s']):.3f}x bf16 (best runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
