"""Rotary position embedding in place on q and k (neox / rotate-half layout, partial rotary too).

One program per token rotates all its query and key heads with one read of the token's cos/sin row,
in fp32, storing back in the input dtype. Layout as `engine.layers.rotary`: the first rot_dim dims
of each head are rotated as halves (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin); the rest pass
through untouched (never loaded).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import enter, launch_options


@triton.jit
def _rotate_heads(x_ptr, stride_h, c1, c2, s1, s2, num_heads,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    h = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < num_heads) & (j < HALF)
    ptr1 = x_ptr + h * stride_h + j
    x1 = tl.load(ptr1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr1 + HALF, mask=mask, other=0.0).to(tl.float32)
    # x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x2, x1).
    tl.store(ptr1, (x1 * c1 - x2 * s1).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(ptr1 + HALF, (x2 * c2 + x1 * s2).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def token_tables(positions_ptr, cos_ptr, sin_ptr, token, stride_cos, stride_sin,
                 HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """(cos first half, cos second half, sin first half, sin second half) at one token's position, fp32 [1, HALF].
    The positions are the host's and the tables constant, no kernel's output: the kernels read them before their
    early-launch wait (engine/kernels/pdl.py)."""
    pos = tl.load(positions_ptr + token).to(tl.int64)
    j = tl.arange(0, BLOCK_HALF)[None, :]
    jm = j < HALF
    # Both halves of the table are read (they are equal for standard rope) so any table is honoured.
    c1 = tl.load(cos_ptr + pos * stride_cos + j, mask=jm, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + pos * stride_cos + HALF + j, mask=jm, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + pos * stride_sin + j, mask=jm, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + pos * stride_sin + HALF + j, mask=jm, other=0.0).to(tl.float32)
    return c1, c2, s1, s2


@triton.jit
def rotate_token(q_ptr, k_ptr, c1, c2, s1, s2, token, stride_qt, stride_qh, stride_kt, stride_kh, num_heads,
                 num_kv_heads, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_KH: tl.constexpr,
                 BLOCK_HALF: tl.constexpr):
    """Rotate all query and key heads of one token in place with its `token_tables` (this kernel's program, or
    kv_write's fused one)."""
    _rotate_heads(q_ptr + token * stride_qt, stride_qh, c1, c2, s1, s2, num_heads, HALF, BLOCK_H, BLOCK_HALF)
    _rotate_heads(k_ptr + token * stride_kt, stride_kh, c1, c2, s1, s2, num_kv_heads, HALF, BLOCK_KH, BLOCK_HALF)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, positions_ptr, cos_ptr, sin_ptr,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_cos, stride_sin,
                   num_heads, num_kv_heads,
                   HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr,
                   EARLY_LAUNCH: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    c1, c2, s1, s2 = token_tables(positions_ptr, cos_ptr, sin_ptr, token, stride_cos, stride_sin, HALF, BLOCK_HALF)
    enter(EARLY_LAUNCH)  # engine/kernels/pdl.py
    rotate_token(q_ptr, k_ptr, c1, c2, s1, s2, token, stride_qt, stride_qh, stride_kt, stride_kh, num_heads,
                 num_kv_heads, HALF, BLOCK_H, BLOCK_KH, BLOCK_HALF)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, H, D] and k [T, Hkv, D] in place at positions [T] (int64); returns (q, k).

    cos, sin [max_pos, rot_dim] (fp32 tables of `RotaryEmbedding`, scaling already folded in);
    rot_dim <= D and even: dims past rot_dim pass through. q and k may be strided views (slices of
    a fused qkv output) with a contiguous last dim.
    """
    check_rotary(q, k, positions, cos, sin)
    num_tokens, num_heads, head_dim = q.shape
    if num_tokens == 0:
        return q, k
    half = cos.shape[-1] // 2
    block_h = triton.next_power_of_2(num_heads)
    block_half = triton.next_power_of_2(half)
    _rotary_kernel[(num_tokens,)](
        q, k, positions, cos, sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
        num_heads, k.shape[1],
        HALF=half, BLOCK_H=block_h, BLOCK_KH=triton.next_power_of_2(k.shape[1]), BLOCK_HALF=block_half,
        num_warps=4 if block_h * block_half >= 1024 else 2, **launch_options(q))
    return q, k


def check_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> None:
    """apply_rotary's argument checks (kv_write.write_kv's fused rotation takes the same arguments)."""
    if q.dim() != 3 or k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"expected q [T, H, D] and k [T, Hkv, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    num_tokens, num_heads, head_dim = q.shape
    rot_dim = cos.shape[-1]
    if cos.dim() != 2 or sin.shape != cos.shape or rot_dim % 2 or rot_dim > head_dim:
        raise ValueError(f"cos/sin must be [max_pos, rot_dim] with an even rot_dim <= {head_dim}, "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if positions.shape != (num_tokens,):
        raise ValueError(f"positions must be [{num_tokens}], got {tuple(positions.shape)}")
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
