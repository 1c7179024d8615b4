"""Lab 3c: the batch-1 int4 GEMV extended to M = 2..4 rows (gemm_kernels.w4_gemv_rows) against the shipped
path for those M (the tensor-core kernel, tiles file) and bf16 F.linear, Qwen2.5-7B's four shapes.
Usage: python3 ci/kernel_lab/gemv_rows_lab.py OUT.json"""
from pathlib import Path
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).parent))
import gemm_kernels as gk  # noqa: E402
import gemm_lab as gl  # noqa: E402
from engine.kernels import quant_gemm as qg  # noqa: E402
from engine.kernels.quant_gemm import TileConfig  # noqa: E402


def rows_gemv(x, ws, bias, cfg):
    qw, qz, s = ws
    m, k = x.shape
    n = s.shape[1]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    steps = triton.cdiv(k, cfg.num_warps * cfg.block_k)
    return qg._launch(gk.w4_gemv_rows, (qw, qz, s), (m, n, k, gl.G, x.stride(0)), x, bias, out, cfg, steps,
                      SLABS=cfg.num_warps, ROWS=max(2, triton.next_power_of_2(m)))


def main(out):
    t_start = time.monotonic()
    gen = torch.Generator(device="cuda").manual_seed(0)
    G = gl.G
    for shape, n, k, has_bias in gl.SHAPES:
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=gen) if has_bias else None
        wb = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen)
              for _ in range(max(2, int(256e6 // (2 * n * k))))]
        xs = {m: torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen) for m in (1, 2, 3, 4)}
        for m, x in xs.items():
            gl.record(out, shape, m, "bf16", None, [lambda w=w, x=x: F.linear(x, w, bias) for w in wb], nbytes=2 * n * k)
        del wb
        torch.cuda.empty_cache()
        w4, nb4 = gl.awq_copies(n, k, gen)
        for m, x in xs.items():
            ref = qg.w4a16_linear_ref(x.float(), *w4[0], G, bias).float()
            gl.record(out, shape, m, "w4-shipped", None,
                      [lambda ws=ws, x=x: qg.w4a16_linear(x, *ws, G, bias) for ws in w4], ref,
                      lambda x=x: qg.w4a16_linear(x, *w4[0], G, bias), nb4)
            if m == 1:
                continue
            for bn in (256, 512, 1024):
                if n % bn:
                    continue
                for bk in (16, 32):
                    for warps in (4, 8):
                        steps = -(-k // (warps * bk))
                        for waves in (1, 2):
                            sp = max(1, min(steps, -(-waves * gl.SMS // (n // bn))))
                            cfg = TileConfig(1, bn, bk, sp, warps, 1, True)
                            gl.record(out, shape, m, "w4-rows", cfg,
                                      [lambda ws=ws, c=cfg, x=x: rows_gemv(x, ws, bias, c) for ws in w4], ref,
                                      lambda c=cfg, x=x: rows_gemv(x, w4[0], bias, c), nb4)
        del w4
        torch.cuda.empty_cache()
    print("elapsed", time.monotonic() - t_start, flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/dev/null")
