// flash.merge: partial results over disjoint key sets combined by their LSE, in float32.
//   lse = log sum_s exp(lse_s),  out = sum_s exp(lse_s - lse) out_s
// A partial with lse_s = -inf (no visible key) has weight 0 and is not read (its out_s may be
// anything); a row where every lse_s is -inf gives out = 0 and lse = -inf (sdpa.fully_masked).
// Thread per (row, column): each computes the row's weights itself (S is small).
#include "common.cuh"

using namespace attnspec;

template <typename TI, typename TO>
__global__ void merge_partials(const TI* __restrict__ outs, const float* __restrict__ lses, TO* __restrict__ out,
                               float* __restrict__ lse, int num_splits, long long rows, int d) {
  const long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (idx >= rows * d) return;
  const long long row = idx / d;
  const int col = idx % d;
  float top = -INFINITY;
  for (int s = 0; s < num_splits; ++s) top = fmaxf(top, lses[s * rows + row]);
  float total = 0.f, value = 0.f;
  if (top != -INFINITY) {
    for (int s = 0; s < num_splits; ++s) {
      const float ls = lses[s * rows + row];
      if (ls == -INFINITY) continue;
      const float w = expf(ls - top);
      total += w;
      value += w * to_float(outs[(s * rows + row) * d + col]);
    }
  }
  out[idx] = from_float<TO>(total > 0.f ? value / total : 0.f);
  if (col == 0) lse[row] = total > 0.f ? top + logf(total) : -INFINITY;
}
