// convfuse::fft_conv's small CPU calls, run without a Python frame.
//
// Why C++: at 16..256 samples a call is nothing but fixed cost.  From Python the operator
// paid the dispatcher's hop into a Python kernel and the Python of its plan (~20-30 us on
// the 2-core machine) on top of the same library transforms eager calls, so it was
// 0.72-0.93x eager there (bench/fixed_cost.py, 2026-12-02).  These kernels run those
// transforms from C++.
//
// What runs here is decided in Python, never here: convfuse/backends/cpu.py's CpuCall
// decides per call shape whether a call is "straight" (dense kernel, window inside one
// period, signal rows = output rows, nothing lifted, no cached spectrum) and registers that
// shape's plan with `_native_add`.  A call whose key is in the table runs `small` below;
// every other call goes to the Python kernels, which are installed on the twin operator
// `convfuse::_fft_conv_python` (same schema).  The key holds every argument and every
// operand's dtype, sizes and strides, so a hit is a call Python already planned.
//
// Two kernels on convfuse::fft_conv:
//   AutogradCPU: no gradient wanted, plain CPU tensors, no mode/tracer/transform/autocast
//                -> small(); otherwise the twin's Autograd kernel (Python) takes the call.
//   CPU:         below autograd (inference tensors, the autograd Function's forward)
//                -> small(); otherwise the twin's CPU kernel (Python).
// small() makes the same library calls on the same operands as CpuCall._small, so its
// result is bit-identical to the Python path (tests/backends/test_native.py).

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/fft_irfft.h>
#include <ATen/ops/fft_rfft.h>
#include <ATen/ops/mul.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/library.h>

#include "direct.h"
#include "mkl_convnd.h"
#include "mkl_pruned.h"
#include "mkl_fft.h"

#include <atomic>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kArgs = 15;  // fft_conv's schema: u k D pre_gate post_gate n start length scale n_power
                              // conj_kernel out_dtype kernel constant_kernel spectrum_bins
constexpr size_t kMaxPlans = 1024;  // a safety net: cpu_plan (512 plans) clears both tables first

struct Plan {
  int64_t fft_n, start, length;
  double kscale;  // folded into the kernel spectrum (1.0: nothing to fold)
  bool kconj;
  at::ScalarType dtype, out_dtype;
  std::vector<int64_t> out_shape;
};

struct KeyHash {
  size_t operator()(const std::vector<int64_t>& v) const noexcept {
    size_t h = 1469598103934665603ull;
    for (int64_t x : v) h = (h ^ static_cast<uint64_t>(x)) * 1099511628211ull;
    return h;
  }
};

std::shared_mutex table_mutex;
std::unordered_map<std::vector<int64_t>, Plan, KeyHash> table;
std::atomic<int64_t> hits{0};

int64_t bits(double x) {
  int64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

void push_tensor(std::vector<int64_t>& key, const at::Tensor& t) {
  key.push_back(static_cast<int64_t>(t.scalar_type()));
  key.push_back(static_cast<int64_t>(t.device().type()));
  key.push_back(t.dim());
  for (int64_t s : t.sizes()) key.push_back(s);
  for (int64_t s : t.strides()) key.push_back(s);
}

// The table key of the call on the stack's top kArgs entries; false where an argument is
// not something a plan was ever made for (a symbolic size, an undefined tensor).
bool make_key(const torch::jit::Stack& stack, std::vector<int64_t>& key) {
  if (stack.size() < kArgs) return false;
  const c10::IValue* a = stack.data() + (stack.size() - kArgs);
  key.reserve(64);
  for (size_t i = 0; i < 5; ++i) {
    if (a[i].isNone()) {
      if (i < 2) return false;
      key.push_back(-1);
      continue;
    }
    if (!a[i].isTensor()) return false;
    const at::Tensor& t = a[i].toTensor();
    if (!t.defined()) return false;
    push_tensor(key, t);
  }
  for (size_t i : {5, 6, 7, 14}) {
    if (!a[i].isInt()) return false;  // a SymInt: never planned here
    key.push_back(a[i].toInt());
  }
  if (!a[8].isDouble() || !a[9].isDouble() || !a[10].isBool() || !a[13].isBool() || !a[12].isString()) return false;
  key.push_back(bits(a[8].toDouble()));
  key.push_back(bits(a[9].toDouble()));
  key.push_back(a[10].toBool());
  key.push_back(static_cast<int64_t>(a[11].toScalarType()));
  // "auto" and "cpu" run the same CPU plan (ops._fft_conv_cpu_kernel's key leaves the kernel
  // name out), so they share a key: a plan built by one serves the other
  const std::string& kernel = a[12].toStringRef();
  if (kernel != "auto" && kernel != "cpu") return false;
  key.push_back(a[13].toBool());
  return true;
}

bool find_plan(const torch::jit::Stack& stack, Plan& plan) {
  std::vector<int64_t> key;
  if (!make_key(stack, key)) return false;
  std::shared_lock<std::shared_mutex> lock(table_mutex);
  auto it = table.find(key);
  if (it == table.end()) return false;
  plan = it->second;
  return true;
}

// CpuCall._small, the same calls in the same order.
at::Tensor small(const Plan& p, const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& D,
                 const c10::optional<at::Tensor>& pre_gate, const c10::optional<at::Tensor>& post_gate) {
  at::Tensor ue = u.scalar_type() != p.dtype ? u.to(p.dtype) : u;
  if (pre_gate) ue = at::mul(ue, *pre_gate);
  at::Tensor U = convfuse_mkl::rfft(ue, p.fft_n);
  at::Tensor K = convfuse_mkl::rfft(k.scalar_type() != p.dtype ? k.to(p.dtype) : k, p.fft_n);
  if (p.kconj) K.conj_physical_();
  if (p.kscale != 1.0) K.mul_(p.kscale);
  at::Tensor y = convfuse_mkl::irfft(U.mul_(K), p.fft_n).narrow(-1, p.start, p.length);
  at::Tensor out = at::empty(p.out_shape, at::TensorOptions().dtype(p.out_dtype));
  if (!D && !post_gate) {
    out.copy_(y);
  } else if (!post_gate) {
    at::addcmul_out(out, y, ue, *D);
  } else if (!D) {
    at::mul_out(out, y, *post_gate);
  } else {
    at::mul_out(out, y.addcmul_(ue, *D), *post_gate);
  }
  return out;
}

c10::optional<at::Tensor> opt(const c10::IValue& v) {
  return v.isNone() ? c10::optional<at::Tensor>() : c10::optional<at::Tensor>(v.toTensor());
}

void run_small(const Plan& p, torch::jit::Stack* stack) {
  const c10::IValue* a = stack->data() + (stack->size() - kArgs);
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below;  // nothing here wants a graph: see autograd_cpu
    out = small(p, a[0].toTensor(), a[1].toTensor(), opt(a[2]), opt(a[3]), opt(a[4]));
  }
  torch::jit::drop(*stack, kArgs);
  torch::jit::push(*stack, std::move(out));
  hits.fetch_add(1, std::memory_order_relaxed);
}

const c10::OperatorHandle& twin() {
  static const c10::OperatorHandle handle =
      c10::Dispatcher::singleton().findSchemaOrThrow("convfuse::_fft_conv_python", "");
  return handle;
}

// The keys of a plain dense CPU tensor: anything beyond them (Python subclass, fake, functorch
// wrapper, conjugate/negative bit, zero tensor, nested, sparse) sends the call to Python.
c10::DispatchKeySet plain_keys() {
  static const c10::DispatchKeySet keys = [] {
    at::Tensor t = at::empty({1});
    return t.key_set() | c10::DispatchKeySet({c10::DispatchKey::AutogradCPU, c10::DispatchKey::ADInplaceOrView});
  }();
  return keys;
}

// No transform, mode or tracer is active on this thread: a kernel here sees values only.
bool no_modes() {
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0) return false;
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Tracer)) return false;
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) return false;
  return true;
}

// A plain dense CPU tensor of which only the value matters: no gradient wanted from it
// (``grad``: grad mode is on), no forward-AD tangent.
bool plain_value(const at::Tensor& t, bool grad) {
  static const c10::DispatchKeySet plain = plain_keys();
  if (!t.defined() || !t.device().is_cpu() || t.layout() != c10::kStrided) return false;
  if ((t.key_set() | plain) != plain) return false;  // a subset (operator- keeps backend bits)
  if (grad && t.requires_grad()) return false;
  return !t._fw_grad(0).defined();  // forward AD: the differentiable path computes the tangent
}

// ops_autograd._plain_cpu, and no gradient wanted, no autocast: the call's value is all
// that matters, so small() may compute it.
bool value_only(const torch::jit::Stack& stack) {
  if (!no_modes() || at::autocast::is_autocast_enabled(at::kCPU)) return false;
  const bool grad = c10::GradMode::is_enabled();
  const c10::IValue* a = stack.data() + (stack.size() - kArgs);
  for (size_t i = 0; i < 5; ++i) {
    if (a[i].isNone()) continue;
    if (!a[i].isTensor() || !plain_value(a[i].toTensor(), grad)) return false;
  }
  return true;
}

// _rfft / _irfft: kept descriptors for a plain value, else torch.fft's own (differentiable,
// traceable) op.  CompositeImplicitAutograd, so the choice is made above autograd.
at::Tensor rfft_op(const at::Tensor& x, int64_t n) {
  if (no_modes() && plain_value(x, c10::GradMode::is_enabled())) {
    at::AutoDispatchBelowADInplaceOrView below;
    return convfuse_mkl::rfft(x, n);
  }
  return at::fft_rfft(x, n);
}

at::Tensor irfft_op(const at::Tensor& X, int64_t n) {
  if (no_modes() && plain_value(X, c10::GradMode::is_enabled())) {
    at::AutoDispatchBelowADInplaceOrView below;
    return convfuse_mkl::irfft(X, n);
  }
  return at::fft_irfft(X, n);
}

// _convnd_kept_out: fft_convnd's value into out on kept multi-axis descriptors (mkl_convnd.h)
// for plain values, through torch's own ops otherwise.  cpu_nd.py calls it on its own
// operands only (never traced, never differentiated: the operator's autograd sits above), so
// an operand's requires_grad does not matter here: GFNet's parameter spectrum reaches this call
// as a view of a parameter, and refusing it sent every call of a real model to the composite
// (the (4, 32, 32, 64) filter, 1 thread: 1.80 ms compiled against 1.38 eager).
void convnd_kept_op(const at::Tensor& u, const at::Tensor& K, at::IntArrayRef n, double total, bool conj,
                    at::Tensor out) {
  at::AutoDispatchBelowADInplaceOrView below;
  TORCH_CHECK(convfuse_mkl::no_overlap(out), "convfuse._convnd_kept_out: out has elements that share memory");
  if (no_modes() && plain_value(u, false) && plain_value(K, false) && plain_value(out, false)) {
    convfuse_mkl::convnd_kept(u, K, n, total, conj, out);
  } else {
    out.copy_(convfuse_mkl::convnd_composite(u, K, n, total, conj));
  }
}

void autograd_cpu(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack* stack) {
  Plan p;
  if (stack->size() >= kArgs && value_only(*stack) && find_plan(*stack, p)) {
    run_small(p, stack);
    return;
  }
  twin().callBoxed(stack);
}

void cpu(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack* stack) {
  Plan p;
  if (stack->size() >= kArgs && !at::autocast::is_autocast_enabled(at::kCPU) && find_plan(*stack, p)) {
    run_small(p, stack);
    return;
  }
  twin().redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), stack);
}

// _native_add(<fft_conv's 15 arguments>, fft_n, start, length, kscale, kconj, dtype, out_dtype, out_shape)
void add(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  constexpr size_t extra = 8;
  std::vector<int64_t> key;
  torch::jit::Stack args(stack->end() - (kArgs + extra), stack->end() - extra);
  const c10::IValue* e = stack->data() + (stack->size() - extra);
  bool ok = make_key(args, key);
  if (ok) {
    Plan p{e[0].toInt(), e[1].toInt(), e[2].toInt(), e[3].toDouble(), e[4].toBool(),
           e[5].toScalarType(), e[6].toScalarType(), e[7].toIntVector()};
    std::unique_lock<std::shared_mutex> lock(table_mutex);
    if (table.size() >= kMaxPlans) table.clear();
    table[key] = std::move(p);
  }
  torch::jit::drop(*stack, kArgs + extra);
  torch::jit::push(*stack, ok);
}

void clear(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  std::unique_lock<std::shared_mutex> lock(table_mutex);
  table.clear();
}

void stats(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  std::shared_lock<std::shared_mutex> lock(table_mutex);
  torch::jit::push(*stack, std::vector<int64_t>{static_cast<int64_t>(table.size()), hits.load()});
}

}  // namespace

// The table's own operators are catch-all (CompositeImplicitAutograd): no key to dispatch on.
TORCH_LIBRARY_FRAGMENT(convfuse, m) {
  m.def("_native_add(Tensor u, Tensor k, Tensor? D, Tensor? pre_gate, Tensor? post_gate, int n, int start, "
        "int length, float scale, float n_power, bool conj_kernel, ScalarType out_dtype, str kernel, "
        "bool constant_kernel, int spectrum_bins, int fft_n, int wstart, int wlength, float kscale, bool kconj, "
        "ScalarType dtype, ScalarType result_dtype, int[] out_shape) -> bool",
        torch::CppFunction::makeFromBoxedFunction<&add>());
  m.def("_native_clear() -> ()", torch::CppFunction::makeFromBoxedFunction<&clear>());
  m.def("_native_stats() -> int[]", torch::CppFunction::makeFromBoxedFunction<&stats>());
  // torch.fft.rfft / irfft along the last axis with MKL descriptors kept per thread (mkl_fft.h)
  m.def("_rfft(Tensor x, int n) -> Tensor", &rfft_op);
  m.def("_irfft(Tensor X, int n) -> Tensor", &irfft_op);
  m.def("_mkl_descriptors() -> bool", +[]() { return convfuse_mkl::available(); });
  // out = irfftn(rfftn(u, s=n) * total * (conj ? conj(K) : K), s=n): u, out (Ko, Hk, *n), K (Hk, *spectrum)
  m.def("_convnd_kept_out(Tensor u, Tensor K, int[] n, float total, bool conj, Tensor(a!) out) -> ()",
        &convnd_kept_op);
  m.def("_mkl_md_descriptors() -> bool", +[]() { return convfuse_mkl::available_md(); });
  // built with OpenMP: the multi-axis items share torch's intra-op threads (run_parallel)
  m.def("_native_openmp() -> bool", +[]() { return convfuse_mkl::parallel_built(); });
  // the direct algorithm's sliding dot products (direct.h): x (R, Lx), w (C, K) -> (R, count)
  m.def("_direct_rows(Tensor x, Tensor w, int lo, int count) -> Tensor", &convfuse_direct::rows);
  // FrequencySparse's rows on a pruned transform (mkl_pruned.h): x (..., W) float32, K (C, M) complex64
  m.def("_pruned_conv(Tensor x, Tensor K, int n, int n1, int start, int length) -> Tensor",
        &convfuse_mkl::pruned_conv);
  m.def("_pruned_conv_out(Tensor x, Tensor K, int n, int n1, int start, int length, Tensor(a!) out) -> ()",
        &convfuse_mkl::pruned_conv_out);
}

TORCH_LIBRARY_IMPL(convfuse, AutogradCPU, m) {
  m.impl("fft_conv", torch::CppFunction::makeFromBoxedFunction<&autograd_cpu>());
}

TORCH_LIBRARY_IMPL(convfuse, CPU, m) {
  m.impl("fft_conv", torch::CppFunction::makeFromBoxedFunction<&cpu>());
}
