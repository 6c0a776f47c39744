"""The fused FFT-convolution operator, ``torch.ops.convfuse.fft_conv``.

Its definition is in ``convfuse.spec``; implementations are in ``convfuse.backends``.
It is a ``torch.library.custom_op`` with a fake implementation (so Dynamo, AOT
autograd and Inductor can trace it with symbolic sizes) and an autograd formula
whose backward is two more calls of the same operator: the gradients of a cyclic
convolution are cyclic correlations (and of a correlation, a convolution and a
correlation), so no differentiation through any implementation is needed.

Both operators register a CUDA kernel of their own (``register_kernel("cuda")``): the same
implementation under a device guard for the inputs' GPU, so tensors on a GPU other than the
current one launch their Triton kernels and allocate their buffers there.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from convfuse import config, ops_autograd
from convfuse.backends import cpu_native, cpu_plan
from convfuse.backends.common import check_epilogue_operand, compute_dtype, output_shape
from convfuse.backends.cpu import CpuCall
from convfuse.backends.dispatch import run_fft_conv, run_fft_conv_grad
from convfuse.spec import ConvParams


@torch.library.custom_op("convfuse::fft_conv", mutates_args=())
def fft_conv(
    u: Tensor,
    k: Tensor,
    D: Optional[Tensor],
    pre_gate: Optional[Tensor],
    post_gate: Optional[Tensor],
    n: int,
    start: int,
    length: int,
    scale: float,
    n_power: float,
    conj_kernel: bool,
    out_dtype: torch.dtype,
    kernel: str,
    constant_kernel: bool = False,
    spectrum_bins: int = 0,
) -> Tensor:
    """out = ((scale * n**n_power * window(u*pre_gate (*) k) + u*pre_gate*D) * post_gate).to(out_dtype).

    u: (..., Lu) and k: (..., Lk), convolved along the last axis at FFT size n,
    batch dimensions broadcast; the result is (broadcast(...), length).  With
    spectrum_bins = M > 0, k stands for the kernel whose one-sided spectrum at size n
    keeps only its lowest M bins (FrequencySparse).
    """
    return _fft_conv_impl(u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel, out_dtype,
                          kernel, constant_kernel, spectrum_bins)


def _fft_conv_impl(u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel, out_dtype, kernel,
                   constant_kernel, spectrum_bins):
    p = ConvParams(n, start, length, scale, n_power, conj_kernel, out_dtype, constant_kernel, spectrum_bins)
    p.validate()
    _check_inputs(u, k, D, pre_gate, post_gate, length)
    # The fake implementation promises a fresh contiguous tensor; a window is a strided view.
    with exact_precision(u):
        return run_fft_conv(u, k, D, pre_gate, post_gate, p, kernel).contiguous()


def _fft_conv_cpu_kernel(u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel, out_dtype,
                         kernel, constant_kernel=False, spectrum_bins=0):
    """The CPU entry of the dispatcher (registered on the ``CPU`` key, below autograd): a call of a
    shape seen before runs its per-shape plan (``cpu_plan``) after one dictionary lookup; no
    argument checks, broadcasting or algorithm choice per call.  Other kernels asked for on CPU
    tensors ("reference", "triton" under the interpreter) take the general path."""
    if kernel != "cpu" and kernel != "auto":
        return _fft_conv_impl(u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel, out_dtype,
                              kernel, constant_kernel, spectrum_bins)
    key = (n, start, length, scale, n_power, conj_kernel, out_dtype, constant_kernel, spectrum_bins, config.cpu_algo,
           config.cpu_cache_min_us,
           u.shape, u.stride(), u.dtype, k.shape, k.stride(), k.dtype,
           None if D is None else (D.shape, D.stride(), D.dtype),
           None if pre_gate is None else (pre_gate.shape, pre_gate.stride(), pre_gate.dtype),
           None if post_gate is None else (post_gate.shape, post_gate.stride(), post_gate.dtype))
    call = cpu_plan.lookup(key)
    if call is None:
        made_in = cpu_native.generation()  # before any setting is read for the plan
        p = ConvParams(n, start, length, scale, n_power, conj_kernel, out_dtype, constant_kernel, spectrum_bins)
        p.validate()
        _check_inputs(u, k, D, pre_gate, post_gate, length)
        if k.device.type != "cpu" or any(t is not None and t.device.type != "cpu" for t in (D, pre_gate, post_gate)):
            return _fft_conv_impl(u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel,
                                  out_dtype, kernel, constant_kernel, spectrum_bins)
        call = cpu_plan.store(key, CpuCall(u, k, D, pre_gate, post_gate, p))
        if call.native:
            cpu_native.add((u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel, out_dtype,
                            kernel, constant_kernel, spectrum_bins), call, made_in)
    if torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return call(u, k, D, pre_gate, post_gate)
    return call(u, k, D, pre_gate, post_gate)


def exact_precision(t: Tensor):
    """Autocast off inside an implementation: eager's FFTs compute in fp32 under autocast, and
    so must the operator's convolutions and GEMMs (conv1d would otherwise run in bf16/fp16)."""
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def on_device(t: Tensor):
    """A device guard for a CUDA tensor's own device (a no-op elsewhere): Triton launches and
    allocations without one go to the *current* GPU, wherever the tensors live."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@fft_conv.register_kernel("cuda")
def _fft_conv_cuda(u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel, out_dtype, kernel,
                   constant_kernel=False, spectrum_bins=0):
    # The CUDA entry of the dispatcher: the same implementation, on the inputs' own GPU.
    with on_device(u):
        return _fft_conv_impl(u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel,
                              out_dtype, kernel, constant_kernel, spectrum_bins)


# The CPU kernel straight on the dispatcher's CPU key (custom_op's own backend wrapper costs
# ~8 us a call: a dynamo-disable frame and an aliasing check of a result that is always fresh).
# With the C++ kernels loaded (cpu_native), they hold fft_conv's CPU and AutogradCPU keys and
# hand every call they do not run to the twin ``_fft_conv_python``, which has the Python kernels.
_CPU_LIBRARY = torch.library.Library("convfuse", "IMPL")
_TWIN = "_fft_conv_python"
_TWIN_LIBRARY = torch.library.Library("convfuse", "FRAGMENT")
_TWIN_LIBRARY.define(str(torch.ops.convfuse.fft_conv.default._schema).replace("convfuse::fft_conv(", f"{_TWIN}(", 1))
_TWIN_LIBRARY.impl(_TWIN, _fft_conv_cpu_kernel, "CPU")
if not cpu_native.load():
    _CPU_LIBRARY.impl("fft_conv", _fft_conv_cpu_kernel, "CPU")


def _check_inputs(u, k, D, pre_gate, post_gate, length) -> torch.Size:
    for name, t in (("u", u), ("k", k), ("D", D), ("pre_gate", pre_gate), ("post_gate", post_gate)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"convfuse.fft_conv: {name} must be a real floating tensor, got {t.dtype}")
    if u.dim() < 1 or k.dim() < 1:
        raise ValueError("convfuse.fft_conv: u and k need at least one (convolved) dimension")
    shape = output_shape(u, k, pre_gate, length)
    check_epilogue_operand("D", D, shape)
    check_epilogue_operand("post_gate", post_gate, shape)
    return shape


@fft_conv.register_fake
def _(u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel, out_dtype, kernel,
      constant_kernel=False, spectrum_bins=0):
    shape = _check_inputs(u, k, D, pre_gate, post_gate, length)
    return u.new_empty(shape, dtype=out_dtype)


def _setup_context(ctx, inputs, output):
    u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel, out_dtype, kernel, *rest = inputs
    ctx.save_for_backward(u, k, D, pre_gate, post_gate)
    constant_kernel = rest[0] if rest else False
    spectrum_bins = rest[1] if len(rest) > 1 else 0
    ctx.params = (n, start, length, scale, n_power, conj_kernel, kernel, constant_kernel, spectrum_bins)


def cyclic_grads(g, ue, k, n, start, scale, n_power, conj_kernel, kernel, need_u, need_k, spectrum_bins=0):
    """Gradients of h = s * window(ue (*) k) (s = scale * n**n_power) w.r.t. ue and k, as calls
    of the operator itself (so they are differentiable again, and run on every kernel).

    Forward (convolution): h[t] = s * sum_j ue[j] k[(start + t - j) mod n], so
      d ue[j] = s * sum_t g[t] k[(t - (j - start)) mod n]  = correlation of g with k, window at -start
      d k[i]  = s * sum_t g[t] ue[(t - (i - start)) mod n] = correlation of g with ue, window at -start
    Forward (correlation): h[t] = s * sum_j ue[j] k[(j - start - t) mod n], so
      d ue[j] = s * (g (*) k)[(j - start) mod n]            = convolution, window at -start
      d k[i]  = s * sum_j ue[j] g[(j - (i + start)) mod n]  = correlation of ue with g, window at start
    A spectrum mask (spectrum_bins) is real and even, so it moves onto whichever operand
    plays the kernel.  Signals longer than n were truncated by the forward: their tail
    gets zero gradient.  d k is returned at the output's batch shape (not yet summed).
    """
    Lu, Lk = ue.shape[-1], k.shape[-1]
    back = (-start) % n
    du = dk = None
    if need_u:
        du = fft_conv(g, k, None, None, None, n, back, min(Lu, n), scale, n_power, not conj_kernel, g.dtype, kernel,
                      spectrum_bins=spectrum_bins)
        du = F.pad(du, (0, Lu - du.shape[-1])) if Lu > n else du
    if need_k:
        if conj_kernel:
            dk = fft_conv(ue, g, None, None, None, n, start, min(Lk, n), scale, n_power, True, g.dtype, kernel,
                          spectrum_bins=spectrum_bins)
        else:
            dk = fft_conv(g, ue, None, None, None, n, back, min(Lk, n), scale, n_power, True, g.dtype, kernel,
                          spectrum_bins=spectrum_bins)
        dk = F.pad(dk, (0, Lk - dk.shape[-1])) if Lk > n else dk
    return du, dk


@torch.library.custom_op("convfuse::fft_conv_grad", mutates_args=())
def fft_conv_grad(
    g: Tensor,
    ue: Tensor,
    k: Tensor,
    n: int,
    start: int,
    scale: float,
    n_power: float,
    conj_kernel: bool,
    kernel: str,
    need_u: bool,
    need_k: bool,
    need_h: bool = False,
    constant_kernel: bool = False,
    spectrum_bins: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward's transforms in one call: (d ue at the output's batch shape, d k summed to
    k's shape, h = the forward's scaled window of ue (*) k before skip and post-gate, which a
    post-gate's gradient needs); what is not asked for is an empty tensor.

    One operator, so an implementation can share transforms between the three (the CPU path
    transforms g and ue once each and sums d k over the batch in the frequency domain);
    elsewhere it is ``cyclic_grads`` and a forward call.
    """
    return _fft_conv_grad_impl(g, ue, k, n, start, scale, n_power, conj_kernel, kernel, need_u, need_k, need_h,
                               constant_kernel, spectrum_bins)


def _fft_conv_grad_impl(g, ue, k, n, start, scale, n_power, conj_kernel, kernel, need_u, need_k, need_h=False,
                        constant_kernel=False, spectrum_bins=0):
    p = ConvParams(n, start, g.shape[-1], scale, n_power, conj_kernel, g.dtype, constant_kernel, spectrum_bins)
    p.validate()
    with exact_precision(g):
        du, dk, h = run_fft_conv_grad(g, ue, k, p, kernel, need_u, need_k, need_h)
    if du is None and dk is None and h is None:
        du, dk = cyclic_grads(g, ue, k, n, start, scale, n_power, conj_kernel, kernel, need_u, need_k, spectrum_bins)
        dk = dk.sum_to_size(k.shape) if dk is not None else None
        if need_h:
            h = fft_conv(ue, k, None, None, None, n, start, g.shape[-1], scale, n_power, conj_kernel, g.dtype, kernel,
                         constant_kernel, spectrum_bins)
    return tuple(t.contiguous() if t is not None else g.new_empty(0) for t in (du, dk, h))


@fft_conv_grad.register_kernel("cuda")
def _fft_conv_grad_cuda(g, ue, k, n, start, scale, n_power, conj_kernel, kernel, need_u, need_k, need_h=False,
                        constant_kernel=False, spectrum_bins=0):
    with on_device(g):
        return _fft_conv_grad_impl(g, ue, k, n, start, scale, n_power, conj_kernel, kernel, need_u, need_k, need_h,
                                   constant_kernel, spectrum_bins)


@fft_conv_grad.register_fake
def _(g, ue, k, n, start, scale, n_power, conj_kernel, kernel, need_u, need_k, need_h=False, constant_kernel=False,
      spectrum_bins=0):
    du = g.new_empty(output_shape(g, k, None, ue.shape[-1])) if need_u else g.new_empty(0)
    dk = g.new_empty(k.shape) if need_k else g.new_empty(0)
    h = g.new_empty(output_shape(ue, k, None, g.shape[-1])) if need_h else g.new_empty(0)
    return du, dk, h


def _backward(ctx, grad):
    u, k, D, pre_gate, post_gate = ctx.saved_tensors
    n, start, length, scale, n_power, conj_kernel, kernel, constant_kernel, bins = ctx.params
    need = ctx.needs_input_grad
    dtype = compute_dtype(u, k, D, pre_gate, post_gate)
    ue = u.to(dtype) if pre_gate is None else u.to(dtype) * pre_gate.to(dtype)
    g = grad.to(dtype)

    # The gradient into h (before the post gate); h itself, when the gate needs a gradient,
    # is recomputed rather than saved by the forward (it costs one inverse transform per
    # row in the fused backward, a forward call otherwise).
    gh = g if post_gate is None else g * post_gate.to(dtype)
    need_h = post_gate is not None and need[4]
    need_ue = need[0] or need[3]
    if torch.is_grad_enabled():
        # create_graph=True (double backward): the composed form is differentiable.
        due, dk = cyclic_grads(gh, ue, k, n, start, scale, n_power, conj_kernel, kernel, need_ue, need[1], bins)
        h = fft_conv(ue, k, None, None, None, n, start, length, scale, n_power, conj_kernel, dtype, kernel,
                     constant_kernel, bins) if need_h else None
    else:
        due, dk, h = fft_conv_grad(gh, ue, k, n, start, scale, n_power, conj_kernel, kernel, need_ue, need[1], need_h,
                                   constant_kernel, bins)
        due, dk, h = (due if need_ue else None), (dk if need[1] else None), (h if need_h else None)
    d_post = None
    if need_h:
        h = h + ue * D.to(dtype) if D is not None else h
        d_post = (g * h).sum_to_size(post_gate.shape).to(post_gate.dtype)
    g = gh
    d_D = (g * ue).sum_to_size(D.shape).to(D.dtype) if D is not None and need[2] else None

    if due is not None and D is not None:
        due = due + g * D.to(dtype)
    du = d_pre = None
    if need[0]:
        du = due if pre_gate is None else due * pre_gate.to(dtype)
        du = du.sum_to_size(u.shape).to(u.dtype)
    if need[3]:
        d_pre = (due * u.to(dtype)).sum_to_size(pre_gate.shape).to(pre_gate.dtype)
    if dk is not None:
        dk = dk.sum_to_size(k.shape).to(k.dtype)
    return du, dk, d_D, d_pre, d_post, None, None, None, None, None, None, None, None, None, None


def _fft_conv_tangent(u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel, out_dtype,
                      kernel, constant_kernel, spectrum_bins):
    # forward-mode AD: the plain torch.fft definition carries the tangents (ops_autograd.register)
    return _fft_conv_impl(u, k, D, pre_gate, post_gate, n, start, length, scale, n_power, conj_kernel, out_dtype,
                          "reference", constant_kernel, spectrum_bins)


ops_autograd.register(fft_conv, _backward, _setup_context, cpu_kernel=_fft_conv_cpu_kernel, also_on=_TWIN,
                      tangent_reference=_fft_conv_tangent)
_CPU_LIBRARY.impl("fft_conv_grad", _fft_conv_grad_impl, "CPU")
ops_autograd.register(fft_conv_grad, None, None, cpu_kernel=_fft_conv_grad_impl)
