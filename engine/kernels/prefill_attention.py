"""Paged prefill attention: variable-length causal attention of prompt chunks over the paged KV cache.

Covers every step that is not decode-only: whole prompts, chunked-prefill chunks and prefix-cache
hits (whose earlier tokens are already cached), and the one-token decode rows of a mixed batch.
Query i of request b (0-based within its chunk of q_len = qsl[b+1] - qsl[b] tokens) sees keys
0 .. seq_len - q_len + i; all keys, this chunk's included (write_kv ran first), come from the cache.

Flash-attention style with GQA packing: a program owns BLOCK_M rows = BLOCK_Q query tokens x the
GROUP query heads of one kv head (row r is token r // GROUP, head r % GROUP), so each K/V tile is
loaded once for all heads that share it and a decode row of a mixed batch fills GROUP rows of the
tile instead of one. Grid (cdiv(max_query_len, BLOCK_Q), Hkv, B); online softmax in fp32; QK^T and
PV on tl.dot. Key tiles wholly below the diagonal run without masks, tiles above it are skipped.
Quantized caches (KV_BITS 8/4, constexpr) go through decode_attention's _quant_scores / _quant_pv.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .decode_attention import _dot, _quant_pv, _quant_scores
from .kv_write import check_kv_scales

_LOG2E = 1.0 / math.log(2.0)


@triton.jit
def _prefill_tile(q, m_i, l_i, acc, tile_start, limit, table, k_base, v_base,
                  stride_kcb, stride_kcs, stride_vcb, stride_vcs, scale_log2,
                  HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                  MASKED: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                  q_sum, ks_base, vs_base, stride_sb, stride_ss, KV_BITS: tl.constexpr):
    """One BLOCK_N-key step of the online softmax; MASKED applies the causal limit per row."""
    pos = tile_start + tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    if MASKED:
        # limit.max() < seq_len for every row, so this mask also keeps loads inside the request.
        key_ok = pos <= tl.max(limit, 0)
        block = tl.load(table + pos // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
    else:
        block = tl.load(table + pos // BLOCK_SIZE).to(tl.int64)
    offset = pos % BLOCK_SIZE
    if KV_BITS == 0:
        k_ptrs = k_base + block[:, None] * stride_kcb + offset[:, None] * stride_kcs + d[None, :]
        v_ptrs = v_base + block[:, None] * stride_vcb + offset[:, None] * stride_vcs + d[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        s = _dot(q, tl.trans(k), UPCAST, IEEE) * scale_log2  # [BLOCK_M, BLOCK_N], log2 domain
    else:
        if not MASKED:
            key_ok = pos >= 0  # unused by the unmasked loads; the helpers take a mask argument anyway
        s_rows = block * stride_sb + offset * stride_ss
        s = _quant_scores(q, q_sum, k_base + block * stride_kcb + offset * stride_kcs, ks_base + s_rows, key_ok,
                          BLOCK_N, HEAD_DIM, KV_BITS, MASKED, UPCAST, IEEE) * scale_log2
    if MASKED:
        s = tl.where(pos[None, :] <= limit[:, None], s, float("-inf"))
    # Each row sees key 0 of the first tile it visits (limit >= 0), so m_new stays finite.
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if KV_BITS == 0:
        if MASKED:
            v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST, IEEE)
    else:
        acc = acc * alpha[:, None] + _quant_pv(p, v_base + block * stride_vcb + offset * stride_vcs, vs_base + s_rows,
                                               key_ok, q.dtype, BLOCK_N, HEAD_DIM, KV_BITS, MASKED, UPCAST, IEEE)
    return m_new, l_i, acc


@triton.jit
def _prefill_attention_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, query_start_loc_ptr, seq_lens_ptr, block_tables_ptr,
        k_scale_ptr, v_scale_ptr, scale_log2,
        stride_qt, stride_qh, stride_ot, stride_oh,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, stride_bt,
        stride_sb, stride_ss, stride_sh,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
        UPCAST: tl.constexpr, IEEE: tl.constexpr, ALWAYS_MASKED: tl.constexpr, KV_BITS: tl.constexpr):
    # Last query blocks first: they see the most keys, so the long programs start early (fewer tails).
    q_block = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)
    b = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + b)
    q_len = tl.load(query_start_loc_ptr + b + 1) - q_start
    first_q = q_block * BLOCK_Q
    if first_q >= q_len:  # past this request's chunk (q_len 0 included)
        return
    seq_len = tl.load(seq_lens_ptr + b)
    context = seq_len - q_len  # tokens cached before this chunk
    last_q = tl.minimum(first_q + BLOCK_Q, q_len) - 1

    r = tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    query = first_q + r // GROUP
    heads = kv_head * GROUP + r % GROUP
    row_ok = (r < BLOCK_Q * GROUP) & (query < q_len)
    token = (q_start + query).to(tl.int64)
    q = tl.load(q_ptr + token[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None], other=0.0)
    # Last visible key per row; padding rows borrow a real row's limit so no row is ever fully masked.
    limit = context + tl.minimum(query, last_q)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    table = block_tables_ptr + b.to(tl.int64) * stride_bt
    k_base = k_cache_ptr + kv_head * stride_kch
    v_base = v_cache_ptr + kv_head * stride_vch
    ks_base = k_scale_ptr + kv_head * stride_sh
    vs_base = v_scale_ptr + kv_head * stride_sh
    q_sum = l_i  # unused by the 16-bit path
    if KV_BITS != 0:
        q_sum = tl.sum(q.to(tl.float32), 1)  # the keys' per-row min multiplies sum(q)
    # Tiles [0, full) are visible to every row (keys <= context + first_q): no masks at all.
    full = (context + first_q + 1) // BLOCK_N
    if ALWAYS_MASKED:
        # Batch-invariant mode: which tiles of a row take the unmasked path depends on where the row
        # sits in its chunk, and the two paths round differently (the compiler contracts the unmasked
        # path's scale-and-subtract into an FMA). One path for every tile keeps a row's bits fixed.
        full = full * 0
    for tile in range(0, full):
        m_i, l_i, acc = _prefill_tile(q, m_i, l_i, acc, tile * BLOCK_N, limit, table, k_base, v_base,
                                      stride_kcb, stride_kcs, stride_vcb, stride_vcs, scale_log2,
                                      HEAD_DIM, BLOCK_SIZE, BLOCK_N, False, UPCAST, IEEE,
                                      q_sum, ks_base, vs_base, stride_sb, stride_ss, KV_BITS)
    # Tiles crossing the diagonal; those wholly above it (past context + last_q) are never visited.
    for tile in range(full, tl.cdiv(context + last_q + 1, BLOCK_N)):
        m_i, l_i, acc = _prefill_tile(q, m_i, l_i, acc, tile * BLOCK_N, limit, table, k_base, v_base,
                                      stride_kcb, stride_kcs, stride_vcb, stride_vcs, scale_log2,
                                      HEAD_DIM, BLOCK_SIZE, BLOCK_N, True, UPCAST, IEEE,
                                      q_sum, ks_base, vs_base, stride_sb, stride_ss, KV_BITS)
    out = acc / l_i[:, None]
    tl.store(out_ptr + token[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def _config(head_dim: int, group: int, on_gpu: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a head size and GQA group.

    64 x 64 tiles with 4 warps won every case of `bench --sweep` on an H100 (Qwen2.5-7B heads, bf16):
    a 1024-token prompt 44 us (128 x 64 with 8 warps: 53 us), 4096 tokens 369 us (326 TFLOP/s),
    1024 tokens after 3072 cached 184 us, 2048 tokens + 64 decode rows 253 us (128 x 64: 348 us).
    """
    if not on_gpu:
        return max(16, triton.next_power_of_2(group)) * 4, 32, 4, 1  # small tiles: the interpreter is slow
    block_m = max(64, triton.next_power_of_2(group))
    return block_m, 64 if head_dim <= 128 else 32, 4, 2


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                            scale: float, max_query_len: int, *, out: torch.Tensor | None = None,
                            batch_invariant: bool = False, k_scale: torch.Tensor | None = None,
                            v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of B query chunks over the paged cache.

    q [T, H, D] (tokens of all chunks, flattened; last dim contiguous), k_cache, v_cache
    [num_blocks, block_size, Hkv, D], query_start_loc [B+1] int32, seq_lens [B] int32 (cached + this
    chunk), block_tables [B, max_blocks] int32, max_query_len >= every chunk's length (a host int:
    it sizes the grid) -> out [T, H, D] in q's dtype. Chunks may have length 1 (decode rows) or 0.
    batch_invariant: every key tile through the same (masked) code path, so a query row's output has
    the same bits whatever chunk it is in and wherever it sits in it (deterministic mode; a little slower).
    Quantized caches (uint8 codes [num_blocks, block_size, Hkv, D or D // 2], kv_write.py's format)
    come with k_scale, v_scale [num_blocks, block_size, Hkv, 2] fp32; batch invariance holds for them
    too, since a token's codes and scales depend on that token's K/V only.
    """
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"expected q [T, H, D] and caches [num_blocks, block_size, Hkv, D], "
                         f"got {tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    bits = check_kv_scales(k_cache, k_scale, v_scale, head_dim)
    if k_cache.shape[3] != (head_dim * bits // 8 if bits else head_dim) or num_heads % num_kv_heads:
        raise ValueError(f"q heads {num_heads} x dim {head_dim} do not fit cache heads {num_kv_heads} x dim "
                         f"{k_cache.shape[3]}")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
    batch = seq_lens.shape[0]
    if query_start_loc.shape != (batch + 1,) or block_tables.dim() != 2 or block_tables.shape[0] != batch:
        raise ValueError(f"query_start_loc must be [{batch + 1}] and block_tables [{batch}, max_blocks], "
                         f"got {tuple(query_start_loc.shape)} and {tuple(block_tables.shape)}")
    if (q.dtype != k_cache.dtype and not bits) or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"q and caches must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("block_tables", block_tables)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
    if out is None:
        out = torch.empty(num_tokens, num_heads, head_dim, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} with a contiguous last dim, got {tuple(out.shape)}")
    if num_tokens == 0 or batch == 0 or max_query_len <= 0:
        return out
    group = num_heads // num_kv_heads
    on_gpu = q.device.type == "cuda"
    block_m, block_n, num_warps, num_stages = _config(head_dim, group, on_gpu)
    block_q = block_m // group
    grid = (triton.cdiv(max_query_len, block_q), num_kv_heads, batch)
    _prefill_attention_kernel[grid](
        q, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables,
        k_scale if bits else k_cache, v_scale if bits else v_cache,  # unused pointers when not quantized
        scale * _LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        *(k_scale.stride()[:3] if bits else (0, 0, 0)),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_Q=block_q,
        BLOCK_N=block_n, UPCAST=not on_gpu and q.dtype != torch.float32, IEEE=q.dtype == torch.float32,
        ALWAYS_MASKED=batch_invariant, KV_BITS=bits, num_warps=num_warps, num_stages=num_stages)
    return out
