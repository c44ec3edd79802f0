// The forward pass of `sdpa` for float32 inputs with IEEE float32 products (no TF32: the float32
// clauses demand it), on the CUDA cores. The same tiling, key ranges, visibility rules and online
// softmax as attention.cu; only the products differ: a quad of 4 threads owns one query row, each
// thread a quarter of the head dim (dims t, t + 4, t + 8, ...), and a dot product is summed over
// the quad by two shuffles.
#include "common.cuh"

using namespace attnspec;

template <int HD, int BN, bool GENERAL, typename TO>
__global__ void __launch_bounds__(128)
attention_fwd_f32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                  TO* __restrict__ out, float* __restrict__ lse, const int* __restrict__ q_lens,
                  const int* __restrict__ kv_lens, const bool* mask, const float* bias, const float* slopes,
                  long long sqb, long long sqh, long long sqm, long long skb, long long skh, long long skn,
                  long long svb, long long svh, long long svn, long long sos, long long sob, long long soh,
                  long long som, long long sls, long long slb, long long slh, long long slm,
                  long long smb, long long smh, long long smm, long long smn,
                  long long sbb, long long sbh, long long sbm, long long sbn, long long ssb, long long ssh,
                  int n_heads, int n_q, int n_k, int d_qk, int d_v, int group, int split_len,
                  float scale, float softcap, int causal, int win_left, int win_right,
                  int pack_gqa, int reverse, int vec) {
  constexpr int BM = 32, THREADS = 128, PER = HD / 4;  // 32 rows of 4 threads
  __shared__ float ks[BN][HD], vs[BN][HD];  // a warp reads 4 distinct words of a key row: broadcasts

  const Options o{causal, win_left, win_right, scale, softcap, mask, smb, smh, smm, smn,
                  bias, sbb, sbh, sbm, sbn, slopes, ssb, ssh};
  const int block_m = reverse ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int b = blockIdx.y / n_heads, head = blockIdx.y % n_heads, split = blockIdx.z;
  const int q_len = q_lens ? min(max(q_lens[b], 0), n_q) : n_q;
  const int kv_len = kv_lens ? min(max(kv_lens[b], 0), n_k) : n_k;
  const int h_kv = pack_gqa ? head : head / group;
  const int n_rows = pack_gqa ? group * n_q : n_q;
  const int t = threadIdx.x % 4;
  const int r0 = block_m * BM, r = r0 + threadIdx.x / 4;
  const bool row_exists = r < n_rows;
  const int h = row_exists ? (pack_gqa ? head * group + r / n_q : head) : 0;
  const int i = row_exists ? (pack_gqa ? r % n_q : r) : n_q;
  const Row row = make_row(o, b, h, i, q_len, kv_len);

  int i_first, i_last;
  {
    const int r_end = min(r0 + BM, n_rows);
    const bool wraps = pack_gqa && (r_end - 1) / n_q != r0 / n_q;
    i_first = wraps ? 0 : (pack_gqa ? r0 % n_q : r0);
    i_last = min(wraps ? n_q - 1 : (pack_gqa ? (r_end - 1) % n_q : r_end - 1), q_len - 1);
    if (r0 >= n_rows) i_last = -1;
  }

  float qr[PER], acc[PER];
  const float* q_row = q + b * sqb + (long long)h * sqh + (long long)(row_exists ? i : 0) * sqm;
  #pragma unroll
  for (int c = 0; c < PER; ++c) {
    const int d = t + 4 * c;
    qr[c] = row_exists && d < d_qk ? q_row[d] : 0.f;
    acc[c] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const float scale_log2 = scale * LOG2E;

  const int k_start = split * split_len, k_stop = min(k_start + split_len, kv_len);
  const KeyRange range = key_range(o, i_first, i_last, kv_len - q_len, k_start, k_stop, BN, GENERAL);
  const float* k_base = k + b * skb + h_kv * skh;
  const float* v_base = v + b * svb + h_kv * svh;
  for (int n0 = range.lo; n0 < range.hi; n0 += BN) {
    __syncthreads();
    for (int c = threadIdx.x; c < BN * HD; c += THREADS) {  // keys past the length arrive as zeros
      const int j = c / HD, d = c % HD;
      const bool ok = n0 + j < kv_len;
      ks[j][d] = ok && d < d_qk ? k_base[(n0 + j) * skn + d] : 0.f;
      vs[j][d] = ok && d < d_v ? v_base[(n0 + j) * svn + d] : 0.f;
    }
    __syncthreads();
    const bool masked = n0 < range.full_lo || n0 >= range.full_hi;
    float s[BN];
    float mx = m;
    #pragma unroll
    for (int j = 0; j < BN; ++j) {
      float dot = 0.f;
      #pragma unroll
      for (int c = 0; c < PER; ++c) dot = fmaf(qr[c], ks[j][t + 4 * c], dot);
      dot += __shfl_xor_sync(0xffffffff, dot, 1);
      dot += __shfl_xor_sync(0xffffffff, dot, 2);
      float x = GENERAL ? modified_score(o, row, n0 + j, dot) : dot * scale_log2;
      if (masked && !visible(o, row, n0 + j)) x = -INFINITY;
      s[j] = x;
      mx = fmaxf(mx, x);
    }
    const float alpha = m == -INFINITY ? 1.f : exp2f(m - mx);
    m = mx;
    l *= alpha;
    #pragma unroll
    for (int c = 0; c < PER; ++c) acc[c] *= alpha;
    #pragma unroll
    for (int j = 0; j < BN; ++j) {
      const float p = exp2f(s[j] - safe_max(m));
      l += p;
      #pragma unroll
      for (int c = 0; c < PER; ++c) acc[c] = fmaf(p, vs[j][t + 4 * c], acc[c]);
    }
  }

  if (!row_exists) return;
  const float sum = row.i < 0 ? 0.f : l;  // every thread of the quad holds the whole row sum
  const float inv = inverse_sum(sum);
  const bool empty = sum == 0.f;  // no key seen: exact zeros, even where a padding query read NaN into acc
  const long long row_off = split * sos + b * sob + (long long)h * soh + (long long)i * som;
  #pragma unroll
  for (int c = 0; c < PER; ++c)
    if (t + 4 * c < d_v) out[row_off + t + 4 * c] = from_float<TO>(empty ? 0.f : acc[c] * inv);
  if (t == 0) lse[split * sls + b * slb + (long long)h * slh + (long long)i * slm] = natural_lse(safe_max(m), sum);
}
