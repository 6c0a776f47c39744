// fft_conv's "direct" algorithm (short kernels) on rows, in C++.
//
// Why: the direct plan ran depthwise F.conv1d (oneDNN) on a zero-padded copy of each tile:
// ~130 us of setup a call and ~5 ns an output sample whatever K, so a 4-tap filter over
// 256 rows of 1024 (H3's shift SSM, examples/models.py) cost 1.46 ms in the compiled model,
// more than the FFT site beside it (1.0 ms for a 1024-tap kernel).  A 4-tap sliding dot
// product is 4 multiply-adds an output sample.  Here each tap is one pass over the output row
// (K passes over a row that stays in L1), which the compiler vectorizes, the zero padding
// implicit in the range each tap covers, rows shared over torch's intra-op threads.

#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>

namespace convfuse_direct {

// z[m] = sum_{i<K} x[lo + m + i] * w[i] for m in [0, count), x zero outside [0, Lx)
template <typename T>
__attribute__((optimize("O3"))) void row(const T* __restrict x, int64_t Lx, const T* __restrict w, int64_t K,
                                         int64_t lo, int64_t count, T* __restrict z) {
  std::memset(z, 0, sizeof(T) * count);
  for (int64_t i = 0; i < K; ++i) {
    // m where 0 <= lo + m + i < Lx
    const int64_t a = std::max<int64_t>(0, -(lo + i)), b = std::min<int64_t>(count, Lx - (lo + i));
    const T wi = w[i];
    const T* xs = x + lo + i;
    for (int64_t m = a; m < b; ++m) z[m] += wi * xs[m];
  }
}

// x (R, Lx) rows, w (C, K) taps with row r taking w[r % C]: (R, count) contiguous, the sliding
// dot products from lo (may be negative: zeros before x).  Last axes of x and w contiguous
// (else copied), rows at any stride.
inline at::Tensor rows(const at::Tensor& x_in, const at::Tensor& w_in, int64_t lo, int64_t count) {
  TORCH_CHECK(x_in.dim() == 2 && w_in.dim() == 2, "convfuse._direct_rows: x (R, Lx) and w (C, K) expected");
  TORCH_CHECK(x_in.scalar_type() == w_in.scalar_type() &&
                  (x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble),
              "convfuse._direct_rows: x and w of one dtype, float32 or float64");
  TORCH_CHECK(x_in.device().is_cpu() && w_in.device().is_cpu(), "convfuse._direct_rows: CPU tensors");
  TORCH_CHECK(count >= 0 && w_in.size(0) >= 1 && w_in.size(1) >= 1 &&
                  (x_in.size(0) == 0 || x_in.size(0) % w_in.size(0) == 0),
              "convfuse._direct_rows: count >= 0 and rows a multiple of w's");
  constexpr int64_t kLimit = int64_t(1) << 60;  // lo + m + i must not overflow
  TORCH_CHECK(lo > -kLimit && lo < kLimit && count < kLimit, "convfuse._direct_rows: lo or count out of range");
  TORCH_CHECK(!x_in.is_conj() && !x_in.is_neg() && !w_in.is_neg(), "convfuse._direct_rows: resolve conj/neg bits first");
  const at::Tensor x = x_in.stride(1) == 1 || x_in.size(1) <= 1 ? x_in : x_in.contiguous();
  const at::Tensor w = w_in.is_contiguous() ? w_in : w_in.contiguous();
  const int64_t R = x.size(0), Lx = x.size(1), C = w.size(0), K = w.size(1);
  at::Tensor z = at::empty({R, count}, x.options());
  if (R == 0 || count == 0) return z;
  // rows of ~16K multiply-adds at least a thread (a row of 1024 at K = 16)
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, K * count));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "convfuse_direct_rows", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* zp = z.data_ptr<scalar_t>();
    const int64_t xs = x.stride(0);
    at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) row<scalar_t>(xp + r * xs, Lx, wp + (r % C) * K, K, lo, count, zp + r * count);
    });
  });
  return z;
}

}  // namespace convfuse_direct
