"""Lab variant of the int8-KV decode attention (engine/kernels/decode_attention.py, KV_BITS = 8).

The shipped kernel turns each uint8 code into bf16 one at a time (sm_90 SASS per 128-token tile and
thread: 128 LDS.U8, 128 I2F.BF16, 128 I2FP.F32 + FFMA + F2FP for V: 1,529 instructions against the
bf16 kernel's 478 per 64-token tile), and is slower than the 16-bit kernel although it reads half the
bytes. Here the codes go to fp16, not bf16: one PRMT puts two code bytes under fp16 1024.0's exponent
(0x64 high bytes) and one packed subtract of 1024 leaves the exact codes, 1 instruction a code (bf16's
7 mantissa bits cannot hold an 8-bit code that way). So the MMAs run in fp16:
- q is converted once per program to fp16 after a 2^-6 scale (headroom: |q| up to 4e6; the 2^6 goes
  into the score scale), so scores are q . code in fp16 x fp16 -> fp32, then * k_scale + sum(q) * k_min;
- PV: p * v_scale * 2^6 in fp16 against the codes, plus p @ v_min, the 2^6 divided out in fp32.
ASM (GPU only) selects the PRMT path; without it the codes are converted with a plain cast (the CPU
interpreter's path, same numbers).
"""
import triton
import triton.language as tl

from engine.kernels.decode_attention import _dot, _scale_and_min

Q_SHIFT = tl.constexpr(1.0 / 64.0)
P_SHIFT = tl.constexpr(64.0)


@triton.jit
def _codes_f16(codes, ASM: tl.constexpr):
    """uint8 codes [R, C] -> the same values as fp16, exactly."""
    if ASM:
        # $2: four code bytes b0..b3 (b0 lowest); m's bytes are 4..7 of the selector: $0 = bytes (b0, 0x64, b1,
        # 0x64) = the fp16 pair (1024 + b0, 1024 + b1), $1 the same for b2, b3; minus 1024 each: the codes
        return tl.inline_asm_elementwise(
            "{ .reg .b32 m; mov.b32 m, 0x64006400;"
            "  prmt.b32 $0, $2, m, 0x5150; prmt.b32 $1, $2, m, 0x5352;"
            "  sub.f16x2 $0, $0, m; sub.f16x2 $1, $1, m; }",
            "=r,=r,r", [codes], dtype=tl.float16, is_pure=True, pack=4)
    return codes.to(tl.float16)


@triton.jit
def decode_attention_int8_lab(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
        k_scale_ptr, v_scale_ptr, scale_log2, num_splits,
        stride_qb, stride_qh, stride_ob, stride_oh,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, stride_bt,
        stride_sb, stride_ss, stride_sh,
        NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DIRECT: tl.constexpr,
        UPCAST: tl.constexpr, IEEE: tl.constexpr, KV_BITS: tl.constexpr, ASM: tl.constexpr = False):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + g
    head_mask = g < GROUP
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=head_mask[:, None], other=0.0).to(tl.float32)
    q_sum = tl.sum(q, 1)  # the keys' per-row min multiplies sum(q)
    q16 = (q * Q_SHIFT).to(tl.float16)
    score_scale = scale_log2 / Q_SHIFT

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    table = block_tables_ptr + b.to(tl.int64) * stride_bt
    k_base = k_cache_ptr + kv_head * stride_kch
    v_base = v_cache_ptr + kv_head * stride_vch
    ks_base = k_scale_ptr + kv_head * stride_sh
    vs_base = v_scale_ptr + kv_head * stride_sh
    for tile in range(start, end, BLOCK_N):
        pos = tile + n
        in_range = pos < end
        block = tl.load(table + pos // BLOCK_SIZE, mask=in_range, other=0).to(tl.int64)
        offset = pos % BLOCK_SIZE
        s_rows = block * stride_sb + offset * stride_ss
        k_codes = tl.load((k_base + block * stride_kcb + offset * stride_kcs)[:, None] + d[None, :],
                          mask=in_range[:, None], other=0)
        k_scale, k_min = _scale_and_min(ks_base + s_rows, in_range, True)
        if UPCAST:
            qk = _dot(q16.to(tl.float32), tl.trans(_codes_f16(k_codes, ASM).to(tl.float32)), UPCAST, IEEE)
        else:
            qk = _dot(q16, tl.trans(_codes_f16(k_codes, ASM)), UPCAST, IEEE)
        s = (qk * score_scale) * k_scale[None, :] + (q_sum * scale_log2)[:, None] * k_min[None, :]
        s = tl.where(in_range[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_codes = tl.load((v_base + block * stride_vcb + offset * stride_vcs)[:, None] + d[None, :],
                          mask=in_range[:, None], other=0)
        v_scale, v_min = _scale_and_min(vs_base + s_rows, in_range, True)
        pw = (p * (v_scale * P_SHIFT)[None, :]).to(tl.float16)
        if UPCAST:
            pv = _dot(pw.to(tl.float32), _codes_f16(v_codes, ASM).to(tl.float32), UPCAST, IEEE)
        else:
            pv = _dot(pw, _codes_f16(v_codes, ASM), UPCAST, IEEE)
        acc = acc * alpha[:, None] + pv * (1.0 / P_SHIFT) + tl.sum(p * v_min[None, :], 1)[:, None]
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if DIRECT:
        tl.store(out_ptr + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=head_mask[:, None])
    else:
        row = (b.to(tl.int64) * NUM_HEADS + heads) * num_splits + split
        tl.store(part_out_ptr + row[:, None] * HEAD_DIM + d[None, :], out, mask=head_mask[:, None])
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + row, lse, mask=head_mask)


@triton.jit
def _prmt_f16(w, SEL: tl.constexpr):
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t, m; mov.b32 m, 0x64006400; prmt.b32 t, $1, $2, " + SEL + ";"
        "  and.b32 t, t, 0x00FF00FF; or.b32 $0, t, m; }",
        "=r,r,r", [w], dtype=tl.float16, is_pure=True, pack=2)


@triton.jit
def _plane_f16(w, J: tl.constexpr, ASM: tl.constexpr):
    """Byte J of int32 words w [R, C] as fp16 [R, C]: with ASM 1024 + code (exact; the caller takes the
    1024 back out of the fp32 sums), else the code."""
    if ASM:
        # pack=2: two words $1, $2; PRMT brings byte J of each to the low byte of a 16-bit half, the mask
        # and the 0x64 exponent make the fp16 pair (1024 + code)
        # selector nibbles: result byte 0 <- byte J of $1, byte 2 <- byte J of $2 (source bytes 4..7)
        if J == 0:
            return _prmt_f16(w, "0x0400")
        elif J == 1:
            return _prmt_f16(w, "0x0501")
        elif J == 2:
            return _prmt_f16(w, "0x0602")
        else:
            return _prmt_f16(w, "0x0703")
    return ((w >> (8 * J)) & 0xFF).to(tl.float16)


@triton.jit
def decode_attention_int8_planes(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
        k_scale_ptr, v_scale_ptr, scale_log2, num_splits,
        stride_qb, stride_qh, stride_ob, stride_oh,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, stride_bt,
        stride_sb, stride_ss, stride_sh,
        NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DIRECT: tl.constexpr,
        UPCAST: tl.constexpr, IEEE: tl.constexpr, KV_BITS: tl.constexpr, ASM: tl.constexpr = False):
    """The caches as int32 words (k_cache_ptr / v_cache_ptr: [num_blocks, block_size, Hkv, D / 4] int32 views,
    strides in words). Dim d = 4w + j is byte j of word w: the products run over four byte planes, each
    a [BLOCK_N, D / 4] fp16 tile from one PRMT + LOP3 per two codes (1024 + code: the 1024 comes back
    out of the fp32 sums, q16_sum for the scores, the sum of p's fp16 weights for PV), with q's dims gathered to
    match (q_j = q[:, j::4]) and each plane's output dims stored back at 4w + j."""
    DW: tl.constexpr = HEAD_DIM // 4
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)

    g = tl.arange(0, BLOCK_G)
    wd = tl.arange(0, DW)
    n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + g
    head_mask = g < GROUP
    q_rows = q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + 4 * wd[None, :]
    q0 = tl.load(q_rows + 0, mask=head_mask[:, None], other=0.0).to(tl.float32)
    q1 = tl.load(q_rows + 1, mask=head_mask[:, None], other=0.0).to(tl.float32)
    q2 = tl.load(q_rows + 2, mask=head_mask[:, None], other=0.0).to(tl.float32)
    q3 = tl.load(q_rows + 3, mask=head_mask[:, None], other=0.0).to(tl.float32)
    q_sum = tl.sum(q0 + q1 + q2 + q3, 1)
    q0 = (q0 * Q_SHIFT).to(tl.float16)
    q1 = (q1 * Q_SHIFT).to(tl.float16)
    q2 = (q2 * Q_SHIFT).to(tl.float16)
    q3 = (q3 * Q_SHIFT).to(tl.float16)
    # sum of the fp16 q the MMAs see: with ASM the key planes hold 1024 + code
    q16_sum = tl.sum(q0.to(tl.float32) + q1.to(tl.float32) + q2.to(tl.float32) + q3.to(tl.float32), 1)
    score_scale = scale_log2 / Q_SHIFT

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    a0 = tl.zeros([BLOCK_G, DW], tl.float32)
    a1, a2, a3 = a0, a0, a0
    table = block_tables_ptr + b.to(tl.int64) * stride_bt
    k_base = k_cache_ptr + kv_head * stride_kch
    v_base = v_cache_ptr + kv_head * stride_vch
    ks_base = k_scale_ptr + kv_head * stride_sh
    vs_base = v_scale_ptr + kv_head * stride_sh
    for tile in range(start, end, BLOCK_N):
        pos = tile + n
        in_range = pos < end
        block = tl.load(table + pos // BLOCK_SIZE, mask=in_range, other=0).to(tl.int64)
        offset = pos % BLOCK_SIZE
        s_rows = block * stride_sb + offset * stride_ss
        kw = tl.load((k_base + block * stride_kcb + offset * stride_kcs)[:, None] + wd[None, :],
                     mask=in_range[:, None], other=0)
        k_scale, k_min = _scale_and_min(ks_base + s_rows, in_range, True)
        qk = _dot(q0, tl.trans(_plane_f16(kw, 0, ASM)), UPCAST, IEEE)
        qk += _dot(q1, tl.trans(_plane_f16(kw, 1, ASM)), UPCAST, IEEE)
        qk += _dot(q2, tl.trans(_plane_f16(kw, 2, ASM)), UPCAST, IEEE)
        qk += _dot(q3, tl.trans(_plane_f16(kw, 3, ASM)), UPCAST, IEEE)
        if ASM:
            qk -= q16_sum[:, None] * 1024.0
        s = (qk * score_scale) * k_scale[None, :] + (q_sum * scale_log2)[:, None] * k_min[None, :]
        s = tl.where(in_range[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vw = tl.load((v_base + block * stride_vcb + offset * stride_vcs)[:, None] + wd[None, :],
                     mask=in_range[:, None], other=0)
        v_scale, v_min = _scale_and_min(vs_base + s_rows, in_range, True)
        pw = (p * (v_scale * P_SHIFT)[None, :]).to(tl.float16)
        base = tl.sum(p * v_min[None, :], 1)[:, None]
        if ASM:
            base -= tl.sum(pw.to(tl.float32), 1)[:, None] * (1024.0 / P_SHIFT)
        a0 = a0 * alpha[:, None] + _dot(pw, _plane_f16(vw, 0, ASM), UPCAST, IEEE) * (1.0 / P_SHIFT) + base
        a1 = a1 * alpha[:, None] + _dot(pw, _plane_f16(vw, 1, ASM), UPCAST, IEEE) * (1.0 / P_SHIFT) + base
        a2 = a2 * alpha[:, None] + _dot(pw, _plane_f16(vw, 2, ASM), UPCAST, IEEE) * (1.0 / P_SHIFT) + base
        a3 = a3 * alpha[:, None] + _dot(pw, _plane_f16(vw, 3, ASM), UPCAST, IEEE) * (1.0 / P_SHIFT) + base
        m_i = m_new

    inv = 1.0 / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if DIRECT:
        o = out_ptr + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + 4 * wd[None, :]
        ty = out_ptr.dtype.element_ty
        tl.store(o + 0, (a0 * inv).to(ty), mask=head_mask[:, None])
        tl.store(o + 1, (a1 * inv).to(ty), mask=head_mask[:, None])
        tl.store(o + 2, (a2 * inv).to(ty), mask=head_mask[:, None])
        tl.store(o + 3, (a3 * inv).to(ty), mask=head_mask[:, None])
    else:
        row = (b.to(tl.int64) * NUM_HEADS + heads) * num_splits + split
        o = part_out_ptr + row[:, None] * HEAD_DIM + 4 * wd[None, :]
        tl.store(o + 0, a0 * inv, mask=head_mask[:, None])
        tl.store(o + 1, a1 * inv, mask=head_mask[:, None])
        tl.store(o + 2, a2 * inv, mask=head_mask[:, None])
        tl.store(o + 3, a3 * inv, mask=head_mask[:, None])
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + row, lse, mask=head_mask)
