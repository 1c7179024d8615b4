"""Run one lab or shipped quantized kernel a few times eagerly (no CUDA graph), for Nsight Compute:
  ncu --kernel-name regex:NAME --launch-skip 3 --launch-count 1 --section ... python3 ci/kernel_lab/ncu_probe.py
      KIND SHAPE M [config ...]
KIND: w4-fold, w4-shipped, w8-shipped, bf16-triton, w4-wgmma, w4-mma. config: TileConfig fields (w4-fold); rows a
block, stripes a warpgroup, warpgroups a block side by side, splits, warpgroups on alternate groups (w4-wgmma);
warps, min blocks an SM, pipelined (0 / 1), splits (w4-mma, the few-row CUDA kernel; none: launch_config's)."""
from pathlib import Path
import sys

import torch

sys.path.insert(0, str(Path(__file__).parent))
import gemm_lab as gl  # noqa: E402
import gemm_lab2 as gl2  # noqa: E402
from engine.kernels import quant_gemm as qg  # noqa: E402
from engine.kernels.quant_gemm import TileConfig  # noqa: E402

kind, shape, m = sys.argv[1], sys.argv[2], int(sys.argv[3])
n, k = {s: (n, k) for s, n, k, _ in gl.SHAPES}[shape]
gen = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
G = gl.G
w4 = gl.awq_weights(n, k, gen)
if kind in ("w4-wgmma", "w4-mma"):
    from engine.kernels import w4_mma
    qw, sz = w4_mma.repack(w4[0], w4[1], w4[2].to(torch.bfloat16), G)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
for _ in range(6):
    if kind == "w4-fold":
        cfg = TileConfig(*[int(v) for v in sys.argv[4:10]], True)
        gl2.w4_xca(x, w4, None, cfg, True, False, False)
    elif kind == "w4-shipped":
        qg.w4a16_linear(x, *w4, G)
    elif kind == "w8-shipped":
        q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda", generator=gen)
        qg.w8a16_linear(x, q, torch.rand(n, device="cuda") * 0.01)
    elif kind == "w4-wgmma":
        w4_mma.launch_wgmma(x, qw, sz, None, out, True, tuple(int(v) for v in sys.argv[4:9]))
    elif kind == "w4-mma":
        cfg = [int(v) for v in sys.argv[4:8]]
        w4_mma.launch(x, qw, sz, None, out, True, (cfg[0], cfg[1], bool(cfg[2]), cfg[3]) if cfg else None)
    elif kind == "bf16-triton":
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        gl2.triton_bf16(x, w, None, *[int(v) for v in sys.argv[4:9]])
torch.cuda.synchronize()
print("ok", kind, shape, m)
