// The forward pass of `sdpa` on tensor cores (fp16, bf16): FlashAttention-2's algorithm in plain
// CUDA C++ and inline PTX (mma.sync.m16n8k16, ldmatrix, cp.async), no libraries.
//
// One CTA computes BM query rows of one (batch item, head) against the keys its rows may see
// (flash.tiled); each of its warps owns WM x 16 rows. Per key tile of BN keys:
//   S = Q K^T        Q fragments in registers (WM * HD <= 128) or shared memory, K by ldmatrix
//   online softmax   on the S accumulators in registers, in base 2 (scale * log2 e folded in)
//   O += P V         P converted in registers to the A operand, V by ldmatrix.trans
// K and V tiles are double-buffered with cp.async: tile t + 1 is in flight while t is computed.
// Tiles wholly outside the causal / window / length rules are not visited; tiles wholly inside
// them are computed without evaluating a mask (common.cuh: key_range).
//
// A warp with WM = 2 (32 rows, FlashAttention-2's layout) applies every K and V fragment it loads
// from shared memory to two m16 tiles: half the shared-memory traffic per tensor-core operation of
// WM = 1, which is what bounds this kernel on Hopper's mma.sync path.
//
// Template parameters: T the element type, HD the head dim padded to a multiple of 16 (both
// D_qk and D_v fit in it), BM x BN the tile, WM the m16 tiles of a warp, GENERAL whether the
// call has a mask, bias, ALiBi or
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

// Scores of one m16 tile in base 2 (masked pairs -inf), then the online softmax: the new row
// maximum over the quad, the rescale of what was accumulated, and P = exp2(S - m) in place of S,
// summed per thread (the quad's sum is taken once, at the end). Element e of n8 tile nt is row
// g + 8 * (e / 2), key 2t + e % 2.
template <bool GENERAL, int NT, int NO>
__device__ __forceinline__ void softmax_step(const Options& o, const Row (&rows)[2], float (&s)[NT][4],
                                             float (&acc)[NO][4], float (&m)[2], float (&l)[2], int n0, int t,
                                             bool masked, float scale_log2) {
  #pragma unroll
  for (int nt = 0; nt < NT; ++nt)
    #pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int j = n0 + nt * 8 + 2 * t + e % 2;
      const Row& row = rows[e / 2];
      float x = GENERAL ? modified_score(o, row, j, s[nt][e]) : s[nt][e] * scale_log2;
      if (masked && !visible<GENERAL>(o, row, j)) x = -INFINITY;
      s[nt][e] = x;
    }
  float alpha[2];
  #pragma unroll
  for (int x = 0; x < 2; ++x) {
    float mx = m[x];
    #pragma unroll
    for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * x], s[nt][2 * x + 1]));
    mx = quad_max(mx);
    alpha[x] = m[x] == -INFINITY ? 1.f : fast_exp2(m[x] - mx);  // acc and l are still 0 before the first key
    m[x] = mx;
    l[x] *= alpha[x];
  }
  #pragma unroll
  for (int nt = 0; nt < NO; ++nt)
    #pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] *= alpha[e / 2];
  #pragma unroll
  for (int nt = 0; nt < NT; ++nt)
    #pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = fast_exp2(s[nt][e] - safe_max(m[e / 2]));
      l[e / 2] += s[nt][e];
    }
}

// out = acc / l, lse = (m + log2 l) ln 2 for the two rows of this thread in an m16 tile starting
// at row `r_tile`; a thread stores columns 2t, 2t + 1 of each n8 tile.
template <int NO, typename TO, typename OutOffset, typename LseOffset>
__device__ __forceinline__ void store_rows(TO* out, float* lse, const float (&acc)[NO][4], const float (&m)[2],
                                           const float (&l)[2], const Row (&rows)[2], int r_tile, int n_rows,
                                           int d_v, int t, int g, OutOffset out_offset, LseOffset lse_offset) {
  #pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int r = r_tile + g + 8 * x;
    const float total = quad_sum(l[x]);           // every lane of the warp takes part in the shuffle
    const float sum = rows[x].i < 0 ? 0.f : total;  // padding rows: 0 and -inf, whatever they saw
    if (r >= n_rows) continue;
    // A row that saw no key stores exact zeros, even where its (padding) query read NaN into acc.
    const float inv = inverse_sum(sum);
    const bool empty = sum == 0.f;
    const long long row_off = out_offset(r);
    #pragma unroll
    for (int nt = 0; nt < NO; ++nt) {
      const int col = nt * 8 + 2 * t;
      if (col < d_v) out[row_off + col] = from_float<TO>(empty ? 0.f : acc[nt][2 * x] * inv);
      if (col + 1 < d_v) out[row_off + col + 1] = from_float<TO>(empty ? 0.f : acc[nt][2 * x + 1] * inv);
    }
    if (t == 0) lse[lse_offset(r)] = natural_lse(safe_max(m[x]), sum);
  }
}

}  // namespace

template <typename T, int HD, int BM, int BN, int WM, bool GENERAL, typename TO>
__global__ void __launch_bounds__(BM * 2 / WM)
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
  constexpr int WR = 16 * WM;   // rows of a warp
  constexpr int NW = BM / WR, THREADS = NW * 32, STRIDE = HD + PAD;
  constexpr int NT = BN / 8;    // n8 tiles of S per m16 tile
  constexpr int KD = HD / 16;   // k16 steps of Q K^T
  constexpr int NO = HD / 8;    // n8 tiles of O per m16 tile
  constexpr bool Q_IN_REGISTERS = WM == 1 && HD <= 128;
  static_assert(BM % WR == 0 && BN % 16 == 0 && HD % 16 == 0, "tiles are whole mma shapes");

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

  // This thread's rows: g and g + 8 of each of its warp's m16 tiles, and their view of the rules.
  const int warp_r0 = r0 + warp * WR;
  Row rows[WM][2];
  #pragma unroll
  for (int mi = 0; mi < WM; ++mi)
    #pragma unroll
    for (int x = 0; x < 2; ++x) {
      const int r = warp_r0 + mi * 16 + g + 8 * x;
      const bool ok = r < n_rows;
      rows[mi][x] = make_row(o, b, ok ? head_of(r) : 0, ok ? pos_of(r) : n_q, q_len, kv_len);
    }
  const bool warp_has_rows = warp_r0 < n_rows && (pack_gqa || warp_r0 < q_len);

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

  float acc[WM][NO][4] = {};
  float m[WM][2], l[WM][2];
  #pragma unroll
  for (int mi = 0; mi < WM; ++mi) m[mi][0] = m[mi][1] = -INFINITY, l[mi][0] = l[mi][1] = 0.f;
  const float scale_log2 = scale * LOG2E;

  // Q fragments (A operands of m16n8k16): lane l gives row l % 16, column half l / 16.
  // Each lane's ldmatrix row addresses (bytes, shared window): a fragment adds a constant.
  constexpr int ROW = STRIDE * int(sizeof(T)), COL = int(sizeof(T)), TILE_BYTES = BN * ROW;
  const unsigned q_lane = smem_address(qs) + (warp * WR + lane % 16) * ROW + (lane / 16) * 8 * COL;
  const unsigned k_lane = smem_address(ks) + ((lane / 16) * 8 + lane % 8) * ROW + ((lane / 8) % 2) * 8 * COL;
  const unsigned v_lane = smem_address(vs) + (((lane / 8) % 2) * 8 + lane % 8) * ROW + (lane / 16) * 8 * COL;
  unsigned qf[Q_IN_REGISTERS ? WM : 1][Q_IN_REGISTERS ? KD : 1][4];
  if constexpr (Q_IN_REGISTERS) {
    cp_async_wait<1>();  // the Q tile (the first K/V tile may still be in flight)
    __syncthreads();
    #pragma unroll
    for (int mi = 0; mi < WM; ++mi)
      #pragma unroll
      for (int kk = 0; kk < KD; ++kk) ldmatrix_x4(qf[mi][kk], q_lane + mi * 16 * ROW + kk * 16 * COL);
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
      const unsigned kt = k_lane + buf * TILE_BYTES, vt = v_lane + buf * TILE_BYTES;
      // S = Q K^T: per k16 step, one ldmatrix.x4 of K gives the B operands of two n8 tiles, used
      // by each of the warp's m16 tiles.
      float s[WM][NT][4] = {};
      #pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        unsigned a[WM][4];
        #pragma unroll
        for (int mi = 0; mi < WM; ++mi) {
          if constexpr (Q_IN_REGISTERS) {
            #pragma unroll
            for (int x = 0; x < 4; ++x) a[mi][x] = qf[mi][kk][x];
          } else {
            ldmatrix_x4(a[mi], q_lane + mi * 16 * ROW + kk * 16 * COL);
          }
        }
        #pragma unroll
        for (int p = 0; p < NT / 2; ++p) {
          unsigned bf[4];
          ldmatrix_x4(bf, kt + p * 16 * ROW + kk * 16 * COL);
          #pragma unroll
          for (int mi = 0; mi < WM; ++mi) {
            mma_16816<T>(s[mi][2 * p], a[mi], bf[0], bf[1]);
            mma_16816<T>(s[mi][2 * p + 1], a[mi], bf[2], bf[3]);
          }
        }
      }
      const bool masked = n0 < range.full_lo || n0 >= range.full_hi;
      #pragma unroll
      for (int mi = 0; mi < WM; ++mi)
        softmax_step<GENERAL, NT, NO>(o, rows[mi], s[mi], acc[mi], m[mi], l[mi], n0, t, masked, scale_log2);
      // O += P V with P rounded to T in the A operand, as FlashAttention does; a V fragment serves
      // every m16 tile of the warp.
      #pragma unroll
      for (int kc = 0; kc < BN / 16; ++kc) {
        unsigned pa[WM][4];
        #pragma unroll
        for (int mi = 0; mi < WM; ++mi)
          #pragma unroll
          for (int half = 0; half < 2; ++half) {
            pa[mi][2 * half] = pack2<T>(s[mi][2 * kc + half][0], s[mi][2 * kc + half][1]);
            pa[mi][2 * half + 1] = pack2<T>(s[mi][2 * kc + half][2], s[mi][2 * kc + half][3]);
          }
        #pragma unroll
        for (int p = 0; p < NO / 2; ++p) {
          unsigned bf[4];
          ldmatrix_x4_trans(bf, vt + kc * 16 * ROW + p * 16 * COL);
          #pragma unroll
          for (int mi = 0; mi < WM; ++mi) {
            mma_16816<T>(acc[mi][2 * p], pa[mi], bf[0], bf[1]);
            mma_16816<T>(acc[mi][2 * p + 1], pa[mi], bf[2], bf[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this buffer before the next prefetch overwrites it
  }
  cp_async_wait<0>();

  #pragma unroll
  for (int mi = 0; mi < WM; ++mi)
    store_rows<NO>(out, lse, acc[mi], m[mi], l[mi], rows[mi], warp_r0 + mi * 16, n_rows, d_v, t, g,
                   [&](int r) { return split * sos + b * sob + (long long)head_of(r) * soh + (long long)pos_of(r) * som; },
                   [&](int r) { return split * sls + b * slb + (long long)head_of(r) * slh + (long long)pos_of(r) * slm; });
}
