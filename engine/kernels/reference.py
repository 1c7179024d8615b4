"""Torch references of every kernel; also the attention path on CPU and with `attention_backend=torch`.

Shapes: q [T, H, D] (flattened tokens of all requests), caches [num_blocks, block_size, Hkv, D].
Quantized caches (quant_policy 8/4; format in kv_write.py's docstring) are uint8 codes [..., D] or
[..., D // 2] with k_scale, v_scale [num_blocks, block_size, Hkv, 2] fp32 (scale, min); every function
that reads or writes a cache takes the scales as optional arguments and dequantizes to fp32 on read.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def quantize_kv_ref(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min-max codes of each row of x [..., D]: (codes uint8 [..., D * bits // 8], [..., 2] (scale, min)).

    The same arithmetic as write_kv's kernel (fp32, floor(t + 0.5)), so the interpreter's codes match bit for bit.
    """
    qmax = (1 << bits) - 1
    xf = x.float()
    lo, hi = xf.amin(-1), xf.amax(-1)
    scale = (hi - lo) / qmax
    t = (xf - lo[..., None]) / torch.where(scale > 0, scale, 1.0)[..., None]
    codes = torch.floor(t + 0.5).clamp_(0, qmax).to(torch.uint8)
    if bits == 4:  # dims 2j, 2j+1 -> low, high nibble of byte j
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return codes, torch.stack((scale, lo), -1)


def dequantize_kv_ref(codes: torch.Tensor, scales: torch.Tensor, head_dim: int) -> torch.Tensor:
    """fp32 [..., D] from codes [..., D or D // 2] and scales [..., 2]: code * scale + min."""
    if codes.shape[-1] != head_dim:
        codes = torch.stack((codes & 15, codes >> 4), -1).flatten(-2)
    return torch.addcmul(scales[..., 1:], codes.float(), scales[..., :1])


def write_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                 v_scale: torch.Tensor | None = None) -> None:
    """Store k, v [T, Hkv, D] into the paged caches at slot_mapping [T] (quantized when scales are given)."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    if k_scale is None:
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v)
        return
    bits = 8 * k_cache.shape[-1] // head_dim
    for x, cache, scales in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        codes, row_scales = quantize_kv_ref(x, bits)
        cache.view(-1, num_kv_heads, cache.shape[-1]).index_copy_(0, slot_mapping, codes)
        scales.view(-1, num_kv_heads, 2).index_copy_(0, slot_mapping, row_scales)


def _read_blocks(cache: torch.Tensor, scales: torch.Tensor | None, index: torch.Tensor, head_dim: int
                 ) -> torch.Tensor:
    """Blocks `index` of a cache: [len(index), block_size, Hkv, D], dequantized to fp32 if scales are given."""
    # index_select copies whole blocks (memcpy); advanced indexing was ~6x slower on CPU.
    blocks = cache.index_select(0, index)
    if scales is None:
        return blocks
    return dequantize_kv_ref(blocks, scales.index_select(0, index), head_dim)


def _gather(cache: torch.Tensor, block_table: torch.Tensor, length: int, scales: torch.Tensor | None = None,
            head_dim: int = 0) -> torch.Tensor:
    """The first `length` tokens of one request's cache: [length, Hkv, D]."""
    num_blocks = -(-length // cache.shape[1])
    return _read_blocks(cache, scales, block_table[:num_blocks], head_dim).flatten(0, 1)[:length]


def decode_gather_plan(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, max_seq_len: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(block index [B * num_blocks], additive mask [B, 1, 1, num_blocks * block_size] fp32: 0 where a key is
    one of the request's tokens, -inf past them) of a decode step: the same for every layer, so the
    CPU path builds it once per step (ForwardContext.cache). SDPA turns a boolean mask into exactly
    this additive one, so passing it changes no bit of the output."""
    num_blocks = -(-max_seq_len // block_size)
    index = block_tables[:, :num_blocks].reshape(-1)
    length = num_blocks * block_size
    visible = torch.arange(length, device=seq_lens.device)[None, :] < seq_lens[:, None]
    mask = torch.zeros(visible.shape, dtype=torch.float32, device=seq_lens.device).masked_fill_(~visible, float("-inf"))
    return index, mask[:, None, None, :]


def decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                         max_seq_len: int, k_scale: torch.Tensor | None = None,
                         v_scale: torch.Tensor | None = None, plan: tuple | None = None) -> torch.Tensor:
    """One query token per request. q [B, H, D], block_tables [B, max_blocks], seq_lens [B] -> [B, H, D].

    Also the CPU decode path: the blocks are gathered with one index_select and read by SDPA through
    a transposed view (no second copy), the query heads of a KV head as SDPA's query rows; 3.3x
    faster than gather + einsum at 16 x 320 tokens of SmolLM2 on 2 cores. plan: decode_gather_plan's
    (index, mask) for these arguments, when the caller keeps it across layers.
    """
    batch, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    index, mask = plan or decode_gather_plan(block_tables, seq_lens, block_size, max_seq_len)
    length = mask.shape[-1]
    k = _read_blocks(k_cache, k_scale, index, head_dim).view(batch, length, num_kv_heads, head_dim).transpose(1, 2)
    v = _read_blocks(v_cache, v_scale, index, head_dim).view(batch, length, num_kv_heads, head_dim).transpose(1, 2)
    qg = q.view(batch, num_kv_heads, group, head_dim)
    out = F.scaled_dot_product_attention(qg.float(), k.float(), v.float(), attn_mask=mask, scale=scale)
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)


def prefill_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          block_table: torch.Tensor, seq_len: int, scale: float,
                          k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """One request's chunk of q [Q, H, D] whose tokens are the last Q of its seq_len cached tokens.

    Causal: query i sees keys up to seq_len - Q + i (earlier chunks and prefix-cache hits included).
    A quantized cache is dequantized to fp32 and attended in fp32 (the kernels accumulate in fp32 too).
    """
    query_len, num_heads, head_dim = q.shape
    k = _gather(k_cache, block_table, seq_len, k_scale, head_dim).transpose(0, 1).unsqueeze(0)  # [1, Hkv, L, D]
    v = _gather(v_cache, block_table, seq_len, v_scale, head_dim).transpose(0, 1).unsqueeze(0)
    qh = q.transpose(0, 1).unsqueeze(0).to(k.dtype)  # [1, H, Q, D]
    if query_len == seq_len:
        out = F.scaled_dot_product_attention(qh, k, v, is_causal=True, scale=scale, enable_gqa=True)
    else:
        rows = torch.arange(query_len, device=q.device)[:, None] + (seq_len - query_len)
        mask = torch.arange(seq_len, device=q.device)[None, :] <= rows
        out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1).to(q.dtype)


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, ctx, scale: float,
                        k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of a whole mixed step (decode tokens and prefill chunks) over the paged cache.

    Requests with one query token go through one batched decode call; longer chunks one by one.
    """
    scales = (k_scale, v_scale)
    block_size = k_cache.shape[1]
    if ctx.is_decode_only:
        plan = ctx.cache.get("ref_decode_plan")
        if plan is None:
            plan = ctx.cache["ref_decode_plan"] = decode_gather_plan(ctx.block_tables, ctx.seq_lens, block_size,
                                                                     ctx.max_seq_len)
        return decode_attention_ref(q, k_cache, v_cache, ctx.block_tables, ctx.seq_lens, scale, ctx.max_seq_len,
                                    *scales, plan=plan)
    out = torch.empty_like(q)
    start = 0
    decode_rows: list[int] = []
    for i, (query_len, seq_len) in enumerate(zip(ctx.query_lens, ctx.seq_lens_host)):
        if query_len == 1:
            decode_rows.append(i)
        else:
            out[start:start + query_len] = prefill_attention_ref(
                q[start:start + query_len], k_cache, v_cache, ctx.block_tables[i], seq_len, scale, *scales)
        start += query_len
    if decode_rows:
        plan = ctx.cache.get("ref_decode_rows")
        if plan is None:
            rows = torch.tensor(decode_rows, device=q.device)
            max_len = max(ctx.seq_lens_host[i] for i in decode_rows)
            plan = ctx.cache["ref_decode_rows"] = (
                rows, ctx.query_start_loc[rows].long(), max_len,
                decode_gather_plan(ctx.block_tables[rows], ctx.seq_lens[rows], block_size, max_len))
        rows, token_idx, max_len, gather = plan
        out[token_idx] = decode_attention_ref(q[token_idx], k_cache, v_cache, ctx.block_tables[rows],
                                              ctx.seq_lens[rows], scale, max_len, *scales, plan=gather)
    return out


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / rms(x) for x [T, N], weight [N]; rounded as RMSNorm does, returned in x's dtype."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * xf.to(dtype)).to(dtype)


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual), the sum rounded to the input dtype first."""
    summed = x + residual
    return rms_norm_ref(summed, weight, eps), summed


def rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rope of q [T, H, D], k [T, Hkv, D] at positions [T] with cos/sin [max_pos, rot_dim].

    Computed in fp32 and cast back (new tensors); dims past rot_dim pass through.
    """
    rot_dim = cos.shape[-1]
    c = cos[positions].float().unsqueeze(1)
    s = sin[positions].float().unsqueeze(1)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        rot = x[..., :rot_dim].float()
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = rot * c + torch.cat((-x2, x1), dim=-1) * s
        return torch.cat((rotated.to(x.dtype), x[..., rot_dim:]), dim=-1)

    return rotate(q), rotate(k)


def silu_and_mul_ref(x: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """silu(gate) * up for x [T, 2I] -> [T, I]; x = [gate | up] (chunk 0) or chunks of `chunk` gate columns,
    each followed by its `chunk` up columns (engine/kernels/activation.py)."""
    if chunk:
        pairs = x.view(x.shape[0], -1, 2, chunk)
        gate, up = pairs[:, :, 0].flatten(1), pairs[:, :, 1].flatten(1)
    else:
        gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
