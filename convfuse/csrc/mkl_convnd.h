// fft_convnd's value on kept multi-axis MKL descriptors, in the operands' own layout.
//
// Why: GFNet's filter convolves a channels-last (B, H, W, C) map over (H, W) with a parameter
// spectrum (H, W/2+1, C).  Eager (torch.fft) gathers a transposed copy of the input (its FFT
// takes one batch dimension), commits a new descriptor per transform, and runs the inverse as a
// complex transform over H into a fresh tensor and a clone-and-transform over W.  Measured at
// (4, 32, 32, 64), torch 2.13, 1 thread, thread time: eager 2.39 ms, of which rfft2 1.03 ms,
// the product 0.24 ms, irfft2 0.96 ms; the transposed copy alone 0.41 ms.  MKL's DFTI takes
// any strides and a batch distance, so here the forward reads the map where it lies (channels
// as the batch, distance = the channel stride), the spectrum of one batch row stays in a
// per-thread buffer of the same layout (L2-sized), the product runs over it in place, and the
// inverse writes the contiguous (Ko, Hk, *n) result the operator returns.
//
// The inverse is MKL's multi-axis complex-to-real transform: the complex passes over the
// leading axes, then real transforms along the last (MKL's row-column algorithm, the order
// torch's irfftn composes by hand), so a spectrum that is not Hermitian along the leading axes
// in the last axis's 0 and n/2 columns gives torch's result too (tests/backends/test_convnd_kept.py).

#pragma once

#include "mkl_fft.h"

#include <ATen/Parallel.h>
#include <ATen/ops/fft_irfftn.h>
#include <ATen/ops/fft_rfftn.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <pthread.h>
#include <vector>

extern "C" {
long DftiCreateDescriptor_s_md(DFTI_DESCRIPTOR_HANDLE*, int domain, long dim, ...) __attribute__((weak));
long DftiCreateDescriptor_d_md(DFTI_DESCRIPTOR_HANDLE*, int domain, long dim, ...) __attribute__((weak));
}

namespace convfuse_mkl {

inline bool available_md() { return available() && DftiCreateDescriptor_s_md && DftiCreateDescriptor_d_md; }

// (double, forward, complex domain (in place), threads, howmany, in distance, out distance, d,
// n..., in strides..., out strides...), in elements of the input's and output's type.  Every
// inverse carries its own 1/prod(n), so the leading axes' and the last axis's make torch's 1/N.
inline DFTI_DESCRIPTOR_HANDLE md_descriptor(const std::vector<long>& key) {
  thread_local std::map<std::vector<long>, Descriptor> cache;
  auto it = cache.find(key);
  if (it != cache.end()) return it->second.handle;
  if (cache.size() >= kMaxDescriptors) cache.clear();
  Descriptor& desc = cache[key];
  const bool dbl = key[0], forward = key[1], complex = key[2];
  const long threads = key[3], howmany = key[4], in_dist = key[5], out_dist = key[6], d = key[7];
  std::vector<long> n(key.begin() + 8, key.begin() + 8 + d);
  std::vector<long> in_strides{0}, out_strides{0};
  in_strides.insert(in_strides.end(), key.begin() + 8 + d, key.begin() + 8 + 2 * d);
  out_strides.insert(out_strides.end(), key.begin() + 8 + 2 * d, key.begin() + 8 + 3 * d);
  double total = 1.0;
  for (long x : n) total *= static_cast<double>(x);
  const int domain = complex ? kComplex : kReal;
  try {
    if (d == 1) {
      check((dbl ? DftiCreateDescriptor_d_1d : DftiCreateDescriptor_s_1d)(&desc.handle, domain, n[0]), "create");
    } else {
      check((dbl ? DftiCreateDescriptor_d_md : DftiCreateDescriptor_s_md)(&desc.handle, domain, d, n.data()),
            "create");
    }
    check(DftiSetValue(desc.handle, kPlacement, complex ? kInplace : kNotInplace), "placement");
    if (!complex) check(DftiSetValue(desc.handle, kConjugateEvenStorage, kComplexComplex), "storage");
    check(DftiSetValue(desc.handle, kThreadLimit, threads), "thread limit");
    if (!forward) check(DftiSetValue(desc.handle, kBackwardScale, 1.0 / total), "scale");
    if (howmany > 1) {
      check(DftiSetValue(desc.handle, kNumberOfTransforms, howmany), "transforms");
      check(DftiSetValue(desc.handle, kInputDistance, in_dist), "input distance");
      check(DftiSetValue(desc.handle, kOutputDistance, out_dist), "output distance");
    }
    check(DftiSetValue(desc.handle, kInputStrides, in_strides.data()), "input strides");
    check(DftiSetValue(desc.handle, kOutputStrides, out_strides.data()), "output strides");
    check(DftiCommitDescriptor(desc.handle), "commit");
  } catch (...) {
    cache.erase(key);
    throw;
  }
  return desc.handle;
}

inline std::vector<long> md_key(bool dbl, bool forward, bool complex, long threads, long howmany, long in_dist,
                                long out_dist, const std::vector<long>& n, const std::vector<long>& in_strides,
                                const std::vector<long>& out_strides) {
  std::vector<long> key{dbl, forward, complex, threads, howmany, in_dist, out_dist, static_cast<long>(n.size())};
  key.insert(key.end(), n.begin(), n.end());
  key.insert(key.end(), in_strides.begin(), in_strides.end());
  key.insert(key.end(), out_strides.begin(), out_strides.end());
  return key;
}

// The definition, in torch's own differentiable ops: every call the kept path does not take.
inline at::Tensor convnd_composite(const at::Tensor& u, const at::Tensor& K, at::IntArrayRef n, double total,
                                   bool conj) {
  const int64_t d = n.size();
  std::vector<int64_t> dims;
  for (int64_t i = -d; i < 0; ++i) dims.push_back(i);
  at::Tensor W = conj ? K.conj() : K;
  if (total != 1.0) W = W * total;
  return at::fft_irfftn(at::fft_rfftn(u, n, dims) * W, n, dims).contiguous();
}

// Bytes of spectrum one work item keeps in its per-thread buffer: a few items fit L2 (2 MiB on
// this Xeon, 512 KiB on the EPYC the model was first fitted on), so the product and the
// inverse read what the forward just wrote from cache.
constexpr int64_t kItemBytes = 512 * 1024;

template <typename T>
__attribute__((optimize("O3"))) void multiply(std::complex<T>* X, const std::complex<T>* Kp, int64_t count, double total, bool conj) {
  T* x = reinterpret_cast<T*>(X);
  const T* k = reinterpret_cast<const T*>(Kp);
  if (total == 1.0 && !conj) {
    for (int64_t b = 0; b < count; ++b) {
      const T xr = x[2 * b], xi = x[2 * b + 1], kr = k[2 * b], ki = k[2 * b + 1];
      x[2 * b] = xr * kr - xi * ki;
      x[2 * b + 1] = xr * ki + xi * kr;
    }
    return;
  }
  const T s = static_cast<T>(total), sc = static_cast<T>(conj ? -total : total);
  for (int64_t b = 0; b < count; ++b) {
    const T xr = x[2 * b], xi = x[2 * b + 1], kr = k[2 * b] * s, ki = k[2 * b + 1] * sc;
    x[2 * b] = xr * kr - xi * ki;
    x[2 * b + 1] = xr * ki + xi * kr;
  }
}

// dst (cols, rows) contiguous = src (rows, cols) with row stride rs and unit column stride: a
// channels-last map's channels gathered into rows at cache-line granularity (ATen's copy of the
// permuted view walks the source element by element: 0.37 ms for GFNet's (4, 32, 32, 64) map,
// 1 thread).
template <typename E>
void transpose(const E* src, int64_t rows, int64_t cols, int64_t rs, E* dst) {
  transpose_pitched<E>(src, rs, dst, rows, rows, cols);
}

// The flat index of -k over the leading axes, for each flat k.
inline std::vector<int64_t> mirrors(const std::vector<long>& lead) {
  int64_t P = 1;
  for (long x : lead) P *= x;
  std::vector<int64_t> mirror(P);
  for (int64_t p = 0; p < P; ++p) {
    int64_t rest = p, m = 0, stride = 1;
    for (int64_t i = static_cast<int64_t>(lead.size()) - 1; i >= 0; --i) {
      const int64_t k = rest % lead[i];
      rest /= lead[i];
      m += ((lead[i] - k) % lead[i]) * stride;
      stride *= lead[i];
    }
    mirror[p] = m;
  }
  return mirror;
}

// t (R, *rest) as a contiguous tensor; where t is channels-last (unit stride along R, its other
// axes row-major at one stride), by blocks (transpose above) instead of ATen's element-wise copy
// of the permuted view (GFNet's (256, 56, 29) complex spectrum: 3.6 ms, 1 thread).
inline at::Tensor rows_contiguous(const at::Tensor& t) {
  if (t.is_contiguous() || t.dim() < 2 || t.size(0) < 2 || t.stride(0) != 1 || t.is_conj() || t.is_neg() ||
      !t.device().is_cpu() || t.layout() != c10::kStrided)
    return t.contiguous();
  const int64_t R = t.size(0), ps = t.stride(t.dim() - 1);
  int64_t P = 1;
  for (int64_t i = t.dim() - 1, want = ps; i >= 1; --i) {
    if (t.size(i) > 1 && t.stride(i) != want) return t.contiguous();
    want *= t.size(i);
    P *= t.size(i);
  }
  if (ps < R) return t.contiguous();
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
  switch (t.element_size()) {
    case 4: transpose<int32_t>(static_cast<const int32_t*>(t.data_ptr()), P, R, ps, static_cast<int32_t*>(out.data_ptr())); break;
    case 8: transpose<int64_t>(static_cast<const int64_t*>(t.data_ptr()), P, R, ps, static_cast<int64_t*>(out.data_ptr())); break;
    case 16: transpose<std::complex<double>>(static_cast<const std::complex<double>*>(t.data_ptr()), P, R, ps,
                                             static_cast<std::complex<double>*>(out.data_ptr())); break;
    default: return t.contiguous();
  }
  return out;
}

// Re(ifft over the leading axes) is what torch's irfftn keeps of the last axis's 0 and n/2
// columns (its complex-to-real transform reads their real parts only); MKL's multi-axis
// inverse is defined on Hermitian input.  Replacing those columns by their Hermitian parts,
// (Z[k] + conj(Z[-k])) / 2 over the leading axes, gives both transforms the same input and
// changes nothing torch computes (GFNet's parameter spectrum is not Hermitian there).
template <typename T>
void hermitian_columns(std::complex<T>* X, const std::vector<int64_t>& mirror, long bins, long last) {
  const int64_t P = mirror.size();
  for (long col : {0L, last % 2 == 0 ? bins - 1 : -1L}) {
    if (col < 0) continue;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t m = mirror[p];
      if (m < p) continue;
      std::complex<T>& a = X[p * bins + col];
      std::complex<T>& z = X[m * bins + col];
      const T re = (a.real() + z.real()) * static_cast<T>(0.5), im = (a.imag() - z.imag()) * static_cast<T>(0.5);
      a = {re, im};
      z = {re, -im};
    }
  }
}

// work() on `threads` of torch's own OpenMP threads (the library is built with -fopenmp against
// the libgomp torch loads, as Inductor's C++ kernels are): at::parallel_for over one index a
// thread (each chunk drains the shared item counter), so ATen's own region (no num_threads clause: GOMP's pool misbehaves when it varies,
// pytorch#32008; the first exception rethrown here; nothing nested) runs it.  Built without
// OpenMP, or inside a parallel region, it runs on this thread alone.  Why not threads of our
// own: OpenMP's workers spin after every torch op, so on a 2-core machine a third thread waits
// for a core whenever a torch op ran just before (GFNet's (4, 32, 32, 64) filter on 2 threads,
// interleaved with eager calls: 1.58 ms a call on our own helper threads, against eager's 0.79).
inline void run_parallel(int64_t threads, const std::function<void()>& work) {
  at::parallel_for(0, std::max<int64_t>(1, threads), 1, [&](int64_t, int64_t) { work(); });  // one chunk a thread
}

// A forked child has none of its parent's threads, but GNU OpenMP keeps its record of the
// parent's pool and waits on it for ever in the child's first parallel region (torch's own
// ops hang there too, above one thread).  So in a forked child the multi-axis calls run on
// the calling thread alone, MKL's transforms included.  Registered at load, before any fork.
inline std::atomic<bool> forked_child{false};
inline const int fork_handler = pthread_atfork(nullptr, nullptr, [] { forked_child.store(true); });

// Whether run_parallel can use more than one thread (the library was built with OpenMP).
inline bool parallel_built() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// Below this many bytes of input a call runs on the calling thread alone (MKL's own threads
// inside its transforms): splitting it costs more than it saves.
constexpr int64_t kSplitBytes = 256 * 1024;
// Items a thread gets at least, where a call is split: two, so a thread that lost its core for
// a while leaves the other an item to take (1 and 4 measured no better: (1, 14, 14, 384),
// (1, 32, 32, 64), 2 threads, 1.42-1.45x and 1.05-1.26x eager).
constexpr int64_t kItemsPerThread = 2;

// out = irfftn(rfftn(u, s=n) * W, s=n) over the last d = len(n) axes, W = total * (conj ? conj(K) : K):
// u (Ko, Hk, *n) real, K (Hk, *n[:-1], n[-1]/2+1) complex of u's precision, any strides; out
// (Ko, Hk, *n) with its n axes contiguous.  Items (a batch row's block of channels) are shared
// out over torch's intra-op threads (run_parallel), each with one MKL thread.
template <typename T>
void convnd_kept_impl(const at::Tensor& u_in, const at::Tensor& K_in, at::IntArrayRef n, double total, bool conj,
                      at::Tensor& out) {
  using C = std::complex<T>;
  const int64_t d = n.size(), Ko = u_in.size(0), Hk = u_in.size(1);
  std::vector<long> nl(n.begin(), n.end()), spec(nl);
  spec.back() = nl.back() / 2 + 1;
  int64_t S = 1, N = 1;
  for (int64_t i = 0; i < d; ++i) S *= spec[i], N *= n[i];
  // Channels-last (positions row-major at one stride ps, channels at unit stride): each work
  // item transposes its channels into contiguous rows (contiguous transforms run 2-3x faster
  // in MKL than ones batched across interleaved channels: GFNet (4, 32, 32, 64), 1 thread,
  // 0.95 ms against 1.93).  Anything else that is not contiguous is copied contiguous once.
  bool channels_last = Hk > 1 && u_in.stride(1) == 1;
  const int64_t ps = u_in.stride(u_in.dim() - 1);
  for (int64_t i = d - 1, want = ps; i >= 0 && channels_last; --i) {
    if (n[i] > 1 && u_in.stride(2 + i) != want) channels_last = false;
    want *= n[i];
  }
  channels_last = channels_last && ps >= Hk;
  const at::Tensor u = channels_last || u_in.is_contiguous() ? u_in : u_in.contiguous();
  const at::Tensor Kl = rows_contiguous(K_in);  // (Hk, *spec); GFNet's channels-last parameter: one copy
  const int64_t threads = forked_child.load() ? 1 : at::get_num_threads();
  const bool large = parallel_built() && threads > 1 && u.numel() * static_cast<int64_t>(sizeof(T)) >= kSplitBytes;
  const auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  int64_t block = std::max<int64_t>(1, std::min<int64_t>(Hk, kItemBytes / std::max<int64_t>(1, S * sizeof(C))));
  // Too few items for the threads (GFNet at batch 1: one item a row): smaller blocks of
  // channels, so that every thread has kItemsPerThread, rather than a row left to MKL's own
  // threads ((1, 14, 14, 384), 2 threads, torch.utils.benchmark medians: one item on MKL's 2
  // threads 0.82x eager, split 1.45x)
  const int64_t want = large ? kItemsPerThread * threads : 1;
  if (Ko * ceil_div(Hk, block) < want) block = ceil_div(Hk, ceil_div(want, Ko));
  const int64_t per_row = ceil_div(Hk, block), items = Ko * per_row;
  const bool split = large && items > 1;
  const long limit = split ? 1 : threads;  // MKL's own threads, as torch's plans set them
  const T* up = u.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const C* kp = reinterpret_cast<const C*>(Kl.data_ptr());
  const bool dbl = std::is_same<T, double>::value;
  const std::vector<long> lead(nl.begin(), nl.end() - 1);
  const long bins = spec.back();
  const std::vector<int64_t> mirror = mirrors(lead);
  std::vector<long> real_strides(d), spec_strides(d);
  for (int64_t i = d - 1, r = 1, c = 1; i >= 0; --i) real_strides[i] = r, spec_strides[i] = c, r *= nl[i], c *= spec[i];

  std::atomic<int64_t> next{0};
  const std::function<void()> work = [&] {
  thread_local std::vector<C> spectrum;  // one item's, reused by the thread's next calls
  thread_local std::vector<T> rows;
  for (int64_t item = next++; item < items; item = next++) {
    const int64_t o = item / per_row, c0 = (item % per_row) * block, cb = std::min(block, Hk - c0);
    if (static_cast<int64_t>(spectrum.size()) < cb * S) spectrum.resize(cb * S);
    C* X = spectrum.data();
    const T* src = up + o * u.stride(0) + c0 * u.stride(1);  // (cb, *n) contiguous unless channels-last
    if (channels_last) {
      if (static_cast<int64_t>(rows.size()) < cb * N) rows.resize(cb * N);
      transpose<T>(src, N, cb, ps, rows.data());
      src = rows.data();
    }
    check(DftiComputeForward(md_descriptor(md_key(dbl, true, false, limit, cb, N, S, nl, real_strides, spec_strides)),
                             const_cast<T*>(src), X), "forward");
    multiply<T>(X, kp + c0 * S, cb * S, total, conj);
    if (d > 1) {
      for (int64_t c = 0; c < cb; ++c) hermitian_columns<T>(X + c * S, mirror, bins, nl.back());
    }
    check(DftiComputeBackward(md_descriptor(md_key(dbl, false, false, limit, cb, S, out.stride(1), nl, spec_strides,
                                                   real_strides)),
                              X, op + o * out.stride(0) + c0 * out.stride(1)), "inverse");
  }
  // an item is one channel where a channel's spectrum exceeds kItemBytes: not kept past the call
  if (spectrum.size() * sizeof(C) > 2 * kItemBytes) std::vector<C>().swap(spectrum);
  if (rows.size() * sizeof(T) > 2 * kItemBytes) std::vector<T>().swap(rows);
  };
  run_parallel(split ? std::min(threads, items) : 1, work);
}

// No two elements of t share memory, by a sufficient test: in increasing stride order, each
// dimension's stride passes the last offset the smaller ones reach.  (A layout that interleaves
// dimensions some other way fails it too: the op then refuses an out it could have written.)
inline bool no_overlap(const at::Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of the dimensions that matter
  for (int64_t i = 0; i < t.dim(); ++i)
    if (t.size(i) > 1) dims.emplace_back(t.stride(i), t.size(i));
  std::sort(dims.begin(), dims.end());
  int64_t reach = 0;
  for (const auto& [stride, size] : dims) {
    if (stride <= reach) return false;
    reach += stride * (size - 1);
  }
  return true;
}

inline bool convnd_kept_applies(const at::Tensor& u, const at::Tensor& K, at::IntArrayRef n, const at::Tensor& out) {
  const int64_t d = n.size();
  if (!available_md() || d < 1 || d > 3 || u.dim() != d + 2 || K.dim() != d + 1) return false;
  if (out.dim() != d + 2 || out.scalar_type() != u.scalar_type() || !out.device().is_cpu() || out.size(0) != u.size(0) ||
      out.size(1) != u.size(1) || out.stride(0) < 1 || out.stride(1) < 1)
    return false;
  for (int64_t i = d - 1, want = 1; i >= 0; --i) {  // the n axes contiguous, the rows apart (no_overlap)
    if (out.size(2 + i) != n[i] || (n[i] > 1 && out.stride(2 + i) != want)) return false;
    want *= n[i];
  }
  if (!u.device().is_cpu() || !K.device().is_cpu() || u.is_conj() || u.is_neg() || K.is_conj() || K.is_neg())
    return false;
  const bool f32 = u.scalar_type() == at::kFloat && K.scalar_type() == at::kComplexFloat;
  const bool f64 = u.scalar_type() == at::kDouble && K.scalar_type() == at::kComplexDouble;
  if (!(f32 || f64) || K.size(0) != u.size(1) || u.numel() == 0) return false;
  for (int64_t i = 0; i < d; ++i) {
    if (n[i] < 1 || u.size(2 + i) != n[i]) return false;
    if (K.size(1 + i) != (i == d - 1 ? n[i] / 2 + 1 : n[i])) return false;
  }
  return true;
}

inline void convnd_kept(const at::Tensor& u, const at::Tensor& K, at::IntArrayRef n, double total, bool conj,
                        at::Tensor& out) {
  if (!convnd_kept_applies(u, K, n, out)) {
    out.copy_(convnd_composite(u, K, n, total, conj));
  } else if (u.scalar_type() == at::kDouble) {
    convnd_kept_impl<double>(u, K, n, total, conj, out);
  } else {
    convnd_kept_impl<float>(u, K, n, total, conj, out);
  }
}

}  // namespace convfuse_mkl
