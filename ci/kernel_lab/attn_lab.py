"""Lab 4: the int8-KV decode attention with fp16 byte planes (now the engine's _decode_attention_int8_kernel)
and attn_kernels.py's PRMT variant against the int8 kernel casting each code and the bf16 one
(engine/kernels/decode_attention.py), Qwen2.5-7B's heads (28 q / 4 kv, dim 128), block 64.
Shapes: batch 256 x ~800 tokens (the throughput workload's decode: 100-1024 prompt + up to 512 out),
batch 64 x 1k, batch 32 x 4k, batch 1 x 32k. Every lab row is checked against the int8 kernel that casts each code
(the engine's int8 path before the byte planes; its rows were named `int8-shipped` in lab4.json).
Usage: python3 ci/kernel_lab/attn_lab.py OUT.json"""
from pathlib import Path
import sys
import time

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
import attn_kernels as ak  # noqa: E402
from engine.kernels import decode_attention as da  # noqa: E402


def lab_decode(q, k_cache, v_cache, tables, lens, scale, k_scale, v_scale, variant="planes", asm=None, block_n=128,
               num_warps=4, num_stages=2, num_splits=None):
    """paged_decode_attention's launch of one int8 kernel: 'planes' (the engine's byte-plane kernel, the one
    it runs for head_dim >= 64), 'cast' (the engine's general kernel, each code cast: what ran before), or
    'prmt' (attn_kernels.py's variant)."""
    planes = variant == "planes"
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if num_splits is None:
        num_splits = da.decode_num_splits(batch, num_kv_heads, tables.shape[1], block_size, head_dim, q.device)
    out = torch.empty_like(q)
    need = da.decode_scratch_numel(batch, num_heads, head_dim, num_splits)
    scratch = torch.empty(max(need, 1), dtype=torch.float32, device=q.device)
    part_out = scratch[:batch * num_heads * num_splits * head_dim] if need else out
    part_lse = scratch[batch * num_heads * num_splits * head_dim:need] if need else out
    kc, vc = (k_cache.view(torch.int32), v_cache.view(torch.int32)) if planes else (k_cache, v_cache)
    asm = (q.device.type == "cuda" and q.dtype != torch.float32) if asm is None else asm
    # planes: the engine's byte-plane kernel (lab 4 measured its lab copy, identical but for fp32 q)
    kernel = {"planes": da._decode_attention_int8_kernel, "cast": da._decode_attention_kernel,
              "prmt": ak.decode_attention_int8_lab}[variant]
    extra = ({"ASM": asm, "EARLY_LAUNCH": False} if variant == "planes" else
             {"KV_BITS": 8, "EARLY_LAUNCH": False} if variant == "cast" else {"KV_BITS": 8, "ASM": asm})
    kernel[(batch, num_kv_heads, num_splits)](
        q, kc, vc, tables, lens, out, part_out, part_lse, k_scale, v_scale, scale * da._LOG2E, num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), *kc.stride()[:3], *vc.stride()[:3], tables.stride(0),
        *k_scale.stride()[:3], NUM_HEADS=num_heads, GROUP=num_heads // num_kv_heads,
        BLOCK_G=max(16, triton.next_power_of_2(num_heads // num_kv_heads)), HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_N=block_n, DIRECT=num_splits == 1, UPCAST=q.device.type != "cuda" and q.dtype != torch.float32,
        IEEE=q.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages, **extra)
    if num_splits > 1:
        da._decode_reduce_kernel[(batch, num_heads)](
            part_out, part_lse, out, lens, num_splits, out.stride(0), out.stride(1), NUM_HEADS=num_heads,
            HEAD_DIM=head_dim, BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_N=block_n, EARLY_LAUNCH=False,
            num_warps=4 if head_dim >= 128 else 2)
    return out


def main(out_path):
    import json

    from engine.kernels.timing import graph_time_ms

    t0 = time.monotonic()
    gen = torch.Generator(device="cuda").manual_seed(0)
    heads, kv_heads, dim, bs = 28, 4, 128, 64
    rows = []
    for batch, lo, hi in ((256, 100, 1536), (64, 1024, 1024), (32, 4096, 4096), (1, 32768, 32768)):
        lens = torch.randint(lo, hi + 1, (batch,), device="cuda", generator=gen, dtype=torch.int32)
        max_blocks = (hi + bs - 1) // bs
        nblocks = batch * max_blocks + 1
        tables = torch.randperm(nblocks - 1, device="cuda", generator=gen)[:batch * max_blocks].view(batch, max_blocks)
        tables = tables.to(torch.int32).contiguous()
        q = torch.randn(batch, heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        kb = torch.randn(nblocks, bs, kv_heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        vb = torch.randn(nblocks, bs, kv_heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        k8 = torch.randint(0, 256, (nblocks, bs, kv_heads, dim), device="cuda", dtype=torch.uint8, generator=gen)
        v8 = torch.randint(0, 256, (nblocks, bs, kv_heads, dim), device="cuda", dtype=torch.uint8, generator=gen)
        ks = torch.stack((torch.rand(nblocks, bs, kv_heads, device="cuda", generator=gen) * 0.02 + 0.01,
                          -torch.rand(nblocks, bs, kv_heads, device="cuda", generator=gen) * 2), -1).contiguous()
        vs = torch.stack((torch.rand(nblocks, bs, kv_heads, device="cuda", generator=gen) * 0.02 + 0.01,
                          -torch.rand(nblocks, bs, kv_heads, device="cuda", generator=gen) * 2), -1).contiguous()
        scale = dim ** -0.5
        tokens = int(lens.sum())
        ref = lab_decode(q, k8, v8, tables, lens, scale, ks, vs, "cast").float()
        cases = [("bf16", lambda: da.paged_decode_attention(q, kb, vb, tables, lens, scale), 2 * 2 * kv_heads * dim),
                 ("int8-cast", lambda: lab_decode(q, k8, v8, tables, lens, scale, ks, vs, "cast"),
                  2 * kv_heads * (dim + 8))]
        for bn, warps, stages in ((128, 4, 2), (64, 4, 2), (128, 4, 3), (128, 8, 2)):
            cases.append((f"int8-planes bn{bn} w{warps} s{stages}",
                          lambda bn=bn, w=warps, s=stages: lab_decode(q, k8, v8, tables, lens, scale, ks, vs, "planes",
                                                                      block_n=bn, num_warps=w, num_stages=s),
                          2 * kv_heads * (dim + 8)))
        cases.append(("int8-prmt", lambda: lab_decode(q, k8, v8, tables, lens, scale, ks, vs, "prmt"),
                      2 * kv_heads * (dim + 8)))
        for name, fn, bytes_per_token in cases:
            # engine.kernels.bench's row format (opsctl report renders it): shape, kernel, us, gb_s
            row = {"shape": f"decode attention, batch {batch}, {tokens:,} cached tokens", "m": batch, "batch": batch,
                   "tokens": tokens, "kernel": name}
            try:
                if name.startswith("int8-") and name != "int8-cast":
                    y = fn().float()
                    row["rel_err"] = ((y - ref).abs().max() / ref.abs().max()).item()
                us = graph_time_ms([fn], 50) * 1e3
                row.update(us=us, gb_s=tokens * bytes_per_token / us / 1e3)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(row)
            print(row, flush=True)
            json.dump({"device": torch.cuda.get_device_name(), "copy_gb_s": None, "rows": rows}, open(out_path, "w"),
                      indent=1)
        del kb, vb, k8, v8
        torch.cuda.empty_cache()
    print("elapsed", time.monotonic() - t0)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/dev/null")
