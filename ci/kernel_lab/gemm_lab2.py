"""Lab 3b: why the W4A16 tensor-core kernel trails bf16 cuBLAS at M = 64. Controls in one run per shape:
bf16 cuBLAS (the peer), Triton's own bf16 GEMM (engine/kernels/matmul.py's kernel) at the int4 kernel's
tile sizes and wider, and gemm_kernels.py's FOLD variant with x through L1 (XCA) and without.
Usage: python3 ci/kernel_lab/gemm_lab2.py OUT.json [M]"""
from pathlib import Path
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).parent))
import gemm_lab as gl  # noqa: E402
from engine.kernels import matmul as mm  # noqa: E402
from engine.kernels import quant_gemm as qg  # noqa: E402
from engine.kernels.quant_gemm import TileConfig  # noqa: E402


def triton_bf16(x, w, bias, bm, bn, bk, warps, stages):
    m, k = x.shape
    n = w.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    mm._matmul_kernel[grid](x, w, bias if bias is not None else w, out, m, n, k, x.stride(0), w.stride(0),
                            out.stride(0), HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                            UPCAST=False, IEEE=False, num_warps=warps, num_stages=stages)
    return out


def w4_xca(x, ws, bias, cfg, fold, swap, xca):
    qw, qz, s = ws
    m, k = x.shape
    out = torch.empty(m, s.shape[1], dtype=x.dtype, device=x.device)
    return qg._launch(gl.gk.w4_gemm_lab, (qw, qz, s), (m, s.shape[1], k), x, bias, out, cfg, k // cfg.block_k,
                      GROUP=gl.G, EMULATE_BF16=False, ASM=qg._inline_asm(x), FOLD=fold, SWAP=swap, INC=True,
                      CLAMP=True, XCA=xca)


def main(out, m):
    t_start = time.monotonic()
    gen = torch.Generator(device="cuda").manual_seed(0)
    G = gl.G
    for shape, n, k, has_bias in gl.SHAPES:
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=gen) if has_bias else None
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        wb = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen)
              for _ in range(max(2, int(256e6 // (2 * n * k))))]
        ref = F.linear(x.float(), wb[0].float(), None if bias is None else bias.float())
        gl.record(out, shape, m, "bf16", None, [lambda w=w: F.linear(x, w, bias) for w in wb], nbytes=2 * n * k)
        for bm, bn, bk, warps, stages in ((64, 64, 128, 4, 3), (64, 64, 64, 4, 4), (64, 128, 64, 4, 3),
                                          (64, 128, 128, 8, 3), (64, 256, 64, 8, 3), (64, 256, 64, 4, 3)):
            cfg = (bm, bn, bk, 1, warps, stages)
            gl.record(out, shape, m, "tr-bf16", cfg,
                      [lambda w=w, c=cfg: triton_bf16(x, w, bias, bm, bn, bk, warps, stages) for w in wb],
                      ref, lambda: triton_bf16(x, wb[0], bias, bm, bn, bk, warps, stages), 2 * n * k)
        del wb
        torch.cuda.empty_cache()
        w4, nb4 = gl.awq_copies(n, k, gen)
        ref = qg.w4a16_linear_ref(x.float(), *w4[0], G, bias).float()
        gl.record(out, shape, m, "w4-shipped", None, [lambda ws=ws: qg.w4a16_linear(x, *ws, G, bias) for ws in w4],
                  ref, lambda: qg.w4a16_linear(x, *w4[0], G, bias), nb4)
        for name, fold, swap, xca in (("w4-fold", True, False, False), ("w4-fold-xca", True, False, True),
                                      ("w4-fswap-xca", True, True, True)):
            for bn, warps, stages in ((64, 4, 3), (64, 4, 4), (128, 8, 3)):
                for sp in gl.splits(m, n, 64, bn, k // 128, (1, 2, 4, 8)):
                    cfg = TileConfig(64, bn, 128, sp, warps, stages, True)
                    gl.record(out, shape, m, name, cfg,
                              [lambda ws=ws, c=cfg: w4_xca(x, ws, bias, c, fold, swap, xca) for ws in w4],
                              ref, lambda c=cfg: w4_xca(x, w4[0], bias, c, fold, swap, xca), nb4)
        del w4
        torch.cuda.empty_cache()
    print("elapsed", time.monotonic() - t_start, flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/dev/null", int(sys.argv[2]) if len(sys.argv) > 2 else 64)
