"""Lab 10: the int8 CUDA kernels (engine/kernels/w8_mma.py: few-row up to 32 rows, warpgroup at 33-128) against
bf16 cuBLAS, the shipped Triton W8A16 path and the AWQ warpgroup kernel, on Qwen2.5-7B's four linear shapes; every
int8 warpgroup variant
(warpgroups side by side, splits, warpgroups on alternate groups) checked against the reference, then timed.
Timing: engine/kernels/timing.py (one CUDA graph over >= 256 MB of weight copies, median of 7 replays).

    python3 ci/kernel_lab/w8_wgmma_lab.py OUT.json [M ...]
"""
from pathlib import Path
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab_rows import LabRows  # noqa: E402
from engine.kernels import quant_gemm as qg  # noqa: E402
from engine.kernels import w4_mma, w8_mma  # noqa: E402
from engine.kernels.quant_gemm import _num_sms  # noqa: E402

SHAPES = [("qkv", 4608, 3584, True), ("o", 3584, 3584, False), ("gate_up", 37888, 3584, False),
          ("down", 3584, 18944, False)]


def variants(m: int, n: int, k: int) -> list[tuple[int, int, int]]:
    groups, stripes = k // 128, n // 64
    out = []
    for nwg in (1, 2):
        if stripes % nwg:
            continue
        for kwg in (1, 2):
            if nwg == 2 and kwg == 2:
                continue
            for splits in (1, 2, 4, 8):
                if groups % splits or (kwg == 2 and (groups // splits) % 2):
                    continue
                out.append((nwg, splits, kwg))
    return out


def few_row_variants(m: int, k: int) -> list[tuple[int, int, bool, int]]:
    """(warps, min blocks an SM, pipelined, splits) the few-row int8 kernel is built in, splits dividing the groups."""
    groups = k // 128
    blocks = [(8, 2), (8, 1), (4, 1)] if m <= 16 else [(8, 1), (4, 1)]
    return [(w, b, False, s) for w, b in blocks for s in (1, 2, 4, 7, 8, 14, 16, 28) if groups % s == 0]


def few(x, qw, scales, bias, cfg):
    out = torch.empty(x.shape[0], qw.shape[0] * 64, dtype=x.dtype, device=x.device)
    w8_mma.launch_few(x, qw, scales, bias, out, cfg)
    return out


def main() -> None:
    out_path = sys.argv[1]
    ms = [int(a) for a in sys.argv[2:]] or [64, 128]
    gen = torch.Generator(device="cuda").manual_seed(0)
    sms = _num_sms(torch.device("cuda"))

    lab = LabRows(out_path, tolerance=1e-2)

    t0 = time.monotonic()
    for shape, n, k, has_bias in SHAPES:
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=gen) if has_bias else None
        n16 = max(2, int(256e6 // (n * k * 2)))
        n8 = max(2, int(256e6 // (n * k)))
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02 for _ in range(n16)]
        q8 = [(torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=gen),
               torch.rand(n, device="cuda", generator=gen) * 0.01 + 0.001) for _ in range(n8)]
        packed = [(w8_mma.repack(q), s) for q, s in q8]
        awq = []
        for _ in range(max(2, int(256e6 // (n * k // 2)))):
            qw = torch.randint(-2**31, 2**31 - 1, (k, n // 8), dtype=torch.int32, device="cuda", generator=gen)
            qz = torch.randint(-2**31, 2**31 - 1, (k // 128, n // 8), dtype=torch.int32, device="cuda", generator=gen)
            sc = (torch.rand(k // 128, n, device="cuda", generator=gen) * 0.01 + 0.001).to(torch.bfloat16)
            awq.append(w4_mma.repack(qw, qz, sc, 128))
        for m in ms:
            at = {"shape": shape, "m": m}
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
            lab.record(at, "bf16 cuBLAS F.linear", [lambda w=w: F.linear(x, w, bias) for w in dense], n * k * 2)
            ref = qg.w8a16_linear_ref(x, *q8[0], bias).float()
            lab.record(at, "int8 Triton (shipped)", [lambda q=q: qg.w8a16_linear(x, *q, bias) for q in q8],
                   n * k + 4 * n, lambda: qg.w8a16_linear(x, *q8[0], bias), ref)
            lab.record(at, "awq warpgroup (shipped)",
                   [lambda a=a: w4_mma.w4_mma_linear(x, *a, torch.bfloat16, bias) for a in awq], n * k // 2 * 1.0625)
            default = (0, 0) + w8_mma.wgmma_config_int8(m, n, k, sms)
            name = "int8 few-row kernel (default)" if m <= w8_mma.FEW_ROWS else f"int8 warpgroup default {default[2:]}"
            lab.record(at, name,
                   [lambda p=p: w8_mma.w8_mma_linear(x, *p, bias) for p in packed], n * k + 4 * n,
                   lambda: w8_mma.w8_mma_linear(x, *packed[0], bias), ref)
            for cfg in variants(m, n, k) if m > w8_mma.FEW_ROWS else ():
                lab.record(at, f"int8 warpgroup {cfg}",
                       [lambda p=p: w8_mma.w8_mma_linear(x, *p, bias, cfg) for p in packed], n * k + 4 * n,
                       lambda: w8_mma.w8_mma_linear(x, *packed[0], bias, cfg), ref)
            for cfg in few_row_variants(m, k) if m <= w8_mma.FEW_ROWS else ():
                lab.record(at, f"int8 few-row {cfg}", [lambda p=p: few(x, *p, bias, cfg) for p in packed],
                       n * k + 4 * n, lambda: few(x, *packed[0], bias, cfg), ref)
        del dense, q8, packed, awq
        torch.cuda.empty_cache()
    print(f"lab 10 done in {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
