"""GPU time per call of a kernel: closures replayed round-robin inside one CUDA graph, CUDA events.

Shared by the kernel microbenchmarks (bench.py, quant_bench.py): a graph removes launch overhead
from the figure, and closures over enough input copies (chosen by the caller) keep every call's
inputs cold in HBM, so GB/s is the kernel's and not the L2's.
"""
from __future__ import annotations

import torch


def graph_time_ms(fns, calls: int, replays: int = 7) -> float:
    """Median milliseconds per call of the closures `fns` (run once first: compiles and warms up)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile and warm up outside the capture
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    rounds = max(1, calls // len(fns))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(rounds):
            for fn in fns:
                fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / (rounds * len(fns)))
    del graph
    return sorted(times)[len(times) // 2]
