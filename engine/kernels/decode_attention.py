"""Paged decode attention: one query token per request over the paged KV cache (split-KV flash-decoding).

Decode reads every cached K/V byte once per step and does almost no arithmetic per byte, so the
kernel is bandwidth-bound and the design is about keeping enough loads in flight:
- GQA-aware: one program handles all query heads of one kv head, so each K/V tile is read once per
  kv head, not once per query head (7x less traffic for Qwen2.5-7B's 28/4 heads). The group is
  padded to 16 rows so QK^T and PV run as `tl.dot` on the tensor cores.
- Split-KV: at batch 1 there are only B * Hkv = 4 (request, kv head) pairs, far too few programs to
  fill 132 SMs (one split reads 65 GB/s at 32k context on an H100; 64 splits 2.0 TB/s), so each
  request's context is cut into `num_splits` contiguous ranges of tiles, one program each (grid
  (B, Hkv, num_splits)). Each writes its normalised partial output and
  log-sum-exp to a scratch buffer; `_decode_reduce_kernel` merges the splits.
- The split ranges are derived inside the kernel from the request's own seq_len, so the grid depends
  on tensor shapes only (CUDA-graph safe) and splits past a short request's end are no-ops: they write
  nothing, and the reduce merges only the splits that hold tokens (`_live_splits`, from seq_len too).
- The cache is read in tiles of BLOCK_N tokens gathered through the block table token by token, so
  any block_size (16, 64, ...) works with the same tile width.
- Quantized caches (KV_BITS 8 or 4, a constexpr: the 16-bit path compiles exactly as before) are
  dequantized in registers without materialising K or V: with x = code * scale + min per key row,
  q.k = scale * (q.code) + min * sum(q): the tensor cores see the integer codes (exact in bf16), the
  per-key scales touch a [G, BLOCK_N] tile only, and no rounding of dequantized K to bf16 is added.
  V is dequantized in registers (_quant_pv says why that form).
- 8-bit caches with head_dim >= 64 have their own kernel (_decode_attention_int8_kernel): the codes are
  read as 32-bit words and turned into fp16 two at a time with a PRMT and a LOP3 (kv_write.kv_code_plane)
  instead of a quarter-rate I2F each, the products run over four byte planes, and the MMAs in fp16, so
  the int8 cache reads as fast as the 16-bit one at large batches instead of ~20% slower (_quant_config).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from . import inline_ptx_ok
from .kv_write import check_kv_scales, kv_code_plane, load_kv_codes
from .pdl import enter, launch_options

_LOG2E = 1.0 / math.log(2.0)
# Split heuristic, from `python -m engine.kernels.bench --sweep` on an H100 (Qwen2.5-7B heads, bf16,
# CUDA-graph timing): about 4 programs per SM is where bandwidth tops out. Batch 1 at 32k context:
# 32 splits (128 programs) 43 us, 64 splits 33 us (2.0 TB/s), 128 splits 31.5 us. Batch 8 at 4k:
# 16 splits best (31 us); batch 32 at 4k: 4 splits 99.6 us vs 1 split 152 us; batch 64 at 1k:
# 1 split 53.5 us vs 3 splits 59.7 us (the reduce and partial writes cost more than they return).
_PROGRAMS_PER_SM = 4
_MAX_SPLITS = 64


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """a @ b with fp32 accumulation.

    UPCAST computes in fp32 from low-precision operands: Triton's CPU interpreter multiplies bf16
    operands as raw uint16 bits (triton 3.9), so interpreted runs upcast; products of bf16 values are
    exact in fp32, so the result matches the tensor cores' bf16 x bf16 -> fp32. IEEE keeps fp32
    inputs in full precision instead of tf32, so fp32 runs match the torch reference tightly.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _scale_and_min(rows, ok, MASKED: tl.constexpr):
    """The (scale, min) pair of each quantized row at `rows` (fp32 pairs, kernels/kv_write.py's format)."""
    if MASKED:
        scale, low = tl.load(rows, mask=ok, other=0.0), tl.load(rows + 1, mask=ok, other=0.0)
    else:
        scale, low = tl.load(rows), tl.load(rows + 1)
    return scale, low


@triton.jit
def _split_range(seq_lens_ptr, b, split, num_splits, BLOCK_N: tl.constexpr):
    """[start, end) of this split's tokens of request b: the request's own tiles split evenly; a split
    whose range starts past seq_len runs no iteration."""
    seq_len = tl.load(seq_lens_ptr + b)
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    return start, tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)


@triton.jit
def _live_splits(seq_len, num_splits, BLOCK_N: tl.constexpr):
    """How many of a request's splits hold tokens: those of _split_range's ranges that start before seq_len
    (0 for seq_len 0). Only they write partials, and the reduce reads only theirs."""
    tiles = tl.cdiv(seq_len, BLOCK_N)
    return tl.cdiv(tiles, tl.maximum(tl.cdiv(tiles, num_splits), 1))


@triton.jit
def _tile_slots(table, tile, n, end, BLOCK_SIZE: tl.constexpr):
    """The cache slots of tokens tile + n: (in_range [BLOCK_N], block (int64), offset in the block)."""
    pos = tile + n
    in_range = pos < end
    block = tl.load(table + pos // BLOCK_SIZE, mask=in_range, other=0).to(tl.int64)
    return in_range, block, pos % BLOCK_SIZE


@triton.jit
def _softmax_step(s, in_range, m_i, l_i):
    """One tile of the online softmax over scores s [G, BLOCK_N] (log2 domain): (p, alpha, m_new, l_new).
    Every tile holds at least one in-range key, so m_new is finite and exp2 never sees inf - inf."""
    s = tl.where(in_range[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _store_lse(lse_ptr, m_i, l_i, mask):
    """A split's log2-sum-exp for the reduce; -inf for an empty split, never NaN."""
    tl.store(lse_ptr, tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf")), mask=mask)


@triton.jit
def _quant_scores(q, q_sum, k_rows, ks_rows, key_ok, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                  KV_BITS: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """q [M, D] . K^T for the quantized key rows at k_rows (codes) and ks_rows ((scale, min)): [M, BLOCK_N]."""
    codes = load_kv_codes(k_rows, key_ok, BLOCK_N, HEAD_DIM, KV_BITS, MASKED)
    k_scale, k_min = _scale_and_min(ks_rows, key_ok, MASKED)
    # Codes 0..255 are exact in bf16/fp16. The interpreter cannot cast ints to bf16 (triton 3.9): fp32 there.
    if UPCAST:
        qk = _dot(q, tl.trans(codes.to(tl.float32)), UPCAST, IEEE)
    else:
        qk = _dot(q, tl.trans(codes.to(q.dtype)), UPCAST, IEEE)
    return qk * k_scale[None, :] + q_sum[:, None] * k_min[None, :]


@triton.jit
def _quant_pv(p, v_rows, vs_rows, key_ok, DTYPE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
              KV_BITS: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """p [M, BLOCK_N] (fp32) @ V for the quantized value rows at v_rows / vs_rows: [M, D] fp32.

    V is dequantized to DTYPE in registers. Folding the scales into the weights instead
    (r * ((p * scale / r) @ codes) + p @ min, fp16 weights) measured the same in decode on an H200 and
    slower in prefill (a 1024-token prompt 98.7 us against 76.8), so the plain form stays.
    """
    codes = load_kv_codes(v_rows, key_ok, BLOCK_N, HEAD_DIM, KV_BITS, MASKED)
    v_scale, v_min = _scale_and_min(vs_rows, key_ok, MASKED)
    v = (codes.to(tl.float32) * v_scale[:, None] + v_min[:, None]).to(DTYPE)
    return _dot(p.to(DTYPE), v, UPCAST, IEEE)


@triton.jit
def _decode_attention_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
        k_scale_ptr, v_scale_ptr, scale_log2, num_splits,
        stride_qb, stride_qh, stride_ob, stride_oh,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, stride_bt,
        stride_sb, stride_ss, stride_sh,
        NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DIRECT: tl.constexpr,
        UPCAST: tl.constexpr, IEEE: tl.constexpr, KV_BITS: tl.constexpr, EARLY_LAUNCH: tl.constexpr):
    # num_splits is a runtime argument (one compiled kernel serves every split count); DIRECT marks
    # num_splits == 1, where the program normalises and writes `out` itself and no reduce runs.
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    # seq_lens is the host's (copied before the step), no kernel's output: read before the early-launch wait
    start, end = _split_range(seq_lens_ptr, b, split, num_splits, BLOCK_N)
    enter(EARLY_LAUNCH)  # engine/kernels/pdl.py

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + g
    head_mask = g < GROUP
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=head_mask[:, None], other=0.0)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    table = block_tables_ptr + b.to(tl.int64) * stride_bt
    k_base = k_cache_ptr + kv_head * stride_kch
    v_base = v_cache_ptr + kv_head * stride_vch
    ks_base = k_scale_ptr + kv_head * stride_sh
    vs_base = v_scale_ptr + kv_head * stride_sh
    q_sum = l_i  # unused by the 16-bit path
    if KV_BITS != 0:
        q_sum = tl.sum(q.to(tl.float32), 1)  # the keys' per-row min multiplies sum(q)
    for tile in range(start, end, BLOCK_N):
        in_range, block, offset = _tile_slots(table, tile, n, end, BLOCK_SIZE)
        if KV_BITS == 0:
            k = tl.load(k_base + block[:, None] * stride_kcb + offset[:, None] * stride_kcs + d[None, :],
                        mask=in_range[:, None], other=0.0)
            v = tl.load(v_base + block[:, None] * stride_vcb + offset[:, None] * stride_vcs + d[None, :],
                        mask=in_range[:, None], other=0.0)
            s = _dot(q, tl.trans(k), UPCAST, IEEE) * scale_log2  # [BLOCK_G, BLOCK_N], log2 domain
        else:
            s_rows = block * stride_sb + offset * stride_ss
            s = _quant_scores(q, q_sum, k_base + block * stride_kcb + offset * stride_kcs, ks_base + s_rows,
                              in_range, BLOCK_N, HEAD_DIM, KV_BITS, True, UPCAST, IEEE) * scale_log2
        p, alpha, m_new, l_i = _softmax_step(s, in_range, m_i, l_i)
        if KV_BITS == 0:
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST, IEEE)
        else:
            acc = acc * alpha[:, None] + _quant_pv(p, v_base + block * stride_vcb + offset * stride_vcs,
                                                   vs_base + s_rows, in_range, q.dtype, BLOCK_N, HEAD_DIM,
                                                   KV_BITS, True, UPCAST, IEEE)
        m_i = m_new

    # Empty splits (and seq_len == 0 padding rows of CUDA graphs) give 0 with lse -inf, never NaN.
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if DIRECT:
        tl.store(out_ptr + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=head_mask[:, None])
    else:  # an empty split writes nothing: the reduce reads the live splits only (_live_splits)
        live = head_mask & (g * 0 + start < end)  # [BLOCK_G]
        row = (b.to(tl.int64) * NUM_HEADS + heads) * num_splits + split  # [BLOCK_G]
        tl.store(part_out_ptr + row[:, None] * HEAD_DIM + d[None, :], out, mask=live[:, None])
        _store_lse(part_lse_ptr + row, m_i, l_i, live)


# The int8 kernel's fp16 operands: q is scaled by 2^-6 before its cast (|q| up to ~4e6 fits fp16's 65504)
# and p * v_scale by 2^6 (probabilities times small scales stay clear of fp16's subnormals); both powers
# of two come back out exactly in fp32.
_Q_SHIFT = tl.constexpr(1.0 / 64.0)
_P_SHIFT = tl.constexpr(64.0)


@triton.jit
def _decode_attention_int8_kernel(
        q_ptr, k_words_ptr, v_words_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
        k_scale_ptr, v_scale_ptr, scale_log2, num_splits,
        stride_qb, stride_qh, stride_ob, stride_oh,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, stride_bt,
        stride_sb, stride_ss, stride_sh,
        NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DIRECT: tl.constexpr,
        UPCAST: tl.constexpr, IEEE: tl.constexpr, ASM: tl.constexpr, EARLY_LAUNCH: tl.constexpr):
    # _decode_attention_kernel for an 8-bit cache read as int32 words (k/v_words_ptr: [num_blocks,
    # block_size, Hkv, D / 4] views, strides in words), HEAD_DIM >= 64. Dim 4w + j is byte j of word w, so
    # every product runs over four byte planes of D / 4 dims (kv_code_plane: two codes per PRMT + LOP3
    # on the GPU, where a cast costs a quarter-rate I2F per code), q's dims gathered to match
    # (q_j = q[:, j::4]) and each plane's output stored back at dims 4w + j. The MMAs run in fp16
    # (fp32 for fp32 q): bf16 has too few mantissa bits to hold an 8-bit code under a fixed exponent.
    # Scores: q . code * k_scale + sum(q) * k_min; PV: (p * v_scale) @ code + p @ v_min.
    DW: tl.constexpr = HEAD_DIM // 4
    MMA: tl.constexpr = tl.float32 if IEEE else tl.float16
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    start, end = _split_range(seq_lens_ptr, b, split, num_splits, BLOCK_N)  # before the wait, as above
    enter(EARLY_LAUNCH)  # engine/kernels/pdl.py

    g = tl.arange(0, BLOCK_G)
    wd = tl.arange(0, DW)
    n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + g
    head_mask = g < GROUP
    q_rows = q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + 4 * wd[None, :]
    q0 = tl.load(q_rows, mask=head_mask[:, None], other=0.0).to(tl.float32)
    q1 = tl.load(q_rows + 1, mask=head_mask[:, None], other=0.0).to(tl.float32)
    q2 = tl.load(q_rows + 2, mask=head_mask[:, None], other=0.0).to(tl.float32)
    q3 = tl.load(q_rows + 3, mask=head_mask[:, None], other=0.0).to(tl.float32)
    q_sum = tl.sum(q0 + q1 + q2 + q3, 1)  # the keys' per-row min multiplies sum(q)
    q0 = (q0 * _Q_SHIFT).to(MMA)
    q1 = (q1 * _Q_SHIFT).to(MMA)
    q2 = (q2 * _Q_SHIFT).to(MMA)
    q3 = (q3 * _Q_SHIFT).to(MMA)
    # with ASM the key planes hold 1024 + code: the sum of the q the MMAs see takes the 1024 back out
    q_mma_sum = tl.sum(q0.to(tl.float32) + q1.to(tl.float32) + q2.to(tl.float32) + q3.to(tl.float32), 1)
    score_scale = scale_log2 / _Q_SHIFT

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    a0 = tl.zeros([BLOCK_G, DW], tl.float32)
    a1, a2, a3 = a0, a0, a0
    table = block_tables_ptr + b.to(tl.int64) * stride_bt
    k_base = k_words_ptr + kv_head * stride_kch
    v_base = v_words_ptr + kv_head * stride_vch
    ks_base = k_scale_ptr + kv_head * stride_sh
    vs_base = v_scale_ptr + kv_head * stride_sh
    for tile in range(start, end, BLOCK_N):
        in_range, block, offset = _tile_slots(table, tile, n, end, BLOCK_SIZE)
        s_rows = block * stride_sb + offset * stride_ss
        kw = tl.load((k_base + block * stride_kcb + offset * stride_kcs)[:, None] + wd[None, :],
                     mask=in_range[:, None], other=0)
        k_scale, k_min = _scale_and_min(ks_base + s_rows, in_range, True)
        qk = _dot(q0, tl.trans(kv_code_plane(kw, 0, MMA, ASM)), UPCAST, IEEE)
        qk += _dot(q1, tl.trans(kv_code_plane(kw, 1, MMA, ASM)), UPCAST, IEEE)
        qk += _dot(q2, tl.trans(kv_code_plane(kw, 2, MMA, ASM)), UPCAST, IEEE)
        qk += _dot(q3, tl.trans(kv_code_plane(kw, 3, MMA, ASM)), UPCAST, IEEE)
        if ASM:
            qk -= q_mma_sum[:, None] * 1024.0
        s = (qk * score_scale) * k_scale[None, :] + (q_sum * scale_log2)[:, None] * k_min[None, :]
        p, alpha, m_new, l_i = _softmax_step(s, in_range, m_i, l_i)
        vw = tl.load((v_base + block * stride_vcb + offset * stride_vcs)[:, None] + wd[None, :],
                     mask=in_range[:, None], other=0)
        v_scale, v_min = _scale_and_min(vs_base + s_rows, in_range, True)
        pw = (p * (v_scale * _P_SHIFT)[None, :]).to(MMA)
        base = tl.sum(p * v_min[None, :], 1)  # the values' per-row min, times p
        if ASM:
            base -= tl.sum(pw.to(tl.float32), 1) * (1024.0 / _P_SHIFT)
        base = base[:, None]
        a0 = a0 * alpha[:, None] + _dot(pw, kv_code_plane(vw, 0, MMA, ASM), UPCAST, IEEE) * (1.0 / _P_SHIFT) + base
        a1 = a1 * alpha[:, None] + _dot(pw, kv_code_plane(vw, 1, MMA, ASM), UPCAST, IEEE) * (1.0 / _P_SHIFT) + base
        a2 = a2 * alpha[:, None] + _dot(pw, kv_code_plane(vw, 2, MMA, ASM), UPCAST, IEEE) * (1.0 / _P_SHIFT) + base
        a3 = a3 * alpha[:, None] + _dot(pw, kv_code_plane(vw, 3, MMA, ASM), UPCAST, IEEE) * (1.0 / _P_SHIFT) + base
        m_i = m_new

    inv = 1.0 / tl.where(l_i > 0, l_i, 1.0)[:, None]  # empty splits: 0 with lse -inf, never NaN
    if DIRECT:
        o = out_ptr + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + 4 * wd[None, :]
        ty = out_ptr.dtype.element_ty
        tl.store(o, (a0 * inv).to(ty), mask=head_mask[:, None])
        tl.store(o + 1, (a1 * inv).to(ty), mask=head_mask[:, None])
        tl.store(o + 2, (a2 * inv).to(ty), mask=head_mask[:, None])
        tl.store(o + 3, (a3 * inv).to(ty), mask=head_mask[:, None])
    else:  # an empty split writes nothing, as in _decode_attention_kernel
        live = head_mask & (g * 0 + start < end)  # [BLOCK_G]
        row = (b.to(tl.int64) * NUM_HEADS + heads) * num_splits + split  # [BLOCK_G]
        o = part_out_ptr + row[:, None] * HEAD_DIM + 4 * wd[None, :]
        tl.store(o, a0 * inv, mask=live[:, None])
        tl.store(o + 1, a1 * inv, mask=live[:, None])
        tl.store(o + 2, a2 * inv, mask=live[:, None])
        tl.store(o + 3, a3 * inv, mask=live[:, None])
        _store_lse(part_lse_ptr + row, m_i, l_i, live)


@triton.jit
def _decode_reduce_kernel(part_out_ptr, part_lse_ptr, out_ptr, seq_lens_ptr, num_splits, stride_ob, stride_oh,
                          NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
                          BLOCK_N: tl.constexpr, EARLY_LAUNCH: tl.constexpr):
    b = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + b)  # the host's, as in the split kernels: read before the early-launch wait
    enter(EARLY_LAUNCH)  # engine/kernels/pdl.py
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, HEAD_DIM)
    # Only the live splits wrote partials (the rest of the scratch is whatever an earlier call left). The
    # empty ones used to write 0 with lse -inf, which weighed nothing, so the sums are the same bits; at
    # batch 1 (64 splits, 6 live at 384 tokens) a bf16 step on an H100 takes 0.3% less time without their
    # writes and reads (lab 17, reports/examples/h100/decode-splits-2026-12-06/).
    split_mask = s < _live_splits(seq_len, num_splits, BLOCK_N)
    row = (b.to(tl.int64) * NUM_HEADS + head) * num_splits + s
    lse = tl.load(part_lse_ptr + row, mask=split_mask, other=float("-inf"))
    lse_max = tl.max(lse, 0)
    # All splits empty (seq_len 0): weights 0 and output 0 rather than NaN.
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    weight = tl.exp2(lse - lse_max)
    part = tl.load(part_out_ptr + row[:, None] * HEAD_DIM + d[None, :], mask=split_mask[:, None], other=0.0)
    total = tl.sum(weight, 0)
    out = tl.sum(part * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + head * stride_oh + d, out.to(out_ptr.dtype.element_ty))


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _config(head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_N tokens per tile, num_warps, num_stages) of the split kernel.

    64 tokens x 128 dims x 2 bytes = 16 KB of K (and of V) per iteration: 16-byte loads from every
    thread of 4 warps, small enough to keep 2 tiles in flight. `bench --sweep` retunes this.
    """
    return (64 if head_dim <= 128 else 32), 4, 2


def _quant_config(head_dim: int) -> tuple[int, int, int]:
    """_config for quantized caches: 128-token tiles (16 KB of int8 codes at head_dim 128, as many bytes
    as a bf16 tile of 64). On an H200, int8 with Qwen2.5-7B heads, the codes cast one by one
    (_decode_attention_kernel): batch 1 at 32k context 28.9 us against 36.4 with 64-token tiles; batch 32
    at 4k 94.0 against 125.9; batch 256 at 1k 168 against 196 (8 warps or 3 stages were slower), 0.77-0.82x
    the bf16 kernel at batch 8-256. The byte-plane kernel (_decode_attention_int8_kernel), same tiles,
    2026-12-03 (reports/examples/h200/kernel-lab-attn/): batch 256 x ~840 tokens 128.9 us (bf16 132.1,
    cast one by one 166.8), 64 x 1k 40.5 (40.7, 50.6), 32 x 4k 69.0 (72.2, 92.0), 1 x 32k 19.6 (28.2, 24.5);
    64-token tiles and 8 warps were slower there too. Still ~1.8 TB/s: instructions, not bytes, bound it."""
    return (128 if head_dim <= 128 else 64), 4, 2


def decode_num_splits(batch: int, num_kv_heads: int, max_blocks: int, block_size: int, head_dim: int,
                      device: torch.device | str = "cuda") -> int:
    """The split count `paged_decode_attention` picks for these shapes (shapes only: graph-safe).

    floor(_PROGRAMS_PER_SM * SMs / (B * Hkv)) splits: enough (request, kv head, split) programs to
    keep every SM streaming, and 1 once the batch alone fills the card; capped at _MAX_SPLITS and at
    the tiles the block table can hold (more splits than tiles would only idle).
    """
    device = torch.device(device)
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 132
    max_tiles = triton.cdiv(max_blocks * block_size, _config(head_dim)[0])
    splits = _PROGRAMS_PER_SM * sms // max(batch * num_kv_heads, 1)
    return max(1, min(splits, _MAX_SPLITS, max_tiles))


def decode_scratch_numel(batch: int, num_heads: int, head_dim: int, num_splits: int) -> int:
    """fp32 elements of the scratch buffer for num_splits > 1: partial outputs [B, H, S, D] + lse [B, H, S]."""
    return batch * num_heads * num_splits * (head_dim + 1) if num_splits > 1 else 0


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, *,
                           num_splits: int | None = None, out: torch.Tensor | None = None,
                           scratch: torch.Tensor | None = None, k_scale: torch.Tensor | None = None,
                           v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query token per request over the paged cache.

    q [B, H, D] (last dim contiguous; any B/H strides), k_cache, v_cache [num_blocks, block_size, Hkv, D],
    block_tables [B, max_blocks] int32, seq_lens [B] int32 (context length including this token;
    0 gives a zero output row) -> out [B, H, D] in q's dtype.

    num_splits: KV splits per request; None picks `decode_num_splits(...)` from the shapes. out: a
    preallocated [B, H, D] output; scratch: a contiguous fp32 buffer of at least
    `decode_scratch_numel(B, H, D, num_splits)` elements (allocated when None). Pass both to replay
    a captured CUDA graph without allocations.
    Quantized caches (uint8 codes [num_blocks, block_size, Hkv, D or D // 2], kv_write.py's format)
    come with k_scale, v_scale [num_blocks, block_size, Hkv, 2] fp32.
    """
    bits = _check(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale)
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    if num_splits is None:
        num_splits = decode_num_splits(batch, num_kv_heads, block_tables.shape[1], block_size, head_dim, q.device)
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    if out is None:
        out = torch.empty(batch, num_heads, head_dim, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} with a contiguous last dim, got {tuple(out.shape)}")
    if batch == 0:
        return out
    need = decode_scratch_numel(batch, num_heads, head_dim, num_splits)
    if need:
        if scratch is None:
            scratch = torch.empty(need, dtype=torch.float32, device=q.device)
        elif scratch.dtype != torch.float32 or not scratch.is_contiguous() or scratch.numel() < need:
            raise ValueError(f"scratch must be a contiguous fp32 buffer of >= {need} elements")
        flat = scratch.view(-1)
        part_out = flat[:batch * num_heads * num_splits * head_dim]
        part_lse = flat[part_out.numel():need]
    else:
        part_out = part_lse = out  # unused: the single split writes `out` directly
    on_cpu = q.device.type != "cuda"
    block_n, num_warps, num_stages = _quant_config(head_dim) if bits else _config(head_dim)
    common = dict(NUM_HEADS=num_heads, GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
                  BLOCK_SIZE=block_size, BLOCK_N=block_n, DIRECT=num_splits == 1,
                  UPCAST=on_cpu and q.dtype != torch.float32, IEEE=q.dtype == torch.float32, num_warps=num_warps,
                  num_stages=num_stages, **launch_options(out))
    if bits == 8 and head_dim >= 64:  # four byte planes of >= 16 dims: tl.dot's smallest K
        kernel, k_cache, v_cache = _decode_attention_int8_kernel, k_cache.view(torch.int32), v_cache.view(torch.int32)
        common["ASM"] = q.dtype != torch.float32 and inline_ptx_ok(q.device)
    else:
        kernel = _decode_attention_kernel
        common["KV_BITS"] = bits
    kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part_out, part_lse,
        k_scale if bits else k_cache, v_scale if bits else v_cache,  # unused pointers when not quantized
        scale * _LOG2E, num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        *(k_scale.stride()[:3] if bits else (0, 0, 0)), **common)
    if num_splits > 1:
        _decode_reduce_kernel[(batch, num_heads)](
            part_out, part_lse, out, seq_lens, num_splits, out.stride(0), out.stride(1),
            NUM_HEADS=num_heads, HEAD_DIM=head_dim,
            BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_N=block_n, num_warps=4 if head_dim >= 128 else 2,
            **launch_options(out))
    return out


def _check(q, k_cache, v_cache, block_tables, seq_lens, k_scale=None, v_scale=None) -> int:
    """Validate the decode inputs; returns the cache's code width (0: not quantized, 8, 4)."""
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"expected q [B, H, D] and caches [num_blocks, block_size, Hkv, D], "
                         f"got {tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    bits = check_kv_scales(k_cache, k_scale, v_scale, head_dim)
    if k_cache.shape[3] != (head_dim * bits // 8 if bits else head_dim) or num_heads % num_kv_heads:
        raise ValueError(f"q heads {num_heads} x dim {head_dim} do not fit cache heads {num_kv_heads} x dim "
                         f"{k_cache.shape[3]}")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
    if block_tables.dim() != 2 or block_tables.shape[0] != batch or seq_lens.shape != (batch,):
        raise ValueError(f"block_tables must be [{batch}, max_blocks] and seq_lens [{batch}], "
                         f"got {tuple(block_tables.shape)} and {tuple(seq_lens.shape)}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("block_tables", block_tables)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
    if (q.dtype != k_cache.dtype and not bits) or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"q and caches must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    return bits
