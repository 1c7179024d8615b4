"""GPU microbenchmark of the Triton kernels: `python -m engine.kernels.bench [--sweep] [--json PATH]`.

Times each kernel at Qwen2.5-7B shapes (28 q heads, 4 kv heads, head_dim 128, hidden 3584,
intermediate 18944, bf16) and prints achieved GB/s (the bytes each kernel must move at least, over
its time) or TFLOP/s, beside the card's measured copy bandwidth and a peer: the torch path the kernel
replaces (SDPA on a contiguous cache for attention).

Timing is GPU time as the engine sees it: calls are captured in a CUDA graph (no launch gaps; decode
runs graphs) and cycle through enough copies of the inputs (>= 256 MB in all) that each call reads
from HBM rather than L2, as the layers of a model do. Plain `do_bench` would also count the host's
launch overhead for kernels shorter than it (tens of microseconds on the H100 machine's slow CPU).
`--sweep` adds the tuning grids (decode splits and tile configs, prefill tiles). Without a CUDA
device it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTER = 28, 4, 128, 3584, 18944
DTYPE = torch.bfloat16


def _bench(make, bytes_per_call: float, calls: int = 200) -> float:
    """Median milliseconds per call; make(i) builds the i-th copy of the inputs and returns a closure.

    The closures run round-robin inside one CUDA graph; enough copies are made that their inputs
    total >= 256 MB (5x the H100's L2), so every call starts cold.
    """
    from .timing import graph_time_ms

    copies = max(2, min(64, int(-(-256e6 // max(bytes_per_call, 1)))))
    return graph_time_ms([make(i) for i in range(copies)], calls)


def _paged_cache(seq_lens: list[int], block_size: int, seed: int = 0):
    """K/V caches with each request's blocks scattered at random, as a long-running pool leaves them."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    per_req = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(per_req)
    shape = (num_blocks, block_size, KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, device="cuda", dtype=DTYPE, generator=gen)
    v_cache = torch.randn(shape, device="cuda", dtype=DTYPE, generator=gen)
    order = torch.randperm(num_blocks, device="cuda", generator=gen).to(torch.int32)
    tables = torch.zeros(len(seq_lens), max(per_req), dtype=torch.int32, device="cuda")
    used = 0
    for i, n in enumerate(per_req):
        tables[i, :n] = order[used:used + n]
        used += n
    return k_cache, v_cache, tables, torch.tensor(seq_lens, dtype=torch.int32, device="cuda")


class Report:
    def __init__(self, copy_gbs: float):
        self.copy_gbs = copy_gbs
        self.rows: list[dict] = []

    def add(self, kernel: str, shape: str, ms: float, *, gbytes: float | None = None, tflops: float | None = None,
            peer: str | None = None, peer_ms: float | None = None) -> None:
        row = {"kernel": kernel, "shape": shape, "ms": ms}
        line = f"{kernel:<22} {shape:<40} {ms * 1e3:9.1f} us"
        if gbytes is not None:
            row["gb_s"] = gbytes / ms * 1e3
            line += f"  {row['gb_s']:7.0f} GB/s ({row['gb_s'] / self.copy_gbs:4.0%} of copy)"
        if tflops is not None:
            row["tflop_s"] = tflops / ms * 1e3
            line += f"  {row['tflop_s']:6.1f} TFLOP/s"
        if peer_ms is not None:
            row["peer"], row["peer_ms"] = peer, peer_ms
            line += f"  | {peer} {peer_ms * 1e3:.1f} us ({peer_ms / ms:.2f}x)"
        self.rows.append(row)
        print(line, flush=True)


def bench_copy() -> float:
    """Device-to-device copy bandwidth (bytes read + written), the ceiling for the memory-bound kernels."""
    import triton.testing

    # One long kernel: do_bench's launch overhead is negligible here, and this is how the machine's
    # reference figure (3.0 TB/s on the H100) was taken.
    src = torch.empty(1 << 29, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 2 / ms / 1e6


def bench_decode(report: Report, sweep: bool) -> None:
    import torch.nn.functional as F

    from . import decode_attention as da

    cases = [(1, 4096, 16), (1, 32768, 16), (1, 32768, 64), (8, 4096, 16), (8, 32768, 16), (32, 4096, 16),
             (64, 1024, 16), (256, 1024, 16)]
    for batch, ctx, block_size in cases:
        max_scratch = da.decode_scratch_numel(batch, HEADS, HEAD_DIM, 128)
        nbytes = 2 * batch * ctx * KV_HEADS * HEAD_DIM * 2
        auto = da.decode_num_splits(batch, KV_HEADS, -(-ctx // block_size), block_size, HEAD_DIM, "cuda")

        def make(i, splits=None, config=None):
            k_cache, v_cache, tables, lens = _paged_cache([ctx] * batch, block_size, seed=i)
            q = torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
            out = torch.empty_like(q)
            scratch = torch.empty(max_scratch, device="cuda")
            return lambda: da.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.088, num_splits=splits,
                                                     out=out, scratch=scratch)

        def make_peer(i):
            # SDPA over the same amount of K/V laid out contiguously ([B, Hkv, L, D], no paging).
            k = torch.randn(batch, KV_HEADS, ctx, HEAD_DIM, device="cuda", dtype=DTYPE)
            v = torch.randn_like(k)
            q = torch.randn(batch, HEADS, 1, HEAD_DIM, device="cuda", dtype=DTYPE)
            return lambda: F.scaled_dot_product_attention(q, k, v, scale=0.088, enable_gqa=True)

        shape = f"B={batch} ctx={ctx} bs={block_size} splits={auto}"
        report.add("decode_attention", shape, _bench(make, nbytes), gbytes=nbytes / 1e9, peer="sdpa",
                   peer_ms=_bench(make_peer, nbytes))
        if sweep:
            for splits in (1, 4, 16, 32, 64, 128):
                report.add("  decode splits", f"B={batch} ctx={ctx} bs={block_size} splits={splits}",
                           _bench(lambda i, s=splits: make(i, s), nbytes), gbytes=nbytes / 1e9)
    if sweep:
        default = da._config
        for batch, ctx in ((1, 32768), (32, 4096)):
            nbytes = 2 * batch * ctx * KV_HEADS * HEAD_DIM * 2
            caches = [_paged_cache([ctx] * batch, 16, seed=i) for i in range(max(2, int(256e6 // nbytes) + 1))]
            q = torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
            out = torch.empty_like(q)
            scratch = torch.empty(da.decode_scratch_numel(batch, HEADS, HEAD_DIM, 128), device="cuda")
            for block_n in (32, 64, 128):
                for warps in (2, 4):
                    for stages in (2, 3):
                        da._config = lambda hd, c=(block_n, warps, stages): c
                        for splits in ((32, 64, 128) if batch == 1 else (2, 4, 8)):
                            make = lambda i, s=splits: (lambda c=caches[i % len(caches)]: da.paged_decode_attention(
                                q, *c, 0.088, num_splits=s, out=out, scratch=scratch))
                            try:
                                ms = _bench(make, nbytes, calls=100)
                            except Exception as exc:  # an infeasible config (shared memory) is skipped, not fatal
                                print(f"  decode config N={block_n} w={warps} st={stages}: {type(exc).__name__}")
                                break
                            report.add("  decode config", f"B={batch} ctx={ctx} N={block_n} w={warps} st={stages} "
                                       f"sp={splits}", ms, gbytes=nbytes / 1e9)
            da._config = default
            del caches


def _prefill_flops(query_lens: list[int], contexts: list[int]) -> float:
    """4 * H * D per (query, visible key) pair: QK^T and PV, causal (each query sees context + i + 1 keys)."""
    pairs = sum(q * c + q * (q + 1) // 2 for q, c in zip(query_lens, contexts))
    return 4 * HEADS * HEAD_DIM * pairs / 1e12


def bench_prefill(report: Report, sweep: bool) -> None:
    import torch.nn.functional as F

    from . import prefill_attention as pa

    cases = [([1024], [0]), ([4096], [0]), ([1024], [3072]), ([512] * 8, [0] * 8),
             ([2048] + [1] * 64, [0] + [2048] * 64)]
    configs = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2), (64, 128, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2),
               (128, 128, 8, 2), (128, 128, 8, 3)]
    for query_lens, contexts in cases:
        seq_lens = [q + c for q, c in zip(query_lens, contexts)]
        starts = [0]
        for n in query_lens:
            starts.append(starts[-1] + n)
        nbytes = 2 * starts[-1] * HEADS * HEAD_DIM * 2 + 2 * sum(seq_lens) * KV_HEADS * HEAD_DIM * 2

        def make(i):
            k_cache, v_cache, tables, lens = _paged_cache(seq_lens, 16, seed=i)
            qsl = torch.tensor(starts, dtype=torch.int32, device="cuda")
            q = torch.randn(starts[-1], HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
            out = torch.empty_like(q)
            return lambda: pa.paged_prefill_attention(q, k_cache, v_cache, qsl, lens, tables, 0.088, max(query_lens),
                                                      out=out)

        def make_peer(i):
            q = torch.randn(1, HEADS, query_lens[0], HEAD_DIM, device="cuda", dtype=DTYPE)
            k = torch.randn(1, KV_HEADS, query_lens[0], HEAD_DIM, device="cuda", dtype=DTYPE)
            v = torch.randn_like(k)
            return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        tflops = _prefill_flops(query_lens, contexts)
        peer_ms = _bench(make_peer, nbytes) if len(query_lens) == 1 and contexts[0] == 0 else None
        shape = f"q={query_lens[0]}x{len(query_lens)} ctx={contexts[0]}" + (
            f" +{len(query_lens) - 1} decode rows" if len(set(query_lens)) > 1 else "")
        report.add("prefill_attention", shape, _bench(make, nbytes), tflops=tflops, peer="sdpa" if peer_ms else None,
                   peer_ms=peer_ms)
        if sweep:
            default = pa._config
            for cfg in configs:
                pa._config = lambda hd, g, gpu, c=cfg: c
                try:
                    report.add("  prefill config", f"{shape} M,N,w,st={cfg}", _bench(make, nbytes, calls=50),
                               tflops=tflops)
                except Exception as exc:
                    print(f"  prefill config {cfg}: {type(exc).__name__}")
            pa._config = default


def bench_small_kernels(report: Report) -> None:
    from engine.layers.norm import RMSNorm
    from engine.layers.rotary import RotaryEmbedding

    from .activation import silu_and_mul
    from .kv_write import write_kv
    from .norm import fused_add_rms_norm, rms_norm
    from .reference import silu_and_mul_ref
    from .rotary import apply_rotary

    tokens, size = 4096, 2  # bytes per bf16 element
    kv_bytes = 4 * tokens * KV_HEADS * HEAD_DIM * size  # k, v read; cache rows written

    def make_write(i):
        k = torch.randn(tokens, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        v = torch.randn_like(k)
        k_cache = torch.empty(tokens // 16 + 1, 16, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        v_cache = torch.empty_like(k_cache)
        slots = torch.randperm(k_cache.shape[0] * 16, device="cuda")[:tokens]
        return lambda: write_kv(k, v, k_cache, v_cache, slots)
    report.add("write_kv", f"T={tokens} Hkv={KV_HEADS}", _bench(make_write, kv_bytes), gbytes=kv_bytes / 1e9)

    norm = RMSNorm(HIDDEN).to("cuda", DTYPE)
    row_bytes = tokens * HIDDEN * size

    def make_norm(i, kind):
        x = torch.randn(tokens, HIDDEN, device="cuda", dtype=DTYPE)
        residual = torch.randn_like(x)
        out, res_out = torch.empty_like(x), torch.empty_like(x)
        return {"kernel": lambda: rms_norm(x, norm.weight, 1e-6, out=out),
                "torch": lambda: norm(x),
                "fused": lambda: fused_add_rms_norm(x, residual, norm.weight, 1e-6, out=out, residual_out=res_out),
                "fused_torch": lambda: norm(x, residual)}[kind]
    report.add("rms_norm", f"T={tokens} N={HIDDEN}", _bench(lambda i: make_norm(i, "kernel"), 2 * row_bytes),
               gbytes=2 * row_bytes / 1e9, peer="torch", peer_ms=_bench(lambda i: make_norm(i, "torch"), 2 * row_bytes))
    report.add("fused_add_rms_norm", f"T={tokens} N={HIDDEN}", _bench(lambda i: make_norm(i, "fused"), 4 * row_bytes),
               gbytes=4 * row_bytes / 1e9, peer="torch",
               peer_ms=_bench(lambda i: make_norm(i, "fused_torch"), 4 * row_bytes))

    rope = RotaryEmbedding(HEAD_DIM, 32768, 1.0 / (1e6 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))).to("cuda")
    rope_bytes = 2 * tokens * (HEADS + KV_HEADS) * HEAD_DIM * size

    def make_rope(i, kernel):
        qkv = torch.randn(tokens, HEADS + 2 * KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        q, k = qkv[:, :HEADS], qkv[:, HEADS:HEADS + KV_HEADS]
        positions = torch.randint(0, 32768, (tokens,), device="cuda")
        if kernel:
            return lambda: apply_rotary(q, k, positions, rope.cos, rope.sin)
        return lambda: rope(positions, q, k)
    report.add("apply_rotary", f"T={tokens} H={HEADS}+{KV_HEADS}", _bench(lambda i: make_rope(i, True), rope_bytes),
               gbytes=rope_bytes / 1e9, peer="torch", peer_ms=_bench(lambda i: make_rope(i, False), rope_bytes))

    act_bytes = 3 * tokens * INTER * size

    def make_act(i, kernel):
        gate_up = torch.randn(tokens, 2 * INTER, device="cuda", dtype=DTYPE)
        out = torch.empty(tokens, INTER, device="cuda", dtype=DTYPE)
        return (lambda: silu_and_mul(gate_up, out=out)) if kernel else (lambda: silu_and_mul_ref(gate_up))
    report.add("silu_and_mul", f"T={tokens} I={INTER}", _bench(lambda i: make_act(i, True), act_bytes),
               gbytes=act_bytes / 1e9, peer="torch", peer_ms=_bench(lambda i: make_act(i, False), act_bytes))


# Batch-1 decode's linear layers of Qwen2.5-7B: (name, N, K, bias).
GEMV_SHAPES = [("qkv_proj", HEADS * HEAD_DIM + 2 * KV_HEADS * HEAD_DIM, HIDDEN, True), ("o_proj", HIDDEN, HIDDEN, False),
               ("gate_up_proj", 2 * INTER, HIDDEN, False), ("down_proj", HIDDEN, INTER, False),
               ("lm_head", 152064, HIDDEN, False)]


def bench_gemv(report: Report, sweep: bool) -> None:
    """One-token linear layers: our GEMV against cuBLAS (F.linear on [1, K], and on [K], its gemv path)."""
    import itertools

    import torch.nn.functional as F

    from .gemv import gemv, gemv_config

    for name, n, k, has_bias in GEMV_SHAPES:
        nbytes = (n * k + k + n * (2 if has_bias else 1)) * 2

        def make(i, kind, config=None, n=n, k=k, has_bias=has_bias):
            w = torch.randn(n, k, device="cuda", dtype=DTYPE) * 0.02
            b = torch.randn(n, device="cuda", dtype=DTYPE) if has_bias else None
            x = torch.randn(1, k, device="cuda", dtype=DTYPE)
            out = torch.empty(1, n, device="cuda", dtype=DTYPE)
            if kind == "triton":
                return lambda: gemv(x, w, b, out=out, config=config)
            if kind == "linear_1d":
                return lambda: F.linear(x[0], w, b)
            return lambda: F.linear(x, w, b)

        w = torch.randn(n, k, device="cuda", dtype=DTYPE) * 0.02
        x = torch.randn(1, k, device="cuda", dtype=DTYPE)
        torch.testing.assert_close(gemv(x, w), F.linear(x, w), rtol=2e-2, atol=2e-2)
        del w
        shape = f"N={n} K={k}"
        cublas = _bench(lambda i: make(i, "linear"), nbytes)
        report.add(f"gemv[{name}]", shape, _bench(lambda i: make(i, "triton"), nbytes), gbytes=nbytes / 1e9,
                   peer="cublas", peer_ms=cublas)
        report.add(f"cublas_1d[{name}]", shape, _bench(lambda i: make(i, "linear_1d"), nbytes), gbytes=nbytes / 1e9)
        if not sweep:
            continue
        best = None
        for config in itertools.product((4, 8, 16, 32), (256, 512, 1024), (4, 8), (2, 3, 4)):
            try:
                ms = _bench(lambda i, c=config: make(i, "triton", c), nbytes, calls=100)
            except Exception as e:  # noqa: BLE001 - a config the compiler refuses (registers, shared memory)
                print(f"  gemv {name} {config}: {type(e).__name__}", flush=True)
                continue
            if best is None or ms < best[0]:
                best = (ms, config)
        report.add(f"gemv_best[{name}]", f"{shape} {best[1]} (default {gemv_config(n, k)})", best[0],
                   gbytes=nbytes / 1e9, peer="cublas", peer_ms=cublas)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.kernels.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true",
                        help="also run the tuning grids (decode splits/configs, prefill tiles)")
    parser.add_argument("--json", metavar="PATH", help="write the rows, device and versions as JSON")
    parser.add_argument("--only", choices=["decode", "prefill", "small", "gemv"], help="run one group only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("engine.kernels.bench: no CUDA device here; the kernel benchmark runs on a GPU machine. "
              "Nothing measured.")
        return 0
    import triton

    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    print(f"{name}, torch {torch.__version__}, triton {triton.__version__}; Qwen2.5-7B shapes, bf16")
    copy_gbs = bench_copy()
    print(f"copy bandwidth (read + write): {copy_gbs:.0f} GB/s")
    report = Report(copy_gbs)
    if args.only in (None, "decode"):
        bench_decode(report, args.sweep)
    if args.only in (None, "prefill"):
        bench_prefill(report, args.sweep)
    if args.only in (None, "small"):
        bench_small_kernels(report)
    if args.only in (None, "gemv"):
        bench_gemv(report, args.sweep)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "triton": triton.__version__,
                       "copy_gb_s": copy_gbs, "rows": report.rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
