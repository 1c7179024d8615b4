"""Lab variant of the int8-KV decode attention (engine/kernels/decode_attention.py, KV_BITS = 8): the
uint8 tile converted elementwise with PRMT. Measured against the shipped kernels in
reports/examples/h200/kernel-lab-attn/ (`int8-prmt`): faster than casting each code, slower than the
byte-plane kernel the engine adopted (_decode_attention_int8_kernel, whose first version was lab 4's), since
Triton still loads this variant's operand a byte at a time.

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

from engine.kernels.decode_attention import (_dot, _scale_and_min, _softmax_step, _split_range, _store_lse,
                                             _tile_slots)

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
    start, end = _split_range(seq_lens_ptr, b, split, num_splits, BLOCK_N)

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
        in_range, block, offset = _tile_slots(table, tile, n, end, BLOCK_SIZE)
        s_rows = block * stride_sb + offset * stride_ss
        k_codes = tl.load((k_base + block * stride_kcb + offset * stride_kcs)[:, None] + d[None, :],
                          mask=in_range[:, None], other=0)
        k_scale, k_min = _scale_and_min(ks_base + s_rows, in_range, True)
        if UPCAST:
            qk = _dot(q16.to(tl.float32), tl.trans(_codes_f16(k_codes, ASM).to(tl.float32)), UPCAST, IEEE)
        else:
            qk = _dot(q16, tl.trans(_codes_f16(k_codes, ASM)), UPCAST, IEEE)
        s = (qk * score_scale) * k_scale[None, :] + (q_sum * scale_log2)[:, None] * k_min[None, :]
        p, alpha, m_new, l_i = _softmax_step(s, in_range, m_i, l_i)
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
        _store_lse(part_lse_ptr + row, m_i, l_i, head_mask)
