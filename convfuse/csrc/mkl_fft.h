// Real FFTs along the last axis through MKL's DFTI with committed descriptors kept per thread.
//
// Why: torch.fft on CPU creates and commits a new MKL descriptor on every call, and a commit
// computes the transform's twiddles, O(n) sines and cosines: ~20 ns per sample on the 2-core
// EPYC, one thread.  Measured (torch 2.13, rfft, 1 thread, medians): n = 4096 1 row 80 us,
// 64 rows 381 us; n = 16384 1 row 341 us, 64 rows 2434 us (~38 us a row); n = 65536 1 row
// 1338 us.  So a call of a few rows is mostly the commit, and a tiled convolution, which
// transforms a cache-sized block of rows per call, paid it on every tile (at n = 16384 a tile
// of 15 rows computes ~450 us and committed ~330 us).  A descriptor committed once and kept
// computes the same transform (same MKL routine, same parameters as torch's own plan:
// aten/src/ATen/native/mkl/SpectralOps.cpp), so results equal torch.fft's.
//
// The DFTI entry points are declared weak (the values below are mkl_dfti.h's, MKL 2017-2024):
// where libtorch_cpu does not export them (a torch built without MKL, or on ARM), they are null
// and every call goes to at::fft_rfft / at::fft_irfft, so this file never makes the library
// fail to load.
//
// Descriptors are per thread (thread_local): a pool thread computing with one never meets
// another thread's, and the thread limit (torch's intra-op threads on that thread) is part of
// the key, as torch sets it per call.

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/fft_irfft.h>
#include <ATen/ops/fft_rfft.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <complex>
#include <map>
#include <stdexcept>
#include <string>

extern "C" {
typedef struct DFTI_DESCRIPTOR* DFTI_DESCRIPTOR_HANDLE;
long DftiCreateDescriptor_s_1d(DFTI_DESCRIPTOR_HANDLE*, int domain, ...) __attribute__((weak));
long DftiCreateDescriptor_d_1d(DFTI_DESCRIPTOR_HANDLE*, int domain, ...) __attribute__((weak));
long DftiSetValue(DFTI_DESCRIPTOR_HANDLE, int param, ...) __attribute__((weak));
long DftiCommitDescriptor(DFTI_DESCRIPTOR_HANDLE) __attribute__((weak));
long DftiComputeForward(DFTI_DESCRIPTOR_HANDLE, void*, ...) __attribute__((weak));
long DftiComputeBackward(DFTI_DESCRIPTOR_HANDLE, void*, ...) __attribute__((weak));
long DftiFreeDescriptor(DFTI_DESCRIPTOR_HANDLE*) __attribute__((weak));
char* DftiErrorMessage(long) __attribute__((weak));
}

namespace convfuse_mkl {

// enum DFTI_CONFIG_PARAM / DFTI_CONFIG_VALUE (mkl_dfti.h)
constexpr int kBackwardScale = 5, kNumberOfTransforms = 7, kConjugateEvenStorage = 10, kPlacement = 11,
              kInputStrides = 12, kOutputStrides = 13, kInputDistance = 14, kOutputDistance = 15,
              kThreadLimit = 27;
constexpr int kComplex = 32, kReal = 33, kComplexComplex = 39, kInplace = 43, kNotInplace = 44;

inline bool available() {
  return DftiCreateDescriptor_s_1d && DftiCreateDescriptor_d_1d && DftiSetValue && DftiCommitDescriptor &&
         DftiComputeForward && DftiComputeBackward && DftiFreeDescriptor;
}

inline void check(long status, const char* what) {
  if (status != 0) {
    std::string msg = DftiErrorMessage ? DftiErrorMessage(status) : "unknown";
    throw std::runtime_error(std::string("convfuse: MKL DFTI ") + what + " failed: " + msg);
  }
}

// (double, forward, n, rows, input distance, input element stride, output distance, threads);
// distances and strides in elements of the input's (real or complex) and output's types
using Key = std::array<long, 8>;

struct Descriptor {
  DFTI_DESCRIPTOR_HANDLE handle = nullptr;
  Descriptor() = default;
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  ~Descriptor() {
    if (handle) DftiFreeDescriptor(&handle);
  }
};

// A few shapes per thread: a model's sites, a call's full and last tiles, forward and inverse.
// A commit is O(n) memory and time, so a full table is dropped rather than grown.
constexpr size_t kMaxDescriptors = 64;

inline DFTI_DESCRIPTOR_HANDLE descriptor(const Key& key) {
  thread_local std::map<Key, Descriptor> cache;
  auto it = cache.find(key);
  if (it != cache.end()) return it->second.handle;
  if (cache.size() >= kMaxDescriptors) cache.clear();
  Descriptor& d = cache[key];
  const bool dbl = key[0], forward = key[1];
  const long n = key[2], rows = key[3], in_dist = key[4], in_stride = key[5], out_dist = key[6];
  try {
    check((dbl ? DftiCreateDescriptor_d_1d : DftiCreateDescriptor_s_1d)(&d.handle, kReal, n), "create");
    check(DftiSetValue(d.handle, kPlacement, kNotInplace), "placement");
    check(DftiSetValue(d.handle, kConjugateEvenStorage, kComplexComplex), "storage");
    check(DftiSetValue(d.handle, kThreadLimit, key[7]), "thread limit");
    if (!forward) check(DftiSetValue(d.handle, kBackwardScale, 1.0 / static_cast<double>(n)), "scale");
    if (rows > 1) {
      check(DftiSetValue(d.handle, kNumberOfTransforms, rows), "transforms");
      check(DftiSetValue(d.handle, kInputDistance, in_dist), "input distance");
      check(DftiSetValue(d.handle, kOutputDistance, out_dist), "output distance");
    }
    long in_strides[2] = {0, in_stride}, out_strides[2] = {0, 1};
    check(DftiSetValue(d.handle, kInputStrides, in_strides), "input strides");
    check(DftiSetValue(d.handle, kOutputStrides, out_strides), "output strides");
    check(DftiCommitDescriptor(d.handle), "commit");
  } catch (...) {
    cache.erase(key);
    throw;
  }
  return d.handle;
}

// dst[j * dp + i] = src[i * sp + j] for the rows x cols of src, in 16 x 16 blocks: both sides
// walked at cache-line granularity (the multi-axis path's channel gathers, the pruned path's
// row reshapes)
template <typename E>
__attribute__((optimize("O3"))) void transpose_pitched(const E* __restrict src, int64_t sp, E* __restrict dst,
                                                        int64_t dp, int64_t rows, int64_t cols) {
  constexpr int64_t b = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += b) {
    const int64_t i1 = std::min(rows, i0 + b);
    for (int64_t j0 = 0; j0 < cols; j0 += b) {
      const int64_t j1 = std::min(cols, j0 + b);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) dst[j * dp + i] = src[i * sp + j];
    }
  }
}

inline bool real_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

// ``in``'s rows, (rows, len): a view with one distance between rows and a positive element
// stride where in's strides allow (torch's own plan takes strided operands too, and a copy
// would round differently), else a contiguous copy.
inline at::Tensor as_rows(const at::Tensor& in, int64_t rows, int64_t len) {
  int64_t dist = len, extent = -1;
  bool merged = in.stride(-1) >= 1;
  for (int64_t d = in.dim() - 2; d >= 0 && merged; --d) {
    if (in.size(d) == 1) continue;
    if (extent < 0) {
      dist = in.stride(d);
    } else if (in.stride(d) != extent) {
      merged = false;
    }
    extent = in.stride(d) * in.size(d);
  }
  if (rows > 1 && dist < 1) merged = false;
  return merged ? in.as_strided({rows, len}, {dist, in.stride(-1)}) : in.reshape({rows, len}).contiguous();
}

// torch.fft.rfft(x, n) along the last axis: x real (..., L), fp32 or fp64.
inline at::Tensor rfft(const at::Tensor& x, int64_t n) {
  if (!available() || !real_dtype(x.scalar_type()) || x.numel() == 0 || n < 2 || x.dim() < 1 ||
      !x.device().is_cpu() || x.is_conj() || x.is_neg()) {
    return at::fft_rfft(x, n);
  }
  const int64_t L = x.size(-1);
  at::Tensor in = L == n ? x : (L > n ? x.narrow(-1, 0, n) : at::constant_pad_nd(x, {0, n - L}));
  const int64_t rows = in.numel() / n;
  at::Tensor r = as_rows(in, rows, n);
  const int64_t bins = n / 2 + 1;
  auto sizes = in.sizes().vec();
  sizes.back() = bins;
  at::Tensor out = at::empty(sizes, in.options().dtype(in.scalar_type() == at::kDouble ? at::kComplexDouble
                                                                                       : at::kComplexFloat));
  Key key{in.scalar_type() == at::kDouble, 1, n, rows, rows > 1 ? r.stride(0) : n, r.stride(1), bins, at::get_num_threads()};
  check(DftiComputeForward(descriptor(key), r.data_ptr(), out.data_ptr()), "forward");
  return out;
}

// torch.fft.irfft(X, n) along the last axis: X complex (..., m), complex64 or complex128.
inline at::Tensor irfft(const at::Tensor& X, int64_t n) {
  const auto t = X.scalar_type();
  if (!available() || !(t == at::kComplexFloat || t == at::kComplexDouble) || X.numel() == 0 || n < 2 ||
      X.dim() < 1 || !X.device().is_cpu() || X.is_conj() || X.is_neg()) {
    return at::fft_irfft(X, n);
  }
  const int64_t bins = n / 2 + 1, m = X.size(-1);
  at::Tensor in = m == bins ? X : (m > bins ? X.narrow(-1, 0, bins) : at::constant_pad_nd(X, {0, bins - m}));
  const int64_t rows = in.numel() / bins;
  at::Tensor r = as_rows(in, rows, bins);
  auto sizes = in.sizes().vec();
  sizes.back() = n;
  at::Tensor out = at::empty(sizes, in.options().dtype(t == at::kComplexDouble ? at::kDouble : at::kFloat));
  Key key{t == at::kComplexDouble, 0, n, rows, rows > 1 ? r.stride(0) : bins, r.stride(1), n, at::get_num_threads()};
  check(DftiComputeBackward(descriptor(key), r.data_ptr(), out.data_ptr()), "backward");
  return out;
}

}  // namespace convfuse_mkl
