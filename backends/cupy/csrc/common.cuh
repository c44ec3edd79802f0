// What every attnspec CUDA kernel shares: the visibility rules and score modifiers of `sdpa`
// (written once, as the spec states them: spec/masks.py, spec/sdpa.py), the LSE merge of
// `flash.merge`, and thin wrappers of the PTX instructions the tensor-core kernel is built from.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifndef INFINITY  // NVRTC has no <math.h>
#define INFINITY __int_as_float(0x7f800000)
#endif

namespace attnspec {

constexpr float LOG2E = 1.4426950408889634f;  // scores are kept in base 2: exp2 is one MUFU op
constexpr float LN2 = 0.6931471805599453f;    // ... and the LSE is returned in base e (sdpa.lse)

// ---------------------------------------------------------------------------------------------
// The call's options, as the kernels read them. Arrays are broadcast views: a stride of 0 along
// an axis the caller broadcast, so that a (1, 1, N_q, N_k) mask is never expanded in memory.
struct Options {
  int causal;                   // 0: none, 1: sdpa.causal.top_left, 2: sdpa.causal.bottom_right
  int win_left, win_right;      // sdpa.window's sides; -1: unbounded
  float scale, softcap;         // softcap <= 0: none
  const bool* mask;             // sdpa.mask, (B, H_q, N_q, N_k) strided; nullptr: none
  long long smb, smh, smm, smn;
  const float* bias;            // sdpa.bias, (B, H_q, N_q, N_k) strided; nullptr: none
  long long sbb, sbh, sbm, sbn;
  const float* slopes;          // sdpa.alibi, (B, H_q) strided; nullptr: none
  long long ssb, ssh;
};

// One query row's view of the rules: the per-row pointers are resolved once, not per key.
struct Row {
  int i;                        // query position; -1 for a padding row (past N_q or q_lens: sees nothing)
  int offset;                   // kv_len(b) - q_len(b): the bottom-right alignment (causal, window, ALiBi)
  int kv_len;
  const bool* mask;
  const float* bias;
  float slope;
};

__device__ __forceinline__ Row make_row(const Options& o, int b, int h, int i, int q_len, int kv_len) {
  Row r;
  r.i = i < q_len ? i : -1;
  r.offset = kv_len - q_len;
  r.kv_len = kv_len;
  long long ii = r.i < 0 ? 0 : r.i;
  r.mask = o.mask ? o.mask + b * o.smb + h * o.smh + ii * o.smm : nullptr;
  r.bias = o.bias ? o.bias + b * o.sbb + h * o.sbh + ii * o.sbm : nullptr;
  r.slope = o.slopes ? o.slopes[b * o.ssb + h * o.ssh] : 0.f;
  return r;
}

// mask_mod: may query row `r` see key `j`? (sdpa.padding, sdpa.causal.*, sdpa.window, sdpa.mask)
// WITH_MASK false: the call has no mask (the plain kernels keep no per-row mask pointer alive).
template <bool WITH_MASK = true>
__device__ __forceinline__ bool visible(const Options& o, const Row& r, int j) {
  if (r.i < 0 || j >= r.kv_len) return false;
  const int d = j - r.i;
  if (o.causal == 1 && d > 0) return false;
  if (o.causal == 2 && d > r.offset) return false;
  if (o.win_left >= 0 && d < r.offset - o.win_left) return false;
  if (o.win_right >= 0 && d > r.offset + o.win_right) return false;
  if (WITH_MASK && r.mask && !r.mask[j * o.smn]) return false;
  return true;
}

// score_mod on the raw dot product q.k: scale, then sdpa.softcap, sdpa.bias, sdpa.alibi; in base 2.
__device__ __forceinline__ float modified_score(const Options& o, const Row& r, int j, float dot) {
  float s = dot * o.scale;
  if (o.softcap > 0.f) s = o.softcap * tanhf(s / o.softcap);
  if (r.bias) s += r.bias[j * o.sbn];
  if (o.slopes) s -= r.slope * fabsf(float(r.i + r.offset - j));
  return s * LOG2E;
}

// The key range [lo, hi) a block of query rows [i_first, i_last] may see, and the part
// [full_lo, full_hi) of it where every (row, key) pair is visible, so that no mask is evaluated
// there. Ranges are whole tiles of `block_n` keys, starting at `k_start` (a split's first key).
struct KeyRange {
  int lo, hi, full_lo, full_hi;
};

__device__ __forceinline__ KeyRange key_range(const Options& o, int i_first, int i_last, int offset,
                                              int k_start, int k_stop, int block_n, bool general) {
  KeyRange k;
  if (i_last < i_first) return KeyRange{k_start, k_start, k_start, k_start};  // no row: nothing
  const int causal_offset = o.causal == 2 ? offset : 0;
  k.lo = k_start;
  k.hi = k_stop;
  k.full_lo = k_start;
  k.full_hi = k_start + (k_stop - k_start) / block_n * block_n;
  if (o.causal) {
    k.hi = min(k.hi, i_last + causal_offset + 1);
    k.full_hi = min(k.full_hi, k_start + max(i_first + causal_offset + 1 - k_start, 0) / block_n * block_n);
  }
  if (o.win_left >= 0) {
    k.lo = max(k.lo, i_first + offset - o.win_left);
    const int edge = i_last + offset - o.win_left - k_start;
    k.full_lo = max(k.full_lo, k_start + (max(edge, 0) + block_n - 1) / block_n * block_n);
  }
  if (o.win_right >= 0) {
    k.hi = min(k.hi, i_last + offset + o.win_right + 1);
    k.full_hi = min(k.full_hi, k_start + max(i_first + offset + o.win_right + 1 - k_start, 0) / block_n * block_n);
  }
  k.lo = k_start + max(k.lo - k_start, 0) / block_n * block_n;
  k.hi = max(k.hi, k.lo);
  if (general && o.mask) k.full_lo = k.hi;  // an arbitrary mask is read in every tile
  k.full_lo = min(max(k.full_lo, k.lo), k.hi);
  k.full_hi = min(max(k.full_hi, k.full_lo), k.hi);
  return k;
}

// ---------------------------------------------------------------------------------------------
// 16-bit element types and their packing of two floats into one 32-bit register.
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<unsigned*>(&h);
}
template <> __device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<unsigned*>(&h);
}
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// D += A(16x16, row) * B(16x8, col), fp32 accumulate (the one tensor-core instruction used here).
template <typename T> __device__ __forceinline__ void mma_16816(float* d, const unsigned* a, unsigned b0, unsigned b1);
template <> __device__ __forceinline__ void mma_16816<__half>(float* d, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma_16816<__nv_bfloat16>(float* d, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 16-bit matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
// Addresses are 32-bit shared-window offsets (smem_address): a lane's base plus a constant offset
// per fragment, which the instruction takes as an immediate, so no 64-bit pointer stays live.
__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// 16 bytes global -> shared without registers; `bytes` < 16 zero-fills the rest (0: all zeros),
// which is how rows past the lengths and columns past the head dim arrive as zeros, never read.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int bytes) {
  unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// 2^x on the special-function unit (ex2.approx: relative error about 2^-22; -inf gives +0), what
// exp2f becomes under --use_fast_math: one instruction for each probability of the softmax.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Reductions over the four lanes that hold one row of an mma accumulator (lanes 4g .. 4g+3).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

// The online-softmax state of one row, in base 2: `m` the running maximum, `l` the running sum.
// A row that has seen no visible key keeps m = -inf; exp2(-inf - m) is then taken as 0, not NaN.
__device__ __forceinline__ float safe_max(float m) { return m == -INFINITY ? 0.f : m; }

// The row's result: out = acc / l and lse = (m + log2 l) ln 2; a row with no visible key gives
// out = 0 and lse = -inf (sdpa.fully_masked).
__device__ __forceinline__ float inverse_sum(float l) { return l > 0.f ? 1.f / l : 0.f; }
__device__ __forceinline__ float natural_lse(float m, float l) { return l > 0.f ? (m + log2f(l)) * LN2 : -INFINITY; }

}  // namespace attnspec
