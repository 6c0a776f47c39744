"""``torch.ops.convfuse.fft_convnd``: the cyclic convolution over the last d axes (GFNet-style 2-D).

    y[..., t1..td] = scale * N**n_power * c[(start_i + t_i) mod n_i]_i,   N = n1 * ... * nd
    c = u (*) k, the d-dimensional cyclic convolution at sizes n (the correlation when conj_kernel)

It is the multi-axis sibling of ``fft_conv`` (convfuse/ops.py): the same definition axis by
axis, signals truncated or zero-padded to n as ``rfftn(x, s=n)`` does, batch dimensions
broadcast, fp32 compute for fp16/bf16/fp32 inputs.  On CPU it runs
``convfuse.backends.cpu_nd`` (tiles on the 1-D path's thread pool, the kernel spectrum
computed once, cached across calls for a ``constant_kernel``); elsewhere, and as the ground
truth for tests, ``fft_convnd_reference`` (``torch.fft``, cuFFT on GPUs).  Its backward is
two more calls of itself, exactly as in 1-D.

``kernel_is_spectrum``: k is the kernel's one-sided spectrum W (complex, (..., n1, ..., nd//2+1)),
as GFNet's parameter is, and the operator is eager's ``irfftn(rfftn(u, s=n) * W, s=n)``
(windowed and scaled as above; ``W.conj()`` for a correlation).  The inverse reads only W's
Hermitian part H(W) = rfftn(irfftn(W, s=n)), and the product of a real signal's spectrum with
W has the Hermitian part U * H(W), so this is the convolution with the kernel irfftn(W, s=n):
the same function, without transforming W to that kernel and back on every call.  The
gradient with respect to W is autograd's through eager's program: zero on the imaginary parts
irfftn discards (self-conjugate bins), doubled on the bins that stand for two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from convfuse import config, ops_autograd
from convfuse.backends.common import broadcast_shapes, compute_dtype
from convfuse.backends.cpu_nd import fft_convnd_cpu, window_nd


def _batch_shape(u: Tensor, k: Tensor, d: int) -> torch.Size:
    return broadcast_shapes(u.shape[:-d], k.shape[:-d])


def spectrum_shape(n: list[int]) -> list[int]:
    """Bins of a one-sided spectrum at sizes n (only the last axis is halved)."""
    return [*n[:-1], n[-1] // 2 + 1]


def _compute_dtype(u: Tensor, k: Tensor, spectrum: bool) -> torch.dtype:
    if not spectrum:
        return compute_dtype(u, k)
    # eager promotes rfftn(u) (complex64 for fp32) with W: complex128 on either side is fp64
    wide = u.dtype == torch.float64 or k.dtype == torch.complex128
    return torch.float64 if wide else torch.float32


def fft_convnd_reference(
    u: Tensor,
    k: Tensor,
    n: list[int],
    start: list[int],
    length: list[int],
    scale: float,
    n_power: float,
    conj_kernel: bool,
    out_dtype: torch.dtype,
    kernel_is_spectrum: bool = False,
) -> Tensor:
    """The definition in plain torch.fft: any device, and the ground truth for the CPU path."""
    d = len(n)
    _check(u, k, n, start, length, kernel_is_spectrum)
    dtype = _compute_dtype(u, k, kernel_is_spectrum)
    shape = (*_batch_shape(u, k, d), *length)
    if torch.Size(shape).numel() == 0:
        return torch.zeros(shape, dtype=out_dtype, device=u.device)
    axes = list(range(-d, 0))
    U = torch.fft.rfftn(u.to(dtype), s=n, dim=axes)
    if kernel_is_spectrum:
        K = k.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    else:
        K = torch.fft.rfftn(k.to(dtype), s=n, dim=axes)
    if conj_kernel:
        K = K.conj()
    total = scale * float(math.prod(n)) ** n_power
    c = torch.fft.irfftn(U * (K * total), s=n, dim=axes)
    return window_nd(c, start, length).to(out_dtype).contiguous()


@torch.library.custom_op("convfuse::fft_convnd", mutates_args=())
def fft_convnd(
    u: Tensor,
    k: Tensor,
    n: list[int],
    start: list[int],
    length: list[int],
    scale: float,
    n_power: float,
    conj_kernel: bool,
    out_dtype: torch.dtype,
    constant_kernel: bool = False,
    kernel_is_spectrum: bool = False,
) -> Tensor:
    """``constant_kernel``: the caller proves k is module state read as is (its spectrum may then
    be cached until k changes); only the compiler or a direct caller can know that.
    ``kernel_is_spectrum``: k is the kernel's one-sided spectrum (see the module docstring)."""
    return _fft_convnd_impl(u, k, n, start, length, scale, n_power, conj_kernel, out_dtype, constant_kernel,
                            kernel_is_spectrum)


def _fft_convnd_impl(u, k, n, start, length, scale, n_power, conj_kernel, out_dtype, constant_kernel=False,
                     kernel_is_spectrum=False):
    # convfuse.config.nd_cpu = False (CONVFUSE_ND_CPU=0) runs the reference on CPU too
    # (benchmarks compare the two; a way out)
    if config.nd_cpu and u.device.type == "cpu" and k.device.type == "cpu":
        _check(u, k, n, start, length, kernel_is_spectrum)
        return fft_convnd_cpu(u, k, list(n), list(start), list(length), scale, n_power, conj_kernel, out_dtype,
                              _compute_dtype(u, k, kernel_is_spectrum), constant_kernel, kernel_is_spectrum)
    return fft_convnd_reference(u, k, n, start, length, scale, n_power, conj_kernel, out_dtype, kernel_is_spectrum)


def _fft_convnd_cpu_kernel(u, k, n, start, length, scale, n_power, conj_kernel, out_dtype, constant_kernel=False,
                           kernel_is_spectrum=False):
    # straight on the dispatcher's CPU key, as fft_conv's (convfuse/ops.py): custom_op's own
    # backend wrapper costs a dynamo-disable frame and an aliasing check per call
    return _fft_convnd_impl(u, k, n, start, length, scale, n_power, conj_kernel, out_dtype, constant_kernel,
                            kernel_is_spectrum)


_CPU_LIBRARY = torch.library.Library("convfuse", "IMPL")
_CPU_LIBRARY.impl("fft_convnd", _fft_convnd_cpu_kernel, "CPU")


def _check(u, k, n, start, length, spectrum: bool = False) -> None:
    d = len(n)
    if not (len(start) == len(length) == d >= 1):
        raise ValueError("convfuse.fft_convnd: n, start and length need one entry per convolved axis")
    if spectrum:
        if not k.is_complex():
            raise TypeError(f"convfuse.fft_convnd: a kernel spectrum must be complex, got {k.dtype}")
        bins = spectrum_shape(list(n))
        if k.dim() < d or list(k.shape[k.dim() - d:]) != bins:
            raise ValueError(f"convfuse.fft_convnd: a kernel spectrum at sizes {list(n)} has {bins} bins along "
                             f"its last {d} axes, got shape {list(k.shape)}")
    for name, t in (("u", u),) if spectrum else (("u", u), ("k", k)):
        if not t.is_floating_point():
            raise TypeError(f"convfuse.fft_convnd: {name} must be a real floating tensor, got {t.dtype}")
        if t.dim() < d:
            raise ValueError(f"convfuse.fft_convnd: {name} has fewer than {d} dimensions")
    for ni, si, li in zip(n, start, length):
        if ni < 1 or not 0 <= si < ni or not 0 <= li <= ni:
            raise ValueError(f"convfuse.fft_convnd: window start {si}, length {li} outside FFT size {ni}")


@fft_convnd.register_fake
def _(u, k, n, start, length, scale, n_power, conj_kernel, out_dtype, constant_kernel=False, kernel_is_spectrum=False):
    _check(u, k, n, start, length, kernel_is_spectrum)
    return u.new_empty((*_batch_shape(u, k, len(n)), *length), dtype=out_dtype)


def _setup(ctx, inputs, output):
    u, k, n, start, length, scale, n_power, conj_kernel, out_dtype, *rest = inputs
    ctx.save_for_backward(u, k)
    ctx.params = (list(n), list(start), list(length), scale, n_power, conj_kernel, bool(rest and rest[0]),
                  bool(len(rest) > 1 and rest[1]))


def _backward(ctx, grad):
    """Axis by axis the 1-D formulas (convfuse/ops.py, cyclic_grads): correlations for a
    convolution, a convolution and a correlation for a correlation, windows at -start."""
    u, k = ctx.saved_tensors
    n, start, length, scale, n_power, conj, constant, spectrum = ctx.params
    d = len(n)
    dtype = _compute_dtype(u, k, spectrum)
    g = grad.to(dtype)
    back = [(-s) % ni for s, ni in zip(start, n)]
    du = dk = None

    def fit(x: Tensor, like: Tensor) -> Tensor:
        pad = []
        for i in reversed(range(d)):
            pad += [0, like.shape[like.dim() - d + i] - x.shape[x.dim() - d + i]]
        return F.pad(x, pad) if any(pad) else x

    if ctx.needs_input_grad[0]:
        du = fft_convnd(g, k, n, back, [min(u.shape[u.dim() - d + i], n[i]) for i in range(d)],
                        scale, n_power, not conj, dtype, constant, spectrum)
        du = fit(du, u).sum_to_size(u.shape).to(u.dtype)
    if ctx.needs_input_grad[1] and spectrum:
        dk = _spectrum_grad(u.to(dtype), g, n, start, scale * float(math.prod(n)) ** n_power, conj)
        dk = dk.sum_to_size(k.shape).to(k.dtype)
    elif ctx.needs_input_grad[1]:
        klen = [min(k.shape[k.dim() - d + i], n[i]) for i in range(d)]
        if conj:
            dk = fft_convnd(u.to(dtype), g, n, start, klen, scale, n_power, True, dtype)
        else:
            dk = fft_convnd(g, u.to(dtype), n, back, klen, scale, n_power, True, dtype)
        dk = fit(dk, k).sum_to_size(k.shape).to(k.dtype)
    return du, dk, None, None, None, None, None, None, None, None, None


def _spectrum_grad(u: Tensor, g: Tensor, n: list[int], start: list[int], total: float, conj: bool) -> Tensor:
    """d W of y = window(total * irfftn(U * W')), W' = W or conj(W), in torch's convention for
    complex gradients, at the output's batch shape: with Z = U * W' and R = irfftn,
    d Z = total * R^T(gw), gw the output gradient placed back on the n-grid, and R^T what
    autograd's irfftn backward computes (rfftn / N, the bins standing for two doubled);
    then d W = conj(U) * d Z, or U * conj(d Z) for the correlation.  Plain torch, so it is
    differentiable again."""
    d = len(n)
    axes = list(range(-d, 0))
    pad = []
    for i in reversed(range(d)):
        pad += [0, n[i] - g.shape[g.dim() - d + i]]
    gw = torch.roll(F.pad(g, pad), shifts=list(start), dims=axes) if any(start) else F.pad(g, pad)
    G = torch.fft.rfftn(gw, s=n, dim=axes)
    twice = n[-1] - (n[-1] // 2 + 1)  # bins 1 .. n - (n//2 + 1) have a mirror outside the half
    weight = torch.ones(n[-1] // 2 + 1, dtype=g.dtype, device=g.device)
    weight[1 : 1 + twice] = 2.0
    dZ = G * (weight * (total / math.prod(n)))
    U = torch.fft.rfftn(u, s=n, dim=axes)
    return U * dZ.conj() if conj else U.conj() * dZ


def _fft_convnd_tangent(u, k, n, start, length, scale, n_power, conj_kernel, out_dtype, constant_kernel=False,
                        kernel_is_spectrum=False):
    # forward-mode AD: the plain torch.fft definition carries the tangents (ops_autograd.register)
    return fft_convnd_reference(u, k, n, start, length, scale, n_power, conj_kernel, out_dtype, kernel_is_spectrum)


ops_autograd.register(fft_convnd, _backward, _setup, cpu_kernel=_fft_convnd_cpu_kernel,
                      tangent_reference=_fft_convnd_tangent)
