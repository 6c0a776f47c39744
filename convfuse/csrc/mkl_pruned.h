// FrequencySparse's convolution with a pruned transform: only the kept bins are computed.
//
// The kernel spectrum keeps its lowest M of the n/2+1 one-sided bins, so the forward needs
// X[k] = rfft(x, n)[k] for k < M only, and the inverse reads M nonzero bins.  With n = n1 * n2
// (n1 even, M <= n1/2) and t = n2*t1 + t2 (Bailey's two-step factorisation, the one the
// Monarch FFT is built on):
//   forward  A[t2, k] = sum_t1 x[n2 t1 + t2] w_n1^(t1 k)         n2 real transforms of n1
//            X[k]     = sum_t2 A[t2, k] T[t2, k],  T = w_n^(t2 k)  k < M (w_n^(n2 t1 k) = w_n1^(t1 k))
//   product  Y[k]     = X[k] K[k] / n2
//   inverse  B[t2, k] = Y[k] conj(T[t2, k]) for k < M, 0 up to n1/2
//            y[n2 t1 + t2] = irfft_n1(B[t2, :])[t1]            n2 real inverses of n1
// The inverse is exact because B's bins from M on are zero: the n1-point Nyquist bin (whose
// imaginary part irfft drops) is zero, and each bin 0 < k < M stands for itself and its mirror
// as it does at n; the DC bin is Y[0] at every t2, whose imaginary part irfft_n drops too.
// Work: 2 n log2(n1) butterflies-worth plus two passes of M n2 complex products, against
// 2 n log2(n); and n1-point transforms stay in cache where an n-point one does not.
// Measured (prototype of this file, (2, 32) rows, L = n/2, 1 thread, thread time, 2026-12-04):
// 1.2-1.6x the same dense MKL descriptors from n = 16384 with M <= n/8; about even at n <= 8192;
// MKL's strided column transforms (no transposes) lost everywhere (0.2-0.9x), so each row is
// transposed into n2 contiguous rows of n1 (pitch n1 + 16: no power-of-two cache aliasing).

#pragma once

#include "mkl_fft.h"

#include <ATen/ops/empty.h>

#include <cmath>
#include <complex>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

namespace convfuse_mkl {

// acc[k] (+)= a[k] * t[k] (conj(t[k]) with conj_t), m interleaved complex floats
__attribute__((optimize("O3"))) inline void complex_product(float* __restrict acc, const float* __restrict a,
                                                             const float* __restrict t, int64_t m, bool accumulate,
                                                             bool conj_t) {
  const float s = conj_t ? -1.0f : 1.0f;
  if (accumulate) {
    for (int64_t k = 0; k < m; ++k) {
      const float ar = a[2 * k], ai = a[2 * k + 1], tr = t[2 * k], ti = s * t[2 * k + 1];
      acc[2 * k] += ar * tr - ai * ti;
      acc[2 * k + 1] += ar * ti + ai * tr;
    }
  } else {
    for (int64_t k = 0; k < m; ++k) {
      const float ar = a[2 * k], ai = a[2 * k + 1], tr = t[2 * k], ti = s * t[2 * k + 1];
      acc[2 * k] = ar * tr - ai * ti;
      acc[2 * k + 1] = ar * ti + ai * tr;
    }
  }
}

// One (n, M, n1, width) plan and its buffers, per thread (tiles run on several); n2 = n / n1 >= 2.
struct PrunedPlan {
  int64_t n, M, n1, n2, bins1, pitch, width, rows_in;
  std::vector<float> twiddle;  // (n2, M) complex: w_n^(t2 k)
  std::vector<float> xrow;     // rows_in * n2 floats: a signal whose width is not a multiple of n2, zero-padded
  std::vector<float> xt, yt;   // (n2, pitch) real: the transposed signal (zero from rows_in on) and result
  std::vector<float> A, B;     // (n2, bins1) complex: the forward's output and the inverse's input
  std::vector<float> X, yrow;  // M complex; the rows of y a window needs, row-major

  PrunedPlan(int64_t n_, int64_t M_, int64_t n1_, int64_t width_)
      : n(n_), M(M_), n1(n1_), n2(n_ / n1_), bins1(n1_ / 2 + 1), pitch(n1_ + 16),
        width(width_), rows_in((width_ + n_ / n1_ - 1) / (n_ / n1_)) {
    twiddle.resize(2 * n2 * M);
    for (int64_t t = 0; t < n2; ++t)
      for (int64_t k = 0; k < M; ++k) {
        const double angle = -2.0 * M_PI * static_cast<double>((t * k) % n) / static_cast<double>(n);
        twiddle[2 * (t * M + k)] = static_cast<float>(std::cos(angle));
        twiddle[2 * (t * M + k) + 1] = static_cast<float>(std::sin(angle));
      }
    xrow.assign(rows_in * n2, 0.0f);
    xt.assign(n2 * pitch, 0.0f);
    yt.assign(n2 * pitch, 0.0f);
    A.assign(2 * n2 * bins1, 0.0f);
    B.assign(2 * n2 * bins1, 0.0f);  // bins M..n1/2 are never written: zero for every call
    X.assign(2 * M, 0.0f);
    yrow.assign(n, 0.0f);
  }

  // out[j] = y[start + j], j < length, for one row x (width floats) and its kept bins K (M complex)
  void row(const float* x, const float* K, int64_t start, int64_t length, float* out) {
    const float* src = x;
    if (rows_in * n2 != width) {
      std::memcpy(xrow.data(), x, width * sizeof(float));  // the tail stays zero
      src = xrow.data();
    }
    transpose_pitched<float>(src, n2, xt.data(), pitch, rows_in, n2);
    check(DftiComputeForward(descriptor(Key{0, 1, n1, n2, pitch, 1, bins1, 1}), xt.data(), A.data()), "forward");
    const float inv_n2 = 1.0f / static_cast<float>(n2);
    constexpr int64_t kb = 256;  // bins per block: X, the twiddle and A's block stay in L1/L2
    for (int64_t k0 = 0; k0 < M; k0 += kb) {
      const int64_t m = std::min(kb, M - k0);
      float* Xb = X.data() + 2 * k0;
      for (int64_t t = 0; t < n2; ++t)
        complex_product(Xb, A.data() + 2 * (t * bins1 + k0), twiddle.data() + 2 * (t * M + k0), m, t > 0, false);
      complex_product(Xb, Xb, K + 2 * k0, m, false, false);
      for (int64_t j = 0; j < 2 * m; ++j) Xb[j] *= inv_n2;
      for (int64_t t = 0; t < n2; ++t)
        complex_product(B.data() + 2 * (t * bins1 + k0), Xb, twiddle.data() + 2 * (t * M + k0), m, false, true);
    }
    check(DftiComputeBackward(descriptor(Key{0, 0, n1, n2, bins1, 1, pitch, 1}), B.data(), yt.data()), "inverse");
    const int64_t r0 = start / n2, r1 = (start + length + n2 - 1) / n2;  // the rows t1 the window touches
    transpose_pitched<float>(yt.data() + r0, pitch, yrow.data(), n2, n2, r1 - r0);
    std::memcpy(out, yrow.data() + (start - r0 * n2), length * sizeof(float));
  }
};

inline PrunedPlan& pruned_plan(int64_t n, int64_t M, int64_t n1, int64_t width) {
  thread_local std::map<std::array<int64_t, 4>, std::unique_ptr<PrunedPlan>> plans;
  const std::array<int64_t, 4> key{n, M, n1, width};
  auto it = plans.find(key);
  if (it != plans.end()) return *it->second;
  if (plans.size() >= 16) plans.clear();
  return *(plans[key] = std::make_unique<PrunedPlan>(n, M, n1, width));
}

// Rows of a tensor (..., X) with unit stride along X, viewed as (A, B, X) at any strides
// (tiles are slices of a batch: no copy to read them); more leading dims are reshaped.
struct Rows {
  at::Tensor t;
  int64_t B, s0, s1;
  explicit Rows(const at::Tensor& in) {
    t = in.dim() == 1 ? in.unsqueeze(0) : in;
    if (t.dim() > 3) t = t.reshape({-1, t.size(-2), t.size(-1)});
    if (t.stride(-1) != 1) t = t.contiguous();
    B = t.size(-2);
    s1 = t.stride(-2);
    s0 = t.dim() == 3 ? t.stride(0) : 0;
  }
  int64_t count() const { return t.numel() / std::max<int64_t>(1, t.size(-1)); }
  int64_t offset(int64_t r) const { return (r / B) * s0 + (r % B) * s1; }
};

// x (..., W) float32 (the signal; zero beyond W up to n), K (C, M) complex64 with x's rows a
// multiple of C (row r uses K[r % C], already scaled and conjugated) -> out (..., length), x's
// rows: the window [start, start + length) of irfft(rfft(x, n)[:M] * K, n) per row.
inline void pruned_conv_out(const at::Tensor& x_in, const at::Tensor& K_in, int64_t n, int64_t n1, int64_t start,
                            int64_t length, at::Tensor out_in) {
  TORCH_CHECK(available(), "convfuse._pruned_conv: MKL's DFTI is not available");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu() && !x_in.is_conj() &&
                  !x_in.is_neg(),
              "convfuse._pruned_conv: x must be a float32 CPU tensor");
  TORCH_CHECK(K_in.dim() == 2 && K_in.scalar_type() == at::kComplexFloat && K_in.device().is_cpu(),
              "convfuse._pruned_conv: K must be a (C, M) complex64 CPU tensor");
  TORCH_CHECK(n1 >= 2 && n1 % 2 == 0 && n % n1 == 0 && n1 < n,
              "convfuse._pruned_conv: n1 must be an even proper divisor of n");
  const int64_t W = x_in.size(-1), C = K_in.size(0), M = K_in.size(1);
  TORCH_CHECK(M >= 1 && 2 * M <= n1, "convfuse._pruned_conv: the kept bins must number 1..n1/2");
  TORCH_CHECK(W >= 1 && W <= n, "convfuse._pruned_conv: the signal must have 1..n samples");
  TORCH_CHECK(start >= 0 && length >= 0 && start + length <= n, "convfuse._pruned_conv: the window must lie in [0, n)");
  TORCH_CHECK(out_in.scalar_type() == at::kFloat && out_in.device().is_cpu() && out_in.dim() == x_in.dim() &&
                  out_in.size(-1) == length && out_in.stride(-1) == 1 &&
                  out_in.sizes().slice(0, out_in.dim() - 1) == x_in.sizes().slice(0, x_in.dim() - 1),
              "convfuse._pruned_conv: out must be float32 (..., length) over x's rows, unit stride along length");
  const Rows x(x_in);
  const int64_t R = x.count();
  TORCH_CHECK(C >= 1 && R % C == 0, "convfuse._pruned_conv: the rows must be a multiple of K's rows");
  if (R == 0 || length == 0) return;
  at::Tensor target = out_in.dim() > 3 && !out_in.is_contiguous() ? at::empty(out_in.sizes(), out_in.options()) : out_in;
  const Rows y(target);
  TORCH_CHECK(y.t.data_ptr() == target.data_ptr() && y.t.stride(-1) == 1, "convfuse._pruned_conv: out's rows");
  const at::Tensor K = K_in.resolve_conj().resolve_neg().contiguous();
  PrunedPlan& plan = pruned_plan(n, M, n1, W);
  const float* xp = x.t.data_ptr<float>();
  const float* kp = reinterpret_cast<const float*>(K.data_ptr());
  float* op = y.t.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) plan.row(xp + x.offset(r), kp + 2 * M * (r % C), start, length, op + y.offset(r));
  if (!target.is_same(out_in)) out_in.copy_(target);
}

inline at::Tensor pruned_conv(const at::Tensor& x, const at::Tensor& K, int64_t n, int64_t n1, int64_t start,
                              int64_t length) {
  auto sizes = x.sizes().vec();
  TORCH_CHECK(!sizes.empty(), "convfuse._pruned_conv: x must have a signal axis");
  sizes.back() = length;
  at::Tensor out = at::empty(sizes, x.options());
  pruned_conv_out(x, K, n, n1, start, length, out);
  return out;
}

}  // namespace convfuse_mkl
