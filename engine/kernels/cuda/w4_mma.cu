// W4A16 on the tensor cores with the int4 weights as the MMA's register operand: a few rows (M <= 32) with
// mma.sync, 33-128 rows with Hopper's warpgroup MMA (sm_90a builds), and the same layout dequantized to a
// dense 16-bit weight for more rows (engine/kernels/w4_mma.py owns the layout, the build, the launch choices
// and the torch reference; reports/examples/h200/kernel-lab-w4mma/ and kernel-lab-wgmma/ the measurements).
//
// y[M, N] = x[M, K] W[N, K]^T, W[n, k] = (q - z) * s per group of G inputs. The product is computed
// transposed, C[n, m] = W'[n, k] x^T[k, m], with mma.sync.m16n8k16: 16 output columns are the MMA's rows
// (operand A, from registers), up to 8 rows of x its columns (operand B). Each thread's 16-byte load holds
// its A fragments of one 16x16 tile for four k steps, a group's eight loads those of all four tiles (the
// weights are repacked once, so no shuffle is needed): one LOP3 per two weights puts a code pair into a bf16
// pair as (128 + q) (the code lands in the mantissa), one shift per pair picks the nibble, and the MMA
// multiplies. Up to 16 rows the zero and scale are applied once
// per group in fp32: out += s * (sum_k x (128 + q) - (128 + z) * sum_k x), the sum of x coming from one more
// MMA against an all-ones A; about 1.4 instructions per weight in the loop (sm_90 SASS). 17-32 rows
// dequantize each pair in bf16 once and feed it to four MMAs. Activations are bf16; scales fp16 or bf16. The
// few-row kernel can end a gated MLP's gate_up with silu(gate) * up (`gated`: the weight in w4_mma.gate_up_order).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace w4mma {

constexpr uint32_t MAGIC = 0x43004300u;  // bf16 pair (128, 128): OR-ed with a code pair, (128 + q) each
constexpr uint32_t ONE = 0x3F803F80u;    // bf16 pair (1, 1)
constexpr uint32_t LOW = 0x000F000Fu;    // the nibbles at bits 0-3 and 16-19
constexpr float BIAS = 128.f;

__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // (a & b) | c
  return d;
}

__device__ __forceinline__ void mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                    uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// A group's (scale, zero) word: the scale's 16 bits (bf16 or fp16) low, the zero as a bf16 high.
template <bool SBF16>
__device__ __forceinline__ float scale_of(uint32_t w) {
  if constexpr (SBF16) return __uint_as_float(w << 16);
  else return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xFFFFu)));
}
__device__ __forceinline__ float zero_of(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }

// Programmatic dependent launch (Hopper; the host launches with it where the GPU has it): a kernel may start
// while the kernel before it in the stream finishes, so it loads its weights (which no kernel writes) first and
// waits here before it reads x or writes anything; once its main loop is done it lets the next kernel start.
// Without the launch attribute (or below sm_90) both are no-ops.
__device__ __forceinline__ void wait_for_producer() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// x is the kernel before's output, and under programmatic dependent launch that kernel may still be running
// when this one starts: a plain coherent load, which the compiler keeps after wait_for_producer's memory
// clobber. (__ldg's read-only path counts as invariant and was hoisted above the wait: NaN from a poisoned x
// in tests/kernels/test_w4_mma.py's early-launch test.) x is not __restrict__ in the kernel for the same reason.
__device__ __forceinline__ uint32_t load_x(const uint32_t* p) { return *p; }

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}


// The word of tile j at k step kk of a group's KS 16-byte loads: load 4 q + j holds tile j's k steps 4 q .. 4 q + 3.
template <int KS>
__device__ __forceinline__ uint32_t word_of(const uint4 (&w)[KS], int kk, int j) {
  const uint4 v = w[(kk >> 2) * 4 + j];
  const int c = kk & 3;
  return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
}

// One group of one warp: its KS 16-byte weight words (already loaded), the x fragments, the MMAs, and the
// group's zero and scale folded into res in fp32.
template <bool SBF16, int MT, int KS>
__device__ __forceinline__ void group_step(float (&res)[4][MT][4], const uint4 (&w)[KS], const uint2 (&zs)[4],
                                           const uint32_t* const (&xg)[MT], uint32_t one) {
  float acc[4][MT][4], xs[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      xs[mt][c] = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[j][mt][c] = 0.f;
    }
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    uint32_t b0[MT], b1[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {  // x[m][k0 + 2t, +1] and x[m][k0 + 2t + 8, +9]
      b0[mt] = load_x(xg[mt] + kk * 8);
      b1[mt] = load_x(xg[mt] + kk * 8 + 4);
      mma(xs[mt], one, one, one, one, b0[mt], b1[mt]);  // the group's sum of x, per batch row
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t word = word_of<KS>(w, kk, j);
      const uint32_t a0 = and_or(word, LOW, MAGIC), a1 = and_or(word >> 4, LOW, MAGIC);
      const uint32_t a2 = and_or(word >> 8, LOW, MAGIC), a3 = and_or(word >> 12, LOW, MAGIC);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma(acc[j][mt], a0, a1, a2, a3, b0[mt], b1[mt]);
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float s0 = scale_of<SBF16>(zs[j].x), z0 = zero_of(zs[j].x) + BIAS;
    const float s1 = scale_of<SBF16>(zs[j].y), z1 = zero_of(zs[j].y) + BIAS;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {  // c0, c1: row g, batch rows 2t, 2t + 1; c2, c3: row g + 8
      res[j][mt][0] = fmaf(s0, fmaf(-z0, xs[mt][0], acc[j][mt][0]), res[j][mt][0]);
      res[j][mt][1] = fmaf(s0, fmaf(-z0, xs[mt][1], acc[j][mt][1]), res[j][mt][1]);
      res[j][mt][2] = fmaf(s1, fmaf(-z1, xs[mt][0], acc[j][mt][2]), res[j][mt][2]);
      res[j][mt][3] = fmaf(s1, fmaf(-z1, xs[mt][1], acc[j][mt][3]), res[j][mt][3]);
    }
  }
}

// The same group for many rows (MT > 2): each weight pair dequantized once in bf16, (128 + q) - (128 + z)
// exact, times s rounded once, as the reference's dequantized weight, then MT MMAs accumulate straight into res
// (no per-group sums: their registers are what many rows cannot afford).
// sub / mul.rn.bf16x2 need sm_90; before it (Ampere, Ada: the 24 GB cards) the same single rounding is an FMA:
// a - b = fma(b, -1, a), a * b = fma(a, b, -0).
__device__ __forceinline__ uint32_t bf16x2_sub(uint32_t a, uint32_t b) {
  uint32_t d;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(b), "r"(0xBF80BF80u), "r"(a));
#else
  asm("sub.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
#endif
  return d;
}
__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  uint32_t d;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
#else
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
#endif
  return d;
}
__device__ __forceinline__ uint32_t bf16x2_of(float v) {
  __nv_bfloat162 h = __floats2bfloat162_rn(v, v);
  return *reinterpret_cast<uint32_t*>(&h);
}

// The 17-128-row paths' dequantization, in bf16 as the torch reference: a group's (zero, scale) word of rows g
// and g + 8 as bf16 pairs (128 + z, s), then each pair of codes (128 + q) - (128 + z), exact, times s rounded
// once, into an MMA A fragment (a0, a2: row g; a1, a3: row g + 8).
template <bool SBF16>
__device__ __forceinline__ void direct_zero_scale(uint2 zs, uint32_t (&zp)[2], uint32_t (&sp)[2]) {
  zp[0] = bf16x2_of(zero_of(zs.x) + BIAS);
  zp[1] = bf16x2_of(zero_of(zs.y) + BIAS);
  sp[0] = SBF16 ? __byte_perm(zs.x, 0, 0x1010) : bf16x2_of(scale_of<SBF16>(zs.x));
  sp[1] = SBF16 ? __byte_perm(zs.y, 0, 0x1010) : bf16x2_of(scale_of<SBF16>(zs.y));
}
__device__ __forceinline__ void direct_fragment(uint32_t word, const uint32_t (&zp)[2], const uint32_t (&sp)[2],
                                                uint32_t (&a)[4]) {
  a[0] = bf16x2_mul(bf16x2_sub(and_or(word, LOW, MAGIC), zp[0]), sp[0]);
  a[1] = bf16x2_mul(bf16x2_sub(and_or(word >> 4, LOW, MAGIC), zp[1]), sp[1]);
  a[2] = bf16x2_mul(bf16x2_sub(and_or(word >> 8, LOW, MAGIC), zp[0]), sp[0]);
  a[3] = bf16x2_mul(bf16x2_sub(and_or(word >> 12, LOW, MAGIC), zp[1]), sp[1]);
}

// int8 codes q (two's complement) at bits 0-7 and 16-23 of w -> the bf16 pair (q, q), exactly: the low seven bits
// l in the mantissa of 128 give 128 + l, the sign bit s in that of 128 gives 128 + 128 s, and q = l - 128 s; two
// LOP3 and one packed subtract a pair.
__device__ __forceinline__ uint32_t i8_pair(uint32_t w) {
  return bf16x2_sub(and_or(w, 0x007F007Fu, MAGIC), and_or(w, 0x00800080u, MAGIC));
}
// One k step's A fragment from its two int8 words (w8_mma.py's layout: byte 2 e + h of word r is row g + 8 h,
// k 8 r + 2 t + e): a0, a1 rows g, g + 8 at k 2t, 2t + 1; a2, a3 the same at k + 8.
__device__ __forceinline__ void i8_fragment(uint32_t w0, uint32_t w1, uint32_t (&a)[4]) {
  a[0] = i8_pair(w0);
  a[1] = i8_pair(w0 >> 8);
  a[2] = i8_pair(w1);
  a[3] = i8_pair(w1 >> 8);
}

// The B fragments of k step kk for each 8-row tile of x: x[m][k0 + 2t, +1] and x[m][k0 + 2t + 8, +9].
template <int MT>
__device__ __forceinline__ void x_fragments(const uint32_t* const (&xg)[MT], int kk, uint32_t (&b0)[MT],
                                            uint32_t (&b1)[MT]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    b0[mt] = load_x(xg[mt] + kk * 8);
    b1[mt] = load_x(xg[mt] + kk * 8 + 4);
  }
}

template <bool SBF16, int MT, int KS>
__device__ __forceinline__ void group_step_direct(float (&res)[4][MT][4], const uint4 (&w)[KS], const uint2 (&zs)[4],
                                                  const uint32_t* const (&xg)[MT]) {
  uint32_t zp[4][2], sp[4][2];
#pragma unroll
  for (int j = 0; j < 4; ++j) direct_zero_scale<SBF16>(zs[j], zp[j], sp[j]);
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    uint32_t b0[MT], b1[MT];
    x_fragments<MT>(xg, kk, b0, b1);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t a[4];
      direct_fragment(word_of<KS>(w, kk, j), zp[j], sp[j], a);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma(res[j][mt], a[0], a[1], a[2], a[3], b0[mt], b1[mt]);
    }
  }
}

// An int8 group (w8_mma.py's layout: load 4 d + j holds tile j's k steps 2 d, 2 d + 1): exact codes into the MMAs,
// the column scale waits for the epilogue.
template <int MT>
__device__ __forceinline__ void group_step_i8(float (&res)[4][MT][4], const uint4 (&w)[16],
                                              const uint32_t* const (&xg)[MT]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    uint32_t b0[MT], b1[MT];
    x_fragments<MT>(xg, kk, b0, b1);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint4 v = w[(kk >> 1) * 4 + j];
      uint32_t a[4];
      if (kk & 1) i8_fragment(v.z, v.w, a);
      else i8_fragment(v.x, v.y, a);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma(res[j][mt], a[0], a[1], a[2], a[3], b0[mt], b1[mt]);
    }
  }
}

template <bool SBF16, int MT, int KS, bool I8>
__device__ __forceinline__ void step(float (&res)[4][MT][4], const uint4 (&w)[KS], const uint2 (&zs)[4],
                                     const uint32_t* const (&xg)[MT], uint32_t one) {
  if constexpr (I8) group_step_i8<MT>(res, w, xg);
  else if constexpr (MT > 2) group_step_direct<SBF16, MT, KS>(res, w, zs, xg);
  else group_step<SBF16, MT, KS>(res, w, zs, xg, one);
}

template <int KS, bool I8>
__device__ __forceinline__ void load_group(uint4 (&w)[KS], uint2 (&zs)[4], const uint4* wq, const uint2* sq) {
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) w[kk] = load_stream(wq + kk * 32);
  if constexpr (!I8) {
#pragma unroll
    for (int j = 0; j < 4; ++j) zs[j] = __ldg(sq + j * 8);
  }
}

// The gated MLP's activation on one output column (the fused gate_up epilogue): gate and up rounded to bf16 as
// the unfused linear writes them, silu in fp32 rounded to bf16, times up in fp32, rounded once (the rounding of
// engine/kernels/activation.py and of torch's F.silu(gate) * up in bf16).
__device__ __forceinline__ __nv_bfloat16 silu_mul(float gate, float up) {
  const float g = __bfloat162float(__float2bfloat16(gate)), u = __bfloat162float(__float2bfloat16(up));
  const float silu = __bfloat162float(__float2bfloat16(g / (1.f + __expf(-g))));
  return __float2bfloat16(silu * u);
}

// Split-K's end, once every thread of the block has stored its fp32 partials of rows [row0, row0 + rows) x
// columns [n0, n0 + COLS) at part[split][row][col]: the block that arrives last at its tile's counter sums the
// splits' partials in split order (deterministic; eight loads in flight, summed pairwise), adds the bias,
// writes bf16 and puts the counter back to 0 for the next launch. GATED (COLS = 64, a stripe of the interleaved
// gate_up layout: 32 gate columns, then their 32 up columns): writes silu(gate) * up into out [M, N / 2].
template <int COLS, bool GATED = false>
__device__ __forceinline__ void sum_splits_if_last(const float* __restrict__ part, int* __restrict__ counter,
                                                   int splits, int M, int N, int row0, int rows, int n0,
                                                   const __nv_bfloat16* __restrict__ bias,
                                                   __nv_bfloat16* __restrict__ out) {
  static_assert(!GATED || COLS == 64, "the gated epilogue takes one 64-column stripe");
  __threadfence();
  __syncthreads();
  __shared__ int last;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const size_t stride = static_cast<size_t>(M) * N;
  auto total = [&](int r, int col) {
    const float* p = part + static_cast<size_t>(row0 + r) * N + n0 + col;
    float v = 0.f;
    for (int s0 = 0; s0 < splits; s0 += 8) {
      float u[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) u[q] = s0 + q < splits ? __ldcg(p + (s0 + q) * stride) : 0.f;
      v += ((u[0] + u[1]) + (u[2] + u[3])) + ((u[4] + u[5]) + (u[6] + u[7]));
    }
    if (bias) v += __bfloat162float(bias[n0 + col]);
    return v;
  };
  constexpr int OUT_COLS = GATED ? COLS / 2 : COLS;
  for (int i = threadIdx.x; i < rows * OUT_COLS; i += blockDim.x) {
    const int r = i / OUT_COLS, col = i % OUT_COLS;
    if constexpr (GATED)
      out[static_cast<size_t>(row0 + r) * (N / 2) + n0 / 2 + col] = silu_mul(total(r, col), total(r, col + 32));
    else
      out[static_cast<size_t>(row0 + r) * N + n0 + col] = __float2bfloat16(total(r, col));
  }
  if (threadIdx.x == 0) *counter = 0;
}

// Grid (N / 64, splits); NW warps a block, all on one stripe of 64 output columns, each taking every NW-th
// group of the block's K range, two groups an iteration (one computes while the other's loads fly). qw:
// [N/64][K/64][4 tiles][32 lanes] uint4 (a group's load 4 q + j: tile j, k steps 4 q .. 4 q + 3); sz:
// [N/64][K/G][4 tiles][8] uint2 (rows g and g + 8 of a tile). Batch rows past M read row M - 1 (their outputs
// are never stored). With splits > 1 each block writes fp32 partials [S][M][N] and the last block of a stripe
// to arrive sums them in split order (deterministic) and puts its counter back to 0.
// I8 (KS = 16): int8 weights in w8_mma.py's layout, one fp32 scale an output column (cscale) applied to the sums;
// sz unused. Otherwise int4 groups (KS = 8), cscale unused.
// gated: the weight is the gated MLP's gate_up in the interleaved layout (w4_mma.gate_up_order: each stripe
// 32 gate columns, then the same 32 up columns) and out is [M, N / 2]: silu(gate) * up, one kernel less a layer.
template <bool SBF16, int MT, int KS, int NW, int MINB, bool PIPE, bool I8 = false>
__global__ void __launch_bounds__(NW * 32, MINB) w4_mma_kernel(
    const __nv_bfloat16* x, int64_t ldx, const uint4* __restrict__ qw, const uint2* __restrict__ sz,
    const float* __restrict__ cscale, const __nv_bfloat16* __restrict__ bias, __nv_bfloat16* __restrict__ out,
    float* __restrict__ part,
    int* __restrict__ locks,
    int M, int N, int K, int groups_per_split, bool gated) {
  const int stripe = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int groups = K / 128;
  const int g0 = split * groups_per_split, g1 = min(groups, g0 + groups_per_split);
  int gi = g0 + warp;
  const uint4* wq = qw + (static_cast<size_t>(stripe) * groups + gi) * KS * 32 + lane;
  const uint2* sq = sz + (static_cast<size_t>(stripe) * groups + gi) * 32 + g;
  const uint32_t* xg[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    xg[mt] = reinterpret_cast<const uint32_t*>(x + min(mt * 8 + g, M - 1) * ldx) + t + gi * 64;
  constexpr size_t W_STEP = static_cast<size_t>(NW) * KS * 32, S_STEP = static_cast<size_t>(NW) * 32;
  constexpr int X_STEP = NW * 64;  // a group is 128 k: 64 bf16 pairs
  uint32_t one;  // a register, not an immediate the compiler would rematerialize before every MMA
  asm volatile("mov.b32 %0, %1;" : "=r"(one) : "n"(ONE));

  float res[4][MT][4];
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int c = 0; c < 4; ++c) res[j][mt][c] = 0.f;

  uint4 wa[KS], wb[KS];
  uint2 za[4], zb[4];
  // The first group's weights are loaded before x is ready (wait_for_producer); every thread waits before it
  // reads x or writes anything, those without a group too.
  if constexpr (!PIPE) {  // one group's loads at a time: fewer registers, more warps to hide the latency
    for (; gi < g1; gi += NW, wq += W_STEP, sq += S_STEP) {
      load_group<KS, I8>(wa, za, wq, sq);
      if (gi < g0 + NW) wait_for_producer();
      step<SBF16, MT, KS, I8>(res, wa, za, xg, one);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) xg[mt] += X_STEP;
    }
  } else if (gi < g1) {
    load_group<KS, I8>(wa, za, wq, sq);
  }
  wait_for_producer();  // after the first wait: returns at once
  while (PIPE && gi < g1) {
    const bool second = gi + NW < g1;
    if (second) load_group<KS, I8>(wb, zb, wq + W_STEP, sq + S_STEP);
    step<SBF16, MT, KS, I8>(res, wa, za, xg, one);
    if (!second) break;
    const bool third = gi + 2 * NW < g1;
    if (third) load_group<KS, I8>(wa, za, wq + 2 * W_STEP, sq + 2 * S_STEP);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) xg[mt] += X_STEP;
    step<SBF16, MT, KS, I8>(res, wb, zb, xg, one);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) xg[mt] += X_STEP;
    gi += 2 * NW;
    wq += 2 * W_STEP;
    sq += 2 * S_STEP;
  }
  allow_dependents();

  // The block's warps summed in warp order through shared memory, RR batch rows at a time (a [NW][64][64]
  // array for MT = 8 would pass the 48 KB static limit); written as the output or as this split's partials.
  constexpr int RR = MT * 8 > 128 / NW ? 128 / NW : MT * 8;
  __shared__ float red[NW][RR][64];
  const int n0 = stripe * 64;
#pragma unroll
  for (int r0 = 0; r0 < MT * 8; r0 += RR) {
    if (r0 >= M) break;
    if (r0) __syncthreads();  // the previous rows read
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int m = mt * 8 + 2 * t + (c & 1);
          if (m >= r0 && m < r0 + RR && m < M) red[warp][m - r0][16 * j + g + 8 * (c >> 1)] = res[j][mt][c];
        }
    __syncthreads();
    const int rows = min(RR, M - r0);
    auto column = [&](int m, int nl) {  // the warps' sums of one output, in warp order
      float v = 0.f;
#pragma unroll
      for (int w2 = 0; w2 < NW; ++w2) v += red[w2][m][nl];
      if constexpr (I8) v *= cscale[n0 + nl];  // before the split-K sum, as the warpgroup kernel
      return v;
    };
    auto biased = [&](float v, int nl) { return bias ? v + __bfloat162float(bias[n0 + nl]) : v; };
    if (splits == 1 && gated) {
      for (int i = threadIdx.x; i < rows * 32; i += NW * 32) {
        const int m = i >> 5, nl = i & 31;
        out[static_cast<size_t>(r0 + m) * (N / 2) + n0 / 2 + nl] =
            silu_mul(biased(column(m, nl), nl), biased(column(m, nl + 32), nl + 32));
      }
      continue;
    }
    for (int i = threadIdx.x; i < rows * 64; i += NW * 32) {
      const int m = i >> 6, nl = i & 63;
      const float v = column(m, nl);
      if (splits == 1) out[static_cast<size_t>(r0 + m) * N + n0 + nl] = __float2bfloat16(biased(v, nl));
      else __stcg(part + (static_cast<size_t>(split) * M + r0 + m) * N + n0 + nl, v);
    }
  }
  if (splits > 1) {
    if (gated) sum_splits_if_last<64, true>(part, locks + stripe, splits, M, N, 0, M, n0, bias, out);
    else sum_splits_if_last<64>(part, locks + stripe, splits, M, N, 0, M, n0, bias, out);
  }
}

// ---- 33-128 rows on Hopper's warpgroup MMA (sm_90a; reports/examples/h200/kernel-lab-wgmma/): wgmma.m64nBNk16
// with the weights as operand A from registers and a BN-row tile of x as operand B in shared memory. A block is
// NWG x KWG warpgroups: NWG side by side on SP stripes each, KWG on alternate groups of the same stripes (narrow
// layers: more warps an SM to hide the dequantization's latency without more blocks or a split-K reduction;
// their sums meet in the epilogue, added in warpgroup order). Warp w of a warpgroup dequantizes tile w of each
// stripe (its 16-byte words are exactly that tile's fragments for four k steps) in bf16 as the 17-32-row path
// does, and
// one wgmma per stripe and k step multiplies all 64 of the stripe's columns by the BN rows. Every group (128 k)
// of x, weight words and (scale, zero) words is copied with cp.async: x XPRE groups ahead of the MMAs into
// XPRE + 2 buffers (a group's MMAs run while the next group is dequantized: wgmma.wait_group 1, the A
// registers alternating between two sets), the weights WPRE ahead into WPRE + 1 (read into registers at the
// start of a group; a block step is KWG groups); x in the 128-byte-swizzled K-major layout wgmma reads (two
// 64-k atoms a group of BN rows x 128 bytes; 16-byte chunk c of row r at c ^ (r % 8)), rows past M zero-filled.
// Grid (N / (64 SP NWG), splits, row tiles); split-K partials are summed by the last block to arrive, as in
// w4_mma_kernel. The host keeps each split's group count a multiple of KWG.
// I8: int8 weights (W8A16, one scale an output column) instead of int4 groups: a group's words of a stripe are
// twice as many (8 KB) and carry no (scale, zero) words, so half as many groups are prefetched (about the same
// bytes in flight); a block of two warpgroups side by side then takes 113 KB, one too many for two an SM (lab 10:
// w8_mma.py picks one warpgroup a block up to 64 rows).
template <int BN, int SP, int NWG, int KWG, bool I8 = false>
struct WgLayout {
  static constexpr int THREADS = 128 * NWG * KWG, XPRE = 2, XSTAGES = XPRE + 2, WPRE = I8 ? 2 : 4,
                       WSTAGES = WPRE + 1;
  static constexpr uint32_t ATOM = BN * 128, X = KWG * 2 * ATOM;  // a multiple of 1024: x atoms stay aligned
  static constexpr uint32_t WG = I8 ? SP * 8192 : SP * 4096 + SP * 256;  // a warpgroup's weight words, then
                                                                          // its (scale, zero) words (int4)
  static constexpr uint32_t W = NWG * KWG * WG;
  static constexpr int SMEM = XSTAGES * X + WSTAGES * W + 1024;
  static constexpr int COLS = 64 * SP * NWG, PITCH = COLS + 4;  // the epilogue's fp32 tile, in the buffers
  static_assert(BN * PITCH * 4 <= XSTAGES * X + WSTAGES * W, "the output tile fits in the copy buffers");
  static_assert(SMEM <= 227 * 1024, "the copy buffers fit an SM's shared memory");
};

// cp.async (sm_80+): the warpgroup kernel's copies.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
__device__ __forceinline__ uint4 lds128(uint32_t a) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a));
  return v;
}
__device__ __forceinline__ uint2 lds64(uint32_t a) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(a));
  return v;
}

#if defined(W4MMA_SM90A) && defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define W4MMA_WGMMA_BODY 1
__device__ __forceinline__ uint64_t wg_desc(uint32_t smem_addr) {
  // K-major operand, 128-byte swizzle: start address >> 4, leading offset 16 bytes (unused for this layout),
  // stride 1024 bytes between groups of 8 rows, layout type 1 (SWIZZLE_128B) in bits 62-63.
  return (static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4)) | (static_cast<uint64_t>(1) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (static_cast<uint64_t>(1) << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

template <int BN>
__device__ __forceinline__ void wg_keep(float (&d)[BN / 2]) {  // the accumulators stay put across the async MMAs
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

template <int BN>
__device__ __forceinline__ void wgmma_rs(float (&d)[BN / 2], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint64_t desc);

template <>
__device__ __forceinline__ void wgmma_rs<64>(float (&d)[32], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc));
}

template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&d)[64], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc));
}

#endif

// I8: int8 weights in w8_mma.py's layout (qw), one fp32 scale an output column (cscale) applied to the sums;
// sz unused. Otherwise int4 groups (qw, sz), cscale unused.
template <bool SBF16, int BN, int SP, int NWG, int KWG, bool I8 = false>
__global__ void __launch_bounds__(128 * NWG * KWG, BN == 64 && SP == 1 && NWG == 2 && KWG == 1 ? 2 : 1)
w4_wgmma_kernel(
    const __nv_bfloat16* __restrict__ x, int64_t ldx, const uint4* __restrict__ qw, const uint2* __restrict__ sz,
    const float* __restrict__ cscale, const __nv_bfloat16* __restrict__ bias, __nv_bfloat16* __restrict__ out,
    float* __restrict__ part, int* __restrict__ locks, int M, int N, int K, int groups_per_split) {
#ifdef W4MMA_WGMMA_BODY
  using L = WgLayout<BN, SP, NWG, KWG, I8>;
  extern __shared__ uint8_t wg_smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(wg_smem_raw));
  const uint32_t base = (raw + 1023) & ~1023u;  // swizzle atoms start on 1024-byte boundaries
  uint8_t* const smem = wg_smem_raw + (base - raw);
  const uint32_t xbase = base, wbase = base + L::XSTAGES * L::X;

  const int split = blockIdx.y, splits = gridDim.y, row0 = blockIdx.z * BN;
  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3;
  // this warpgroup's stripes and its group within a block step (constants 0 where a direction has one)
  const int wn = NWG == 1 ? 0 : wg % NWG, wk = KWG == 1 ? 0 : wg / NWG;
  // a group's 16-byte units of a stripe's tile a lane: int4 two k quads (64 k each), int8 four k duos (32 k)
  constexpr int UPG = I8 ? 4 : 2;
  const int groups = K / 128, units = K / (128 / UPG);
  const int g0 = split * groups_per_split, g1 = min(groups, g0 + groups_per_split);
  const int stripe0 = (blockIdx.x * NWG + wn) * SP;  // this warpgroup's first stripe

  // Copy addresses, fixed but for the step: x chunk `tid % CH` (16 a group) of rows tid / CH + XR i
  // (i < BN / XR); the weight words of tile `warp`, k quads 2 gi, 2 gi + 1 of group gi = g0 + KWG step + wk;
  // 16 bytes of that group's (scale, zero) words.
  constexpr int CH = 16 * KWG, XR = L::THREADS / CH;
  const int xr = threadIdx.x / CH, chunk = threadIdx.x % CH;  // unsigned: shifts and masks
  const __nv_bfloat16* xsrc = x + static_cast<int64_t>(row0 + xr) * ldx + chunk * 8 + g0 * 128;
  const uint32_t xdst = (chunk >> 3) * L::ATOM + xr * 128 + (((chunk & 7) ^ (xr & 7)) << 4);
  const uint4* wsrc[SP];
#pragma unroll
  for (int sp = 0; sp < SP; ++sp)
    wsrc[sp] = qw + ((static_cast<size_t>(stripe0 + sp) * units + UPG * (g0 + wk)) * 4 + warp) * 32 + lane;
  const uint32_t wdst = wg * L::WG + warp * 512 + lane * 16;
  const bool zcopy = !I8 && (tid & 127) < 16 * SP;
  const uint8_t* zsrc = reinterpret_cast<const uint8_t*>(
      sz + (static_cast<size_t>(stripe0 + ((tid & 127) >> 4)) * groups + g0 + wk) * 32) + (tid & 15) * 16;
  const uint32_t zdst = wg * L::WG + SP * 4096 + (tid & 127) * 16;

  const int xrows = (M - row0 - xr + XR - 1) / XR;  // this thread's copies i < xrows are rows below M
  const int64_t xstride = XR * ldx;
  auto copy_x = [&](int stage, int step) {  // groups g0 + KWG step ..; one 64-bit add a chunk, no multiplies
    uint32_t d = xbase + stage * L::X + xdst;
    const __nv_bfloat16* p = xsrc + step * (128 * KWG);
#pragma unroll
    for (int i = 0; i < BN / XR; ++i, p += xstride, d += XR * 128) cp_async16(d, i < xrows ? p : x, i < xrows ? 16 : 0);
  };
  auto copy_w = [&](int stage, int step) {
    const uint32_t sb = wbase + stage * L::W;
#pragma unroll
    for (int sp = 0; sp < SP; ++sp)
#pragma unroll
      for (int q = 0; q < UPG; ++q)
        cp_async16(sb + wdst + (sp * UPG + q) * 2048, wsrc[sp] + step * (128 * UPG * KWG) + q * 128, 16);
    if (zcopy) cp_async16(sb + zdst, zsrc + step * (256 * KWG), 16);
  };

  float acc[SP][BN / 2];
#pragma unroll
  for (int sp = 0; sp < SP; ++sp)
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[sp][i] = 0.f;

  // Prologue: the weights of steps 0 .. WPRE - 1, x of 0 .. XPRE - 1 in the last XPRE of those commit groups,
  // so that before step j's MMAs `cp.async.wait_group XPRE - 1` means: its x and weights have landed.
  const int steps = (g1 - g0) / KWG;
#pragma unroll
  for (int s = 0; s < L::WPRE; ++s) {
    if (s < steps) copy_w(s, s);
    const int xs = s - (L::WPRE - L::XPRE);
    if (xs == 0) wait_for_producer();  // the first weights are on their way; x is the kernel before's output
    if (xs >= 0 && xs < steps) copy_x(xs, xs);
    cp_commit();
  }
  // One group: its A registers are `a` (two sets, alternating: the MMAs of group it - 1 may still read the other).
  auto step = [&](int it, uint32_t (&a)[SP][8][4]) {
    cp_wait<L::XPRE - 1>();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // cp.async writes -> wgmma's reads
    __syncthreads();  // everyone's landed; x's refilled buffer was read by group it - 2's MMAs, done
    if (it + L::WPRE < steps) copy_w((it + L::WPRE) % L::WSTAGES, it + L::WPRE);
    if (it + L::XPRE < steps) copy_x((it + L::XPRE) % L::XSTAGES, it + L::XPRE);
    cp_commit();
    const uint32_t xs = xbase + (it % L::XSTAGES) * L::X + wk * 2 * L::ATOM;
    const uint32_t ws = wbase + (it % L::WSTAGES) * L::W + wg * L::WG;
#pragma unroll
    for (int sp = 0; sp < SP; ++sp) {
      if constexpr (I8) {  // unit q: k steps 2 q, 2 q + 1
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const uint4 v = lds128(ws + (sp * 4 + q) * 2048 + warp * 512 + lane * 16);
          i8_fragment(v.x, v.y, a[sp][2 * q]);
          i8_fragment(v.z, v.w, a[sp][2 * q + 1]);
        }
      } else {
        uint32_t zp[2], scl[2];
        direct_zero_scale<SBF16>(lds64(ws + SP * 4096 + sp * 256 + (warp * 8 + g) * 8), zp, scl);
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const uint4 v = lds128(ws + (sp * 2 + q) * 2048 + warp * 512 + lane * 16);
          const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
          for (int c = 0; c < 4; ++c) direct_fragment(words[c], zp, scl, a[sp][4 * q + c]);
        }
      }
    }
    wg_fence();  // the group's eight k steps dequantized: one fence, then the MMAs back to back
#pragma unroll
    for (int sp = 0; sp < SP; ++sp)
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)  // k step kk: atom kk / 4, 32 bytes a k step
        wgmma_rs<BN>(acc[sp], a[sp][kk][0], a[sp][kk][1], a[sp][kk][2], a[sp][kk][3],
                     wg_desc(xs + (kk >> 2) * L::ATOM + (kk & 3) * 32));
    wg_commit();
    wg_wait<1>();  // group it - 1's MMAs are done: its A set may be written again
  };
  uint32_t a0[SP][8][4], a1[SP][8][4];
  int it = 0;
  for (; it + 1 < steps; it += 2) {
    step(it, a0);
    step(it + 1, a1);
  }
  if (it < steps) step(it, a0);
  wg_wait<0>();
  allow_dependents();
#pragma unroll
  for (int sp = 0; sp < SP; ++sp) wg_keep<BN>(acc[sp]);
  cp_wait<0>();
  __syncthreads();  // the copy buffers are free: the block's [BN][COLS] fp32 tile goes there

  // accumulator i = 4 nb + c: column 16 warp + g + 8 (c >> 1) of the stripe, row 8 nb + 2 t + (c & 1)
  constexpr int COLS = L::COLS, PITCH = L::PITCH;
  float* const tile = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int k = 0; k < KWG; ++k) {  // the K warpgroups' sums added in warpgroup order (deterministic)
    if (wk == k) {
#pragma unroll
      for (int sp = 0; sp < SP; ++sp)
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) {
          const int nb = i >> 2, c = i & 3;
          float& v = tile[(8 * nb + 2 * t + (c & 1)) * PITCH + 64 * (wn * SP + sp) + 16 * warp + g + 8 * (c >> 1)];
          v = k == 0 ? acc[sp][i] : v + acc[sp][i];
        }
    }
    __syncthreads();
  }
  const int rows = min(BN, M - row0), n0 = blockIdx.x * COLS;
  for (int i = tid; i < rows * COLS; i += L::THREADS) {
    const int r = i / COLS, col = i % COLS;
    float v = tile[r * PITCH + col];
    if constexpr (I8) v *= cscale[n0 + col];  // before the split-K sum: each split's partials scaled alike
    if (splits == 1) {
      if (bias) v += __bfloat162float(bias[n0 + col]);
      out[static_cast<size_t>(row0 + r) * N + n0 + col] = __float2bfloat16(v);
    } else {
      __stcg(part + (static_cast<size_t>(split) * M + row0 + r) * N + n0 + col, v);
    }
  }
  const int lock = blockIdx.z * gridDim.x + blockIdx.x;
  if (splits > 1) sum_splits_if_last<COLS>(part, locks + lock, splits, M, N, row0, rows, n0, bias, out);
#endif
}

// W[n0 + r, k] for the stripes [stripe0, stripe0 + gridDim.x) as a dense [rows, K] 16-bit matrix:
// (q - z) * s in fp32, one rounding, as the torch reference dequantizes. A block is one stripe (64 rows) and
// DQ_STEPS k steps (128 columns); warp w unpacks tile w % 4 of k quad w / 4 (one 16-byte load) into shared
// memory, then the block writes whole 256-byte row segments. (Written straight from the fragments, each warp
// store hit 8 rows x 16 bytes, and the kernel took twice as long as the Triton dequantize of the AWQ layout.)
constexpr int DQ_STEPS = 8, DQ_COLS = 16 * DQ_STEPS, DQ_PITCH = DQ_COLS + 8;  // +8: rows g land on distinct banks

template <bool SBF16>
__global__ void __launch_bounds__(32 * DQ_STEPS) w4_dequant_kernel(
    const uint4* __restrict__ qw, const uint2* __restrict__ sz, __nv_bfloat16* __restrict__ w, int K, int G,
    int stripe0) {
  __shared__ __align__(16) __nv_bfloat16 tile[64 * DQ_PITCH];
  const int quads = K / 64, s = stripe0 + blockIdx.x, sl = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int q = warp >> 2, j = warp & 3, kq = blockIdx.y * (DQ_STEPS / 4) + q;  // warp: tile j of k quad kq
  if (kq < quads) {
    const int gi = kq * 64 / G;  // G is a multiple of 64: a quad lies in one group
    const uint4 v = qw[((static_cast<size_t>(s) * quads + kq) * 4 + j) * 32 + lane];
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
    const uint2 z = sz[(static_cast<size_t>(s) * (K / G) + gi) * 32 + j * 8 + g];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint32_t zw = h ? z.y : z.x;
      const float sc = scale_of<SBF16>(zw), zf = zero_of(zw);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        __nv_bfloat16* row = tile + (16 * j + 8 * h + g) * DQ_PITCH + (4 * q + c) * 16 + 2 * t;
#pragma unroll
        for (int a = 0; a < 2; ++a) {
          const float q0 = static_cast<float>((words[c] >> (8 * a + 4 * h)) & 0xF);
          const float q1 = static_cast<float>((words[c] >> (16 + 8 * a + 4 * h)) & 0xF);
          *reinterpret_cast<__nv_bfloat162*>(row + 8 * a) = __floats2bfloat162_rn((q0 - zf) * sc, (q1 - zf) * sc);
        }
      }
    }
  }
  __syncthreads();
  // 64 rows x 16 chunks of 8 columns (16 bytes); consecutive threads take consecutive chunks of a row
  const int col0 = blockIdx.y * DQ_COLS;
  constexpr int CHUNKS = DQ_COLS / 8;
  for (int c = threadIdx.x; c < 64 * CHUNKS; c += blockDim.x) {
    const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
    if (col0 + col < K)  // K is a multiple of 16: a chunk is wholly inside or outside
      *reinterpret_cast<uint4*>(w + static_cast<size_t>(sl * 64 + r) * K + col0 + col) =
          *reinterpret_cast<const uint4*>(tile + r * DQ_PITCH + col);
  }
}

}  // namespace w4mma

#ifdef W4MMA_TORCH_BINDING
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

namespace w4mma {

// Launches with programmatic dependent launch where the GPU has it (9.0+) and it is switched on (set_pdl: the
// lab's A / B); the kernels wait for the kernel before them before they read x (wait_for_producer).
static bool g_pdl = true;
void set_pdl(bool on) { g_pdl = on; }

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args... args) {
  static const bool hopper = [] {  // the process's first device decides (one GPU model a process)
    int major = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, c10::cuda::current_device()));
    return major >= 9;
  }();
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = hopper && g_pdl ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...));
}

// The variants the engine launches (lab 5's winners): few rows (MT <= 2) 8 warps two blocks an SM with one
// group's loads at a time, or pipelined 4 / 8-warp blocks; many rows (MT = 4) unpipelined 4 / 8-warp blocks.
// I8: int8 weights (w8_mma.py's layout) with fp32 column scales in sz's place.
template <bool SBF16, int MT, bool I8 = false>
void launch_t(const torch::Tensor& x, const torch::Tensor& qw, const torch::Tensor& sz,
              const c10::optional<torch::Tensor>& bias, torch::Tensor& out, torch::Tensor& part,
              torch::Tensor& locks, int splits, int warps, int min_blocks, bool pipe, int groups_per_split,
              bool gated = false) {
  using T = __nv_bfloat16;  // the only activation type (w4_mma.py checks)
  const int M = x.size(0), K = x.size(1), N = gated ? 2 * out.size(1) : out.size(1);  // N: the weight's
  dim3 grid(N / 64, splits);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const T* b = bias ? reinterpret_cast<const T*>(bias->data_ptr()) : nullptr;
#define W4MMA_GO(NW, MINB, PIPE)                                                                          \
  launch_kernel(w4_mma_kernel<SBF16, MT, I8 ? 16 : 8, NW, MINB, PIPE, I8>, grid, dim3(NW * 32), 0, stream,   \
      reinterpret_cast<const T*>(x.data_ptr()), x.stride(0), reinterpret_cast<const uint4*>(qw.data_ptr()), \
      I8 ? nullptr : reinterpret_cast<const uint2*>(sz.data_ptr()), I8 ? sz.data_ptr<float>() : nullptr, b,  \
      reinterpret_cast<T*>(out.data_ptr()),                                                                   \
      part.data_ptr<float>(), locks.data_ptr<int>(), M, N, K, groups_per_split, gated)
  if constexpr (I8) {  // a group's sixteen loads a thread: no second set in flight (registers)
    if (warps == 8 && min_blocks == 2 && !pipe && MT <= 2) W4MMA_GO(8, 2, false);
    else if (warps == 8 && min_blocks == 1 && !pipe) W4MMA_GO(8, 1, false);
    else if (warps == 4 && min_blocks == 1 && !pipe) W4MMA_GO(4, 1, false);
    else TORCH_CHECK(false, "w8_mma: (warps, min_blocks, pipe) (8, 2, 0) up to 16 rows, (8, 1, 0) or (4, 1, 0)");
  } else if constexpr (MT > 2) {
    if (warps == 4 && min_blocks == 1 && !pipe) W4MMA_GO(4, 1, false);
    else if (warps == 8 && min_blocks == 1 && !pipe) W4MMA_GO(8, 1, false);
    else TORCH_CHECK(false, "w4_mma: 17-32 rows run (warps, min_blocks, pipe) (4, 1, 0) or (8, 1, 0)");
  } else {
    if (warps == 8 && min_blocks == 2 && !pipe) W4MMA_GO(8, 2, false);
    else if (warps == 8 && min_blocks == 1 && pipe) W4MMA_GO(8, 1, true);
    else if (warps == 4 && min_blocks == 1 && pipe) W4MMA_GO(4, 1, true);
    else TORCH_CHECK(false, "w4_mma: up to 16 rows run (warps, min_blocks, pipe) (8, 2, 0), (8, 1, 1) or (4, 1, 1)");
  }
#undef W4MMA_GO
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Checked by the Python caller (engine/kernels/w4_mma.py): shapes, dtypes, devices, sizes of part / locks.
// gated: qw is a gate_up repacked in w4_mma.gate_up_order and out [M, N / 2] takes silu(gate) * up.
void w4_mma(torch::Tensor x, torch::Tensor qw, torch::Tensor sz, c10::optional<torch::Tensor> bias,
            torch::Tensor out, torch::Tensor part, torch::Tensor locks, int64_t group_size, bool scale_bf16,
            int64_t splits, int64_t warps, int64_t min_blocks, bool pipe, bool gated) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.size(0) >= 1 && x.size(0) <= 32, "w4_mma: x [M <= 32, K]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && group_size == 128, "w4_mma: bf16 x, group size 128");
  const int M = x.size(0), groups = x.size(1) / group_size;
  const int gps = (groups + splits - 1) / splits;
#define W4MMA_ROWS(SB)                                                                                      \
  if (M <= 8) launch_t<SB, 1>(x, qw, sz, bias, out, part, locks, splits, warps, min_blocks, pipe, gps, gated); \
  else if (M <= 16) launch_t<SB, 2>(x, qw, sz, bias, out, part, locks, splits, warps, min_blocks, pipe, gps,   \
                                    gated);                                                                   \
  else launch_t<SB, 4>(x, qw, sz, bias, out, part, locks, splits, warps, min_blocks, pipe, gps, gated);
  if (scale_bf16) { W4MMA_ROWS(true) } else { W4MMA_ROWS(false) }
#undef W4MMA_ROWS
}

// int8 weights (w8_mma.py's layout), fp32 column scales [N], up to 32 rows; checked by the Python caller too.
// gated: as w4_mma's (the rows of an int8 gate_up put in w4_mma.gate_up_order before the repack).
void w8_mma(torch::Tensor x, torch::Tensor qw, torch::Tensor scales, c10::optional<torch::Tensor> bias,
            torch::Tensor out, torch::Tensor part, torch::Tensor locks, int64_t splits, int64_t warps,
            int64_t min_blocks, bool pipe, bool gated) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.size(0) >= 1 && x.size(0) <= 32 && x.size(1) % 128 == 0,
              "w8_mma: x [M <= 32, K], K a multiple of 128");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && scales.scalar_type() == at::kFloat && scales.is_contiguous(),
              "w8_mma: bf16 x, fp32 scales");
  const int M = x.size(0), groups = x.size(1) / 128;
  const int gps = (groups + splits - 1) / splits;
#define W8MMA_ROWS(MT) \
  launch_t<false, MT, true>(x, qw, scales, bias, out, part, locks, splits, warps, min_blocks, pipe, gps, gated)
  if (M <= 8) W8MMA_ROWS(1);
  else if (M <= 16) W8MMA_ROWS(2);
  else W8MMA_ROWS(4);
#undef W8MMA_ROWS
}

// Many rows on the warpgroup MMA (sm_90a builds only: has_wgmma()): bn rows a block (64 or 128), sp stripes a
// warpgroup (1 or 2), nwg warpgroups a block side by side (1 or 2), kwg on alternate groups (1 or 2).
bool has_wgmma() {
#ifdef W4MMA_SM90A
  return true;
#else
  return false;
#endif
}

template <bool SBF16, int BN, int SP, int NWG, int KWG, bool I8 = false>
void wgmma_t(const torch::Tensor& x, const torch::Tensor& qw, const torch::Tensor& sz,
             const c10::optional<torch::Tensor>& bias, torch::Tensor& out, torch::Tensor& part, torch::Tensor& locks,
             int splits, int groups_per_split) {
  using T = __nv_bfloat16;
  using L = WgLayout<BN, SP, NWG, KWG, I8>;
  const int M = x.size(0), K = x.size(1), N = out.size(1);
  const dim3 grid(N / L::COLS, splits, (M + BN - 1) / BN);
  TORCH_CHECK(grid.x * grid.z <= locks.numel(), "w4_wgmma: more tiles than split counters");
  auto kernel = w4_wgmma_kernel<SBF16, BN, SP, NWG, KWG, I8>;
  static const bool sized = [&] {  // once per instantiation, before any CUDA graph capture
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L::SMEM));
    return true;
  }();
  (void)sized;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  launch_kernel(kernel, grid, dim3(L::THREADS), L::SMEM, stream,
      reinterpret_cast<const T*>(x.data_ptr()), x.stride(0), reinterpret_cast<const uint4*>(qw.data_ptr()),
      I8 ? nullptr : reinterpret_cast<const uint2*>(sz.data_ptr()), I8 ? sz.data_ptr<float>() : nullptr,
      bias ? reinterpret_cast<const T*>(bias->data_ptr()) : nullptr,
      reinterpret_cast<T*>(out.data_ptr()), part.data_ptr<float>(), locks.data_ptr<int>(), M, N, K,
      groups_per_split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void w4_wgmma(torch::Tensor x, torch::Tensor qw, torch::Tensor sz, c10::optional<torch::Tensor> bias,
              torch::Tensor out, torch::Tensor part, torch::Tensor locks, int64_t group_size, bool scale_bf16,
              int64_t splits, int64_t bn, int64_t sp, int64_t nwg, int64_t kwg) {
  TORCH_CHECK(has_wgmma(), "w4_wgmma: this build has no sm_90a code");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == at::kBFloat16 && group_size == 128,
              "w4_wgmma: bf16 x [M, K] with contiguous rows, group size 128");
  TORCH_CHECK(out.size(1) % (64 * sp * nwg) == 0, "w4_wgmma: N must divide by 64 * sp * nwg");
  const int groups = x.size(1) / group_size, gps = (groups + splits - 1) / splits;
  TORCH_CHECK(kwg == 1 || (groups % splits == 0 && gps % kwg == 0),
              "w4_wgmma: with kwg warpgroups on alternate groups, each split's groups must divide by kwg");
#define W4WG(SB, BN, SP, NWG, KWG) wgmma_t<SB, BN, SP, NWG, KWG>(x, qw, sz, bias, out, part, locks, splits, gps)
#define W4WG_SB(BN, SP, NWG, KWG) \
  if (scale_bf16) W4WG(true, BN, SP, NWG, KWG); else W4WG(false, BN, SP, NWG, KWG);
  if (bn == 64 && sp == 1 && nwg == 1 && kwg == 1) { W4WG_SB(64, 1, 1, 1) }
  else if (bn == 64 && sp == 1 && nwg == 2 && kwg == 1) { W4WG_SB(64, 1, 2, 1) }
  else if (bn == 64 && sp == 2 && nwg == 1 && kwg == 1) { W4WG_SB(64, 2, 1, 1) }
  else if (bn == 64 && sp == 2 && nwg == 2 && kwg == 1) { W4WG_SB(64, 2, 2, 1) }
  else if (bn == 128 && sp == 1 && nwg == 1 && kwg == 1) { W4WG_SB(128, 1, 1, 1) }
  else if (bn == 128 && sp == 1 && nwg == 2 && kwg == 1) { W4WG_SB(128, 1, 2, 1) }
  else if (bn == 64 && sp == 1 && nwg == 1 && kwg == 2) { W4WG_SB(64, 1, 1, 2) }
  else TORCH_CHECK(false, "w4_wgmma: (bn, sp, nwg, kwg) must be (64, 1 | 2, 1 | 2, 1), (128, 1, 1 | 2, 1) or "
                          "(64, 1, 1, 2)");
#undef W4WG_SB
#undef W4WG
}

// int8 weights (w8_mma.py's layout) with fp32 scales [N], same launch choices; the configurations w8_mma.py picks.
void w8_wgmma(torch::Tensor x, torch::Tensor qw, torch::Tensor scales, c10::optional<torch::Tensor> bias,
              torch::Tensor out, torch::Tensor part, torch::Tensor locks, int64_t splits, int64_t nwg, int64_t kwg) {
  TORCH_CHECK(has_wgmma(), "w8_wgmma: this build has no sm_90a code");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == at::kBFloat16 && x.size(1) % 128 == 0,
              "w8_wgmma: bf16 x [M, K] with contiguous rows, K a multiple of 128");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == out.size(1),
              "w8_wgmma: fp32 scales [N]");
  TORCH_CHECK(out.size(1) % (64 * nwg) == 0, "w8_wgmma: N must divide by 64 * nwg");
  const int groups = x.size(1) / 128, gps = (groups + splits - 1) / splits;
  TORCH_CHECK(kwg == 1 || (groups % splits == 0 && gps % kwg == 0),
              "w8_wgmma: with kwg warpgroups on alternate groups, each split's groups must divide by kwg");
  if (nwg == 1 && kwg == 1) wgmma_t<false, 64, 1, 1, 1, true>(x, qw, scales, bias, out, part, locks, splits, gps);
  else if (nwg == 2 && kwg == 1) wgmma_t<false, 64, 1, 2, 1, true>(x, qw, scales, bias, out, part, locks, splits, gps);
  else if (nwg == 1 && kwg == 2) wgmma_t<false, 64, 1, 1, 2, true>(x, qw, scales, bias, out, part, locks, splits, gps);
  else TORCH_CHECK(false, "w8_wgmma: (nwg, kwg) must be (1, 1), (2, 1) or (1, 2)");
}

void w4_dequant(torch::Tensor qw, torch::Tensor sz, torch::Tensor w, int64_t group_size, bool scale_bf16,
                int64_t stripe0) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.is_contiguous(), "w4_dequant: w contiguous bf16 [rows, K]");
  const int K = w.size(1), stripes = w.size(0) / 64;
  if (stripes == 0 || K == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(stripes, (K / 16 + DQ_STEPS - 1) / DQ_STEPS);
  auto q = reinterpret_cast<const uint4*>(qw.data_ptr());
  auto z = reinterpret_cast<const uint2*>(sz.data_ptr());
  auto o = reinterpret_cast<__nv_bfloat16*>(w.data_ptr());
  if (scale_bf16) w4_dequant_kernel<true><<<grid, 32 * DQ_STEPS, 0, stream>>>(q, z, o, K, group_size, stripe0);
  else w4_dequant_kernel<false><<<grid, 32 * DQ_STEPS, 0, stream>>>(q, z, o, K, group_size, stripe0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace w4mma

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("w4_mma", &w4mma::w4_mma);
  m.def("w4_dequant", &w4mma::w4_dequant);
  m.def("w4_wgmma", &w4mma::w4_wgmma);
  m.def("w8_wgmma", &w4mma::w8_wgmma);
  m.def("w8_mma", &w4mma::w8_mma);
  m.def("has_wgmma", &w4mma::has_wgmma);
  m.def("set_pdl", &w4mma::set_pdl);
}
#endif
