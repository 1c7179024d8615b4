"""Lab 5: the CUDA C++ W4A16 tensor-core kernel (engine/kernels/cuda/w4_mma.cu, layout and launch choices in
engine/kernels/w4_mma.py) against the shipped Triton GEMV / GEMM and bf16 cuBLAS, at Qwen2.5-7B's shapes:
the engine's own choice of variant and split, then every variant the build carries over the splits that
divide K's groups. Every row is checked against the AWQ reference before it is timed. The lab's first
version (commit d09ccab: extra register caps, 64 rows) produced lab5 / lab5b / lab5c in
reports/examples/h200/kernel-lab-w4mma/.

Usage: python3 ci/kernel_lab/w4_mma.py OUT.json [M ...]
"""
from __future__ import annotations

from pathlib import Path
import sys
import time

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from engine.kernels import w4_mma as wm  # noqa: E402

SHAPES = [("qkv", 4608, 3584), ("o", 3584, 3584), ("gate_up", 37888, 3584), ("down", 3584, 18944)]
G = wm.GROUP
# (warps, min blocks an SM, pipelined): the variants the engine's build carries
VARIANTS = ((8, 2, False), (8, 1, True), (4, 1, True))
VARIANTS_MANY_ROWS = ((4, 1, False), (8, 1, False))  # 17-32 rows: the dequantize-in-16-bit step


def w4_mma_linear(x, qw, sz, config, part):
    """One launch of the engine's kernel with the given (warps, min blocks, pipelined, splits)."""
    out = torch.empty(x.shape[0], qw.shape[0] * wm.STRIPE, dtype=x.dtype, device=x.device)
    wm.launch(x, qw, sz, None, out, True, config=config, part=part)
    return out


def repack(qweight, qzeros, scales, group_size):
    return wm.repack(qweight, qzeros, scales.to(torch.bfloat16), group_size)


def main(out: str, ms: list[int]) -> None:
    import torch.nn.functional as F

    import gemm_lab as gl
    from engine.kernels.quant_gemm import w4a16_linear, w4a16_linear_ref

    t0 = time.time()
    wm.extension()
    print(f"built w4_mma in {time.time() - t0:.1f} s", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def record(shape, m, name, fns, nbytes, y=None, ref=None):
        gl.record(out, shape, m, name, None, fns, ref=ref, y=y, nbytes=nbytes)  # gemm_lab's rows and JSON

    for shape, n, k in SHAPES:
        copies, nbytes = gl.awq_copies(n, k, gen)
        packed = [repack(qw, qz, s, G) for qw, qz, s in copies]
        pbytes = sum(t.numel() * t.element_size() for t in packed[0])
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen)
                 for _ in range(max(2, int(256e6 // (n * k * 2))))]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
            qw0, qz0, s0 = copies[0]
            ref = w4a16_linear_ref(x, qw0, qz0, s0, G).float()
            record(shape, m, "bf16 F.linear", [lambda w=w: F.linear(x, w) for w in dense], n * k * 2)
            record(shape, m, "shipped w4a16_linear", [lambda c=c: w4a16_linear(x, *c, G) for c in copies], nbytes,
                   y=lambda: w4a16_linear(x, *copies[0], G), ref=ref)
            groups = k // G
            warps_e, minb_e, pipe_e, splits_e = wm.launch_config(m, n, k, sms)
            record(shape, m, f"w4_mma engine's choice w{warps_e} b{minb_e} {'pipe' if pipe_e else 'flat'} s{splits_e}",
                   [lambda p=p: wm.w4_mma_linear(x, *p, torch.bfloat16) for p in packed], pbytes,
                   y=lambda: wm.w4_mma_linear(x, *packed[0], torch.bfloat16), ref=ref)
            for warps, min_blocks, pipe in (VARIANTS if m <= 16 else VARIANTS_MANY_ROWS):
                for splits in sorted({d for d in range(1, groups + 1) if groups % d == 0}):
                    blocks = n // wm.STRIPE * splits
                    if blocks < 66 or blocks > 132 * 40 or groups // splits < 2:
                        continue
                    part = torch.empty(splits * m * n, dtype=torch.float32, device="cuda")
                    cfg = (warps, min_blocks, pipe, splits)
                    record(shape, m, f"w4_mma w{warps} b{min_blocks} {'pipe' if pipe else 'flat'} s{splits}",
                           [lambda p=p, cfg=cfg, part=part: w4_mma_linear(x, *p, cfg, part) for p in packed],
                           pbytes, y=lambda cfg=cfg, part=part: w4_mma_linear(x, *packed[0], cfg, part), ref=ref)
        del copies, packed, dense
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1], [int(a) for a in sys.argv[2:]] or [1, 2, 4, 8, 16])
