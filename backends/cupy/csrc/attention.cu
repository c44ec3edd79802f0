// The forward pass of `sdpa` on tensor cores (fp16, bf16): FlashAttention-2's algorithm in plain
// CUDA C++ and inline PTX (mma.sync.m16n8k16, ldmatrix, cp.async), no libraries.
//
// One CTA computes BM query rows of one (batch item, head) against the keys its rows may see
// (flash.tiled); each of its BM / 16 warps owns 16 rows. Per key tile of BN keys:
//   S = Q K^T        Q fragments in registers (HD <= 128) or shared memory, K by ldmatrix
//   online softmax   on the S accumulators in registers, in base 2 (scale * log2 e folded in)
//   O += P V         P converted in registers to the A operand, V by ldmatrix.trans
// K and V tiles are double-buffered with cp.async: tile t + 1 is in flight while t is computed.
// Tiles wholly outside the causal / window / length rules are not visited; tiles wholly inside
// them are computed without evaluating a mask (common.cuh: key_range).
//
// Template parameters: T the element type, HD the head dim padded to a multiple of 16 (both
// D_qk and D_v fit in it), BM x BN the tile, GENERAL whether the call has a mask, bias, ALiBi or
// softcap (the plain and causal calls compile without that code), TO the output type (T, or
// float for split-KV partials that the merge kernel combines).
#include "common.cuh"

using namespace attnspec;

namespace {

constexpr int PAD = 8;  // shared rows padded by 16 bytes: ldmatrix's 8 row addresses hit 8 distinct bank groups

template <typename T, int HD>
struct Tile {
  static constexpr int STRIDE = HD + PAD;
  // Rows [row0, row0 + rows) of a (rows, d) slab of global memory into shared memory, zero-filled
  // past `valid_rows` and past column `d`. `vec`: 16-byte aligned rows and d % 8 == 0, so that
  // cp.async moves whole 16-byte chunks; else element by element (odd head dims, odd strides).
  template <int ROWS, int THREADS>
  __device__ static void load(T* smem, const T* gmem, long long row_stride, int valid_rows, int d, bool vec) {
    constexpr int CHUNKS = HD / 8;
    if (vec) {
      for (int c = threadIdx.x; c < ROWS * CHUNKS; c += THREADS) {
        const int row = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool ok = row < valid_rows && col < d;
        const T* src = ok ? gmem + row * row_stride + col : gmem;
        cp_async_16(smem + row * STRIDE + col, src, ok ? 16 : 0);
      }
    } else {
      for (int c = threadIdx.x; c < ROWS * HD; c += THREADS) {
        const int row = c / HD, col = c % HD;
        const bool ok = row < valid_rows && col < d;
        smem[row * STRIDE + col] = ok ? gmem[row * row_stride + col] : from_float<T>(0.f);
      }
    }
  }
};

}  // namespace

template <typename T, int HD, int BM, int BN, bool GENERAL, typename TO>
__global__ void __launch_bounds__(BM * 2)
attention_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, TO* __restrict__ out,
              float* __restrict__ lse, const int* __restrict__ q_lens, const int* __restrict__ kv_lens,
              const bool* mask, const float* bias, const float* slopes,
              long long sqb, long long sqh, long long sqm, long long skb, long long skh, long long skn,
              long long svb, long long svh, long long svn, long long sos, long long sob, long long soh,
              long long som, long long sls, long long slb, long long slh, long long slm,
              long long smb, long long smh, long long smm, long long smn,
              long long sbb, long long sbh, long long sbm, long long sbn, long long ssb, long long ssh,
              int n_heads, int n_q, int n_k, int d_qk, int d_v, int group, int split_len,
              float scale, float softcap, int causal, int win_left, int win_right,
              int pack_gqa, int reverse, int vec) {
  constexpr int NW = BM / 16, THREADS = NW * 32, STRIDE = HD + PAD;
  constexpr int NT = BN / 8;    // n8 tiles of S per warp
  constexpr int KD = HD / 16;   // k16 steps of Q K^T
  constexpr int NO = HD / 8;    // n8 tiles of O per warp
  static_assert(BM % 16 == 0 && BN % 16 == 0 && HD % 16 == 0, "tiles are whole mma shapes");

  extern __shared__ __align__(16) unsigned char shared_bytes[];
  T* qs = reinterpret_cast<T*>(shared_bytes);
  T* ks = qs + BM * STRIDE;      // [2][BN][STRIDE]
  T* vs = ks + 2 * BN * STRIDE;  // [2][BN][STRIDE]

  const Options o{causal, win_left, win_right, scale, softcap, mask, smb, smh, smm, smn,
                  bias, sbb, sbh, sbm, sbn, slopes, ssb, ssh};
  const int block_m = reverse ? gridDim.x - 1 - blockIdx.x : blockIdx.x;  // causal: longest rows first
  const int b = blockIdx.y / n_heads, head = blockIdx.y % n_heads, split = blockIdx.z;
  const int q_len = q_lens ? min(max(q_lens[b], 0), n_q) : n_q;  // lengths read on the device are
  const int kv_len = kv_lens ? min(max(kv_lens[b], 0), n_k) : n_k;  // trusted only up to the array
  const int h_kv = pack_gqa ? head : head / group;
  const int n_rows = pack_gqa ? group * n_q : n_q;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  // The rows of this CTA: with packed GQA, row r is query i = r % n_q of head h = head * G + r / n_q.
  const int r0 = block_m * BM;
  auto head_of = [&](int r) { return pack_gqa ? head * group + r / n_q : head; };
  auto pos_of = [&](int r) { return pack_gqa ? r % n_q : r; };
  int i_first, i_last;
  {
    const int r_end = min(r0 + BM, n_rows);
    const bool wraps = pack_gqa && (r_end - 1) / n_q != r0 / n_q;
    i_first = wraps ? 0 : pos_of(r0);
    i_last = min(wraps ? n_q - 1 : pos_of(r_end - 1), q_len - 1);
    if (r0 >= n_rows) i_last = -1;
  }

  // Q tile into shared memory, one row at a time (rows of a packed tile belong to different heads).
  for (int c = threadIdx.x; c < BM; c += THREADS) {
    const int r = r0 + c;
    const bool ok = r < n_rows;
    const T* src = q + b * sqb + (long long)head_of(ok ? r : r0) * sqh + (long long)pos_of(ok ? r : r0) * sqm;
    if (vec) {
      for (int col = 0; col < HD; col += 8)
        cp_async_16(qs + c * STRIDE + col, ok && col < d_qk ? src + col : q, ok && col < d_qk ? 16 : 0);
    } else {
      for (int col = 0; col < HD; ++col) qs[c * STRIDE + col] = ok && col < d_qk ? src[col] : from_float<T>(0.f);
    }
  }
  cp_async_commit();

  // This thread's two rows (g and g + 8 of its warp's 16) and their view of the rules.
  Row rows[2];
  #pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int r = r0 + warp * 16 + g + 8 * x;
    const bool ok = r < n_rows;
    rows[x] = make_row(o, b, ok ? head_of(r) : 0, ok ? pos_of(r) : n_q, q_len, kv_len);
  }
  const bool warp_has_rows = r0 + warp * 16 < n_rows && (pack_gqa || r0 + warp * 16 < q_len);

  const int k_start = split * split_len, k_stop = min(k_start + split_len, kv_len);
  const KeyRange range = key_range(o, i_first, i_last, kv_len - q_len, k_start, k_stop, BN, GENERAL);
  const T* k_base = k + b * skb + h_kv * skh;
  const T* v_base = v + b * svb + h_kv * svh;
  auto load_kv = [&](int n0, int buf) {
    Tile<T, HD>::template load<BN, THREADS>(ks + buf * BN * STRIDE, k_base + n0 * skn, skn, kv_len - n0, d_qk, vec);
    Tile<T, HD>::template load<BN, THREADS>(vs + buf * BN * STRIDE, v_base + n0 * svn, svn, kv_len - n0, d_v, vec);
    cp_async_commit();
  };
  if (range.lo < range.hi) load_kv(range.lo, 0);

  float acc[NO][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const float scale_log2 = scale * LOG2E;

  // Q fragments (A operands of m16n8k16): lane l gives row l % 16, column half l / 16.
  unsigned qf[HD <= 128 ? KD : 1][4];
  const T* q_row = qs + (warp * 16 + lane % 16) * STRIDE + (lane / 16) * 8;
  if constexpr (HD <= 128) {
    cp_async_wait<1>();  // the Q tile (the first K/V tile may still be in flight)
    __syncthreads();
    #pragma unroll
    for (int kk = 0; kk < KD; ++kk) ldmatrix_x4(qf[kk], q_row + kk * 16);
  }

  int buf = 0;
  for (int n0 = range.lo; n0 < range.hi; n0 += BN, buf ^= 1) {
    if (n0 + BN < range.hi) {
      load_kv(n0 + BN, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (warp_has_rows) {  // a warp whose rows are all padding only helps load (decode tiles)
      const T* kt = ks + buf * BN * STRIDE;
      const T* vt = vs + buf * BN * STRIDE;
      // S = Q K^T: per k16 step, one ldmatrix.x4 of K gives the B operands of two n8 tiles.
      float s[NT][4] = {};
      #pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        unsigned a[4];
        if constexpr (HD <= 128) {
          #pragma unroll
          for (int x = 0; x < 4; ++x) a[x] = qf[kk][x];
        } else {
          ldmatrix_x4(a, q_row + kk * 16);
        }
        #pragma unroll
        for (int p = 0; p < NT / 2; ++p) {
          unsigned bf[4];
          ldmatrix_x4(bf, kt + (p * 16 + (lane / 16) * 8 + lane % 8) * STRIDE + kk * 16 + ((lane / 8) % 2) * 8);
          mma_16816<T>(s[2 * p], a, bf[0], bf[1]);
          mma_16816<T>(s[2 * p + 1], a, bf[2], bf[3]);
        }
      }
      // Scores in base 2; masked pairs -inf. Element e of tile nt: row g + 8 * (e / 2), key 2t + e % 2.
      const bool masked = n0 < range.full_lo || n0 >= range.full_hi;
      #pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = n0 + nt * 8 + 2 * t + e % 2;
          const Row& row = rows[e / 2];
          float x = GENERAL ? modified_score(o, row, j, s[nt][e]) : s[nt][e] * scale_log2;
          if (masked && !visible(o, row, j)) x = -INFINITY;
          s[nt][e] = x;
        }
      // Online softmax: the row maximum over the quad, the rescale of what was accumulated.
      float alpha[2];
      #pragma unroll
      for (int x = 0; x < 2; ++x) {
        float mx = m[x];
        #pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * x], s[nt][2 * x + 1]));
        mx = quad_max(mx);
        alpha[x] = m[x] == -INFINITY ? 1.f : exp2f(m[x] - mx);  // acc and l are still 0 before the first key
        m[x] = mx;
        l[x] *= alpha[x];
      }
      #pragma unroll
      for (int nt = 0; nt < NO; ++nt)
        #pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] *= alpha[e / 2];
      // P = exp2(S - m), summed per thread (the quad's sum is taken once, at the end), and
      // O += P V with P rounded to T in the A operand, as FlashAttention does.
      #pragma unroll
      for (int kc = 0; kc < BN / 16; ++kc) {
        unsigned pa[4];
        #pragma unroll
        for (int half = 0; half < 2; ++half) {
          float* st = s[2 * kc + half];
          #pragma unroll
          for (int e = 0; e < 4; ++e) {
            st[e] = exp2f(st[e] - safe_max(m[e / 2]));
            l[e / 2] += st[e];
          }
          pa[2 * half] = pack2<T>(st[0], st[1]);
          pa[2 * half + 1] = pack2<T>(st[2], st[3]);
        }
        const unsigned a[4] = {pa[0], pa[1], pa[2], pa[3]};
        #pragma unroll
        for (int p = 0; p < NO / 2; ++p) {
          unsigned bf[4];
          ldmatrix_x4_trans(bf, vt + (kc * 16 + ((lane / 8) % 2) * 8 + lane % 8) * STRIDE + p * 16 + (lane / 16) * 8);
          mma_16816<T>(acc[2 * p], a, bf[0], bf[1]);
          mma_16816<T>(acc[2 * p + 1], a, bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this buffer before the next prefetch overwrites it
  }
  cp_async_wait<0>();

  // out = acc / l, lse = (m + log2 l) ln 2; a thread stores columns 2t, 2t + 1 of each n8 tile.
  #pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int r = r0 + warp * 16 + g + 8 * x;
    const float total = quad_sum(l[x]);           // every lane of the warp takes part in the shuffle
    const float sum = rows[x].i < 0 ? 0.f : total;  // padding rows: 0 and -inf, whatever they saw
    if (r >= n_rows) continue;
    // A row that saw no key stores exact zeros, even where its (padding) query read NaN into acc.
    const float inv = inverse_sum(sum);
    const bool empty = sum == 0.f;
    const long long row_off = split * sos + b * sob + (long long)head_of(r) * soh + (long long)pos_of(r) * som;
    #pragma unroll
    for (int nt = 0; nt < NO; ++nt) {
      const int col = nt * 8 + 2 * t;
      if (col < d_v) out[row_off + col] = from_float<TO>(empty ? 0.f : acc[nt][2 * x] * inv);
      if (col + 1 < d_v) out[row_off + col + 1] = from_float<TO>(empty ? 0.f : acc[nt][2 * x + 1] * inv);
    }
    if (t == 0) lse[split * sls + b * slb + (long long)head_of(r) * slh + (long long)pos_of(r) * slm] = natural_lse(safe_max(m[x]), sum);
  }
}
