"""Lab 11 (written 2026-12-04 without a GPU; run 2026-12-05 on an H200, reports/examples/h200/
pending-ab-2026-12-05: no, the prefetch never pays, see the end of this docstring): can the weights of the
next linears be pulled into L2 while a decode step's bandwidth-light kernels run?

Why: at batch 1 the AWQ decode step on an H200 reads its weights at ~45% of the 4.8 TB/s limit
(reports/examples/h200/early-launch). The int4 linears of a layer take ~49 µs for ~121 MB (lab 5d) and between
them the norms, rotary + KV write, attention and its reduction and SiLU leave HBM nearly idle for ~10-15 µs a
layer. If that idle time pulled the next linears' first megabytes into the 50 MB L2, those linears would read
them at L2 speed: the question this lab answers before anything is built into the engine.

Part A, per Qwen2.5-7B shape at one row, µs per call of the engine's AWQ linear (w4_mma_linear): `cold` cycles
over >= 256 MB of weight copies (every call reads HBM, as the other labs), `hot` calls the same copy (for the
shapes that fit in L2 the second call on reads L2), and `prefetch_alone` the side kernel below reading the same
bytes. The floor a prefetch could reach is `hot`.

Part B, a layer-like chain at one row in one CUDA graph over >= 4 layer copies (cold weights): RMSNorm -> qkv ->
[stand-in for the attention: torch.cuda._sleep of T µs, one block, no HBM traffic] -> o -> RMSNorm -> gate_up
-> SiLU-and-mul -> down, µs per layer. Variants: `plain`; `prefetch` forks a side stream when the stand-in
starts, where one kernel reads o's weights and the first P MB of gate_up's (whole stripes, with their scales,
evict_last) and the graph joins it at the end of the layer. bf16 (cuBLAS) runs the same chain with the same
prefetch of its own weights: the ratio that issue 13 measures is AWQ's layer against bf16's, so the lab reports
both. If `prefetch` at T = 10 saves ~P / 4 TB/s of gate_up's time on AWQ and less on bf16, the engine's version
(a side stream in the decode graph, started at each layer's attention) is worth building; if the side kernel
slows the linears it overlaps, it is not.

    python3 ci/kernel_lab/l2_prefetch_lab.py > lab11.json          (on the GPU machine; JSON on stdout)
    options: --idle-us 0 10 20  --prefetch-mb 0 16 32  --programs 32 132

What it found (H200, 2026-12-05, lab11-stdout.log there: the JSON): L2 is not what the linears wait for. Part A: a
weight read from L2 (`hot`) is only 3-13% faster than from HBM (`cold`: qkv 7.05 / 6.38 µs, o 5.23 / 4.58, gate_up
23.85 / 21.63, down 13.53 / 13.06), so a perfect prefetch could save ~3 µs of a ~50 µs layer; the small linears run
at ~25% of 4.8 TB/s cold (qkv 1.19 TB/s, o 1.24) and barely faster hot, i.e. they are held by a fixed ~4 µs a
kernel, not by bandwidth. Part B: the prefetch lost or tied in every cell (AWQ layer 52.3 µs plain at T = 0, 57.5 /
64.9 µs with 16 / 32 MB over 132 programs; at T = 20 75.9 plain against 74.4 at best), bf16 likewise. The engine's
version (a side stream in the decode graph) lost as well: batch-1 AWQ 464.2 -> 388.3 tok/s.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
HIDDEN = 3584
COLD_BYTES = 256 << 20  # weight copies cycled so that every call reads HBM (the H200's L2 is 50 MB)


@triton.jit
def _prefetch_kernel(words_ptr, n_words, sink_ptr, BLOCK: tl.constexpr):
    """Read words [0, n_words) of an int32 view asking L2 to keep them (evict_last; not
    with .cg, which ptxas refuses to combine with it);
    one xor a program is stored so that the loads are not removed."""
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(pid * BLOCK, n_words, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc ^= tl.load(words_ptr + offs, mask=offs < n_words, other=0, eviction_policy="evict_last")
    tl.store(sink_ptr + pid, tl.xor_sum(acc, 0))


def prefetch(tensors_and_bytes, sink: torch.Tensor, programs: int) -> None:
    """Pull the first `nbytes` of each tensor into L2 (one launch a tensor)."""
    for tensor, nbytes in tensors_and_bytes:
        words = tensor.view(-1).view(torch.int32)
        n = min(words.numel(), nbytes // 4)
        if n:
            _prefetch_kernel[(programs,)](words, n, sink, BLOCK=4096, num_warps=8)


def _awq_weights(n: int, k: int, dev):
    from engine.kernels import w4_mma
    from engine.quant.int4_pack import pack_awq

    w = torch.randn(n, k, device=dev) * 0.02
    qweight, qzeros, scales = pack_awq(w, w4_mma.GROUP)
    return w4_mma.repack(qweight, qzeros, scales.to(torch.bfloat16), w4_mma.GROUP)


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def part_a(dev, programs: int) -> list[dict]:
    from engine.kernels.timing import graph_time_ms
    from engine.kernels.w4_mma import w4_mma_linear

    rows = []
    sink = torch.zeros(max(programs, 1024), dtype=torch.int32, device=dev)
    for name, (n, k) in SHAPES.items():
        qw, sz = _awq_weights(n, k, dev)
        size = _nbytes(qw, sz)
        copies = [(qw.clone(), sz.clone()) for _ in range(max(2, COLD_BYTES // size))]
        x = torch.randn(1, k, device=dev).to(torch.bfloat16)
        row = {"shape": name, "mb": round(size / 2**20, 2)}
        row["cold_us"] = graph_time_ms([lambda c=c: w4_mma_linear(x, c[0], c[1], torch.bfloat16) for c in copies],
                                       4 * len(copies)) * 1000
        row["hot_us"] = graph_time_ms([lambda: w4_mma_linear(x, qw, sz, torch.bfloat16)], 64) * 1000
        row["prefetch_alone_us"] = graph_time_ms(
            [lambda c=c: prefetch([(c[0], _nbytes(c[0])), (c[1], _nbytes(c[1]))], sink, programs)
             for c in copies], 4 * len(copies)) * 1000
        row["prefetch_tb_s"] = size / (row["prefetch_alone_us"] * 1e-6) / 1e12
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        del copies
        torch.cuda.empty_cache()
    return rows


class Layer:
    """One layer's weights in a format: awq (repacked for the CUDA kernels) or bf16, and how to run a linear."""

    def __init__(self, fmt: str, dev):
        self.fmt = fmt
        self.w = {}
        for name, (n, k) in SHAPES.items():
            if fmt == "awq":
                self.w[name] = _awq_weights(n, k, dev)
            else:
                self.w[name] = ((torch.randn(n, k, device=dev) * 0.02).to(torch.bfloat16),)

    def nbytes(self) -> int:
        return sum(_nbytes(*ts) for ts in self.w.values())

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        from engine.kernels.w4_mma import w4_mma_linear

        if self.fmt == "awq":
            qw, sz = self.w[name]
            return w4_mma_linear(x, qw, sz, torch.bfloat16)
        return F.linear(x, self.w[name][0])

    def head(self, name: str, mb: float) -> list[tuple[torch.Tensor, int]]:
        """The tensors holding the first `mb` megabytes of a linear's output columns (whole stripes in the AWQ
        layout, whole rows in bf16), each with the bytes to read from its start."""
        tensors = self.w[name]
        share = min(1.0, mb * 2**20 / _nbytes(*tensors))
        return [(t, int(_nbytes(t) * share)) for t in tensors]


def part_b(dev, idle_us: list[float], prefetch_mb: list[float], programs_list: list[int]) -> list[dict]:
    from engine.kernels.activation import silu_and_mul
    from engine.kernels.norm import rms_norm
    from engine.kernels.timing import graph_time_ms

    props = torch.cuda.get_device_properties(dev)
    clock_hz = props.clock_rate * 1e3 if hasattr(props, "clock_rate") else 1.98e9  # torch.cuda._sleep counts cycles
    sink = torch.zeros(4096, dtype=torch.int32, device=dev)
    x = torch.randn(1, HIDDEN, device=dev).to(torch.bfloat16)
    attn = torch.randn(1, HIDDEN, device=dev).to(torch.bfloat16)
    norm_w = torch.rand(HIDDEN, device=dev).to(torch.bfloat16)
    rows = []
    for fmt in ("awq", "bf16"):
        first = Layer(fmt, dev)
        layers = [first] + [Layer(fmt, dev) for _ in range(max(3, COLD_BYTES // first.nbytes()))]
        side = torch.cuda.Stream(device=dev)

        def chain(layer: Layer, cycles: int, mb: float, programs: int):
            h = rms_norm(x, norm_w, 1e-6)
            layer.linear("qkv", h)
            if mb:
                fork = torch.cuda.Event()
                fork.record()
                side.wait_event(fork)
                with torch.cuda.stream(side):
                    prefetch(layer.head("o", 1e9) + layer.head("gate_up", mb), sink, programs)
            if cycles:
                torch.cuda._sleep(cycles)
            o = layer.linear("o", attn)
            h2 = rms_norm(o, norm_w, 1e-6)
            act = silu_and_mul(layer.linear("gate_up", h2))
            layer.linear("down", act)
            if mb:
                join = torch.cuda.Event()
                join.record(side)
                torch.cuda.current_stream().wait_event(join)

        for idle in idle_us:
            cycles = int(idle * 1e-6 * clock_hz)
            for mb in prefetch_mb:
                for programs in (programs_list if mb else programs_list[:1]):
                    us = graph_time_ms([lambda layer=layer: chain(layer, cycles, mb, programs) for layer in layers],
                                       4 * len(layers)) * 1000
                    row = {"format": fmt, "idle_us": idle, "prefetch_mb": mb, "programs": programs if mb else 0,
                           "layer_us": us, "layer_mb": round(first.nbytes() / 2**20, 1)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        del layers, first
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-us", type=float, nargs="+", default=[0, 10, 20])
    parser.add_argument("--prefetch-mb", type=float, nargs="+", default=[0, 16, 32])
    parser.add_argument("--programs", type=int, nargs="+", default=[32, 132])
    parser.add_argument("--skip-a", action="store_true")
    args = parser.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(dev)
    out = {"device": props.name, "l2_mb": getattr(props, "L2_cache_size", 0) / 2**20,
           "part_a": [] if args.skip_a else part_a(dev, args.programs[-1]),
           "part_b": part_b(dev, args.idle_us, args.prefetch_mb, args.programs)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
