"""``torch.ops.convfuse.fft_conv_mix``: the channel-mixing FFT convolution (conv1d/conv2d by FFT).

With d = len(n) convolved (last) axes, N = n1 * ... * nd, u (*B, groups*Ci, *Lu) and the
conv weight layout w (groups*Co, Ci, *Lk):

    c[b, g*Co+o] = sum_{i<Ci} cyclic_conv_n(u[b, g*Ci+i], w[g*Co+o, i])   (correlation: conj_kernel)
    out = (scale * N**n_power * window(c) + bias[:, None...]).to(out_dtype)      (*B, groups*Co, *length)

Signals are truncated or zero-padded to n along each axis as ``rfftn(x, s=n)`` does; the
window takes samples (start_i + t_i) mod n_i, t_i < length_i.  In frequency this is one complex
(Ci x Co) matrix per frequency: the per-frequency product the CPU implementation
(``convfuse.backends.cpu_mix``) runs as batched GEMMs; ``fft_conv_mix_reference`` is the plain
``torch.fft`` definition (any device, the ground truth of the tests).

Compute dtype: ``compute_dtype(u, w, bias)`` (fp32 for fp16/bf16/fp32, fp64 when any operand
is fp64), as ``fft_convnd``; a bias counts because eager's ``+ bias`` would promote.

Gradients (derived per axis from the 1-D formulas, ``convfuse.ops.cyclic_grads``), with
s = scale * N**n_power, g the output's gradient and back = -start mod n:
- convolution: d u[b, i] = s * sum_o corr(g[b, o], w[o, i])  at back   (w transposed over channels)
               d w[o, i] = s * sum_b corr(g[b, o], u[b, i])  at back   (a contraction over the batch)
- correlation: d u[b, i] = s * sum_o conv(g[b, o], w[o, i])  at back
               d w[o, i] = s * sum_b corr(u[b, i], g[b, o])  at start
- d bias = g summed over batch and convolved axes.
Each is a call of this operator on transposed views (the batch of d w's call is an output
channel and its channels are the batch), so every order of derivative is this operator again.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

from convfuse import ops_autograd
from convfuse.backends.common import compute_dtype

NAME = "convfuse.fft_conv_mix"
_log = logging.getLogger(__name__)
# False runs the plain reference on CPU too (benchmarks compare the two; a way out).
CPU_IMPL = True


def _violated(cond) -> bool:
    """Whether ``cond`` certainly fails.  A symbolic condition (fake tensors under dynamic shapes)
    counts as failing only when it fails for every value of its symbols: a check never adds a
    guard, and the implementation checks the concrete sizes again at run time."""
    if isinstance(cond, bool):
        return not cond
    return statically_known_true(torch.sym_not(cond))


def check(u: Tensor, w: Tensor, bias: Optional[Tensor], n, start, length, groups: int,
          out_dtype: Optional[torch.dtype] = None) -> None:
    d = len(n)
    if d < 1 or len(start) != d or len(length) != d:
        raise ValueError(f"{NAME}: n, start and length need one entry per convolved axis "
                         f"(got {len(n)}, {len(start)}, {len(length)})")
    for name, t in (("u", u), ("w", w), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{NAME}: {name} must be a real floating tensor, got {t.dtype}")
    if out_dtype is not None and not out_dtype.is_floating_point:
        raise TypeError(f"{NAME}: out_dtype must be a real floating dtype, got {out_dtype}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{NAME}: groups must be a positive integer, got {groups!r}")
    if u.dim() < d + 1:
        raise ValueError(f"{NAME}: u of shape {tuple(u.shape)} needs a channel axis before its {d} convolved axes")
    if w.dim() != d + 2:
        raise ValueError(f"{NAME}: w of shape {tuple(w.shape)} must be (groups*Co, Ci, *kernel) "
                         f"with {d} kernel axes")
    channels, out_channels, ci = u.shape[-d - 1], w.shape[0], w.shape[1]
    if _violated(channels % groups == 0) or _violated(out_channels % groups == 0):
        raise ValueError(f"{NAME}: input channels ({channels}) and output channels ({out_channels}) "
                         f"must both be divisible by groups ({groups})")
    if _violated(ci * groups == channels):
        raise ValueError(f"{NAME}: w has {ci} input channels per group, u has {channels} channels "
                         f"in {groups} group(s) ({channels} / {groups} per group expected)")
    for i, (ni, si, li) in enumerate(zip(n, start, length)):
        if _violated(ni >= 1) or _violated(si >= 0) or _violated(si < ni) or _violated(li >= 0) \
                or _violated(li <= ni):
            raise ValueError(f"{NAME}: axis {i}: window start {si}, length {li} outside FFT size {ni} "
                             f"(need 0 <= start < n and 0 <= length <= n)")
    if bias is not None and (bias.dim() != 1 or _violated(bias.shape[0] == out_channels)):
        raise ValueError(f"{NAME}: bias of shape {tuple(bias.shape)} must be ({out_channels},), "
                         f"one value per output channel")


def output_shape(u: Tensor, w: Tensor, length) -> list:
    d = len(length)
    return [*u.shape[: u.dim() - d - 1], w.shape[0], *length]


def _bias_view(bias: Tensor, d: int) -> Tensor:
    return bias.reshape(bias.shape[0], *([1] * d))  # (groups*Co, 1, ..., 1): broadcast over the axes


def fft_conv_mix_reference(
    u: Tensor, w: Tensor, bias: Optional[Tensor], n: list[int], start: list[int], length: list[int],
    scale: float, n_power: float, conj_kernel: bool, groups: int, out_dtype: torch.dtype,
) -> Tensor:
    """The definition in plain torch.fft (rfftn both, an einsum over channels per frequency,
    irfftn, window, bias): any device, and the ground truth for the CPU path."""
    check(u, w, bias, n, start, length, groups, out_dtype)
    d = len(n)
    dtype = compute_dtype(u, w, bias)
    shape = output_shape(u, w, length)
    if math.prod(shape) == 0:
        return torch.zeros(shape, dtype=out_dtype, device=u.device)
    axes = list(range(-d, 0))
    batch = u.shape[: u.dim() - d - 1]
    ci, co = w.shape[1], w.shape[0] // groups
    x = u.to(dtype).reshape(-1, groups, ci, *u.shape[-d:])  # (Bf, G, Ci, *Lu)
    U = torch.fft.rfftn(x, s=n, dim=axes)  # (Bf, G, Ci, *spec)
    K = torch.fft.rfftn(w.to(dtype).reshape(groups, co, ci, *w.shape[-d:]), s=n, dim=axes)  # (G, Co, Ci, *spec)
    if conj_kernel:
        K = K.conj()
    Y = torch.einsum("bgi...,goi...->bgo...", U, K)  # (Bf, G, Co, *spec)
    c = torch.fft.irfftn(Y, s=n, dim=axes) * (scale * float(math.prod(n)) ** n_power)
    y = window_nd(c, list(start), list(length)).reshape(*batch, groups * co, *length)
    if bias is not None:
        y = y + _bias_view(bias.to(dtype), d)
    return y.to(out_dtype).contiguous()


def window_nd(c: Tensor, starts: list[int], lengths: list[int]) -> Tensor:
    """Samples (start_i + t_i) mod n_i along the last len(starts) axes: the same definition as
    ``cpu_nd.window_nd``, restated here so the reference shares no code with what it checks."""
    d = len(starts)
    for i, (s, length) in enumerate(zip(starts, lengths)):
        axis = c.dim() - d + i
        idx = (torch.arange(length, device=c.device) + s) % c.shape[axis]
        c = c.index_select(axis, idx)
    return c


@torch.library.custom_op("convfuse::fft_conv_mix", mutates_args=())
def fft_conv_mix(
    u: Tensor,
    w: Tensor,
    bias: Optional[Tensor],
    n: list[int],
    start: list[int],
    length: list[int],
    scale: float,
    n_power: float,
    conj_kernel: bool,
    groups: int,
    out_dtype: torch.dtype,
    constant_kernel: bool = False,
) -> Tensor:
    """``constant_kernel``: the caller proves w is module state read as is (its spectrum may then
    be cached while w's bits are unchanged); only the compiler or a direct caller can know that."""
    return _impl(u, w, bias, n, start, length, scale, n_power, conj_kernel, groups, out_dtype, constant_kernel)


def _impl(u, w, bias, n, start, length, scale, n_power, conj_kernel, groups, out_dtype, constant_kernel=False):
    check(u, w, bias, n, start, length, groups, out_dtype)
    n, start, length = list(n), list(start), list(length)
    with _exact_precision(u):
        if CPU_IMPL and u.device.type == "cpu" and w.device.type == "cpu" and (bias is None or bias.device.type == "cpu"):
            return _cpu()(u, w, bias, n, start, length, scale, n_power, conj_kernel, groups, out_dtype,
                                    compute_dtype(u, w, bias), constant_kernel)
        return fft_conv_mix_reference(u, w, bias, n, start, length, scale, n_power, conj_kernel, groups, out_dtype)


def _cpu():
    # Imported on first use: the reference above must not depend on what it checks.
    global _cpu_impl
    if _cpu_impl is None:
        from convfuse.backends.cpu_mix import fft_conv_mix_cpu as _cpu_impl
    return _cpu_impl


_cpu_impl = None


def _exact_precision(t: Tensor):
    # Autocast would run F.conv1d/conv2d and the GEMMs in bf16/fp16: the operator computes in
    # the compute dtype whatever the caller's autocast state (as convfuse.ops.exact_precision).
    if torch.is_autocast_enabled(t.device.type):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


# The CPU kernel straight on the dispatcher's CPU key, as convfuse/ops.py does for fft_conv:
# custom_op's own backend wrapper costs a dynamo-disable frame and an aliasing check per call,
# a tenth of a small call's time.
_CPU_LIBRARY = torch.library.Library("convfuse", "IMPL")
_CPU_LIBRARY.impl("fft_conv_mix", _impl, "CPU")


@fft_conv_mix.register_kernel("cuda")
def _cuda_kernel(u, w, bias, n, start, length, scale, n_power, conj_kernel, groups, out_dtype, constant_kernel=False):
    # The fused Triton kernel where its plan applies (triton_monarch/mix.py: 1-D, n <= 2048), the
    # reference otherwise (run_conv_mix returns why as a string), as ops_spectral does.  A Triton
    # failure on a device never measured must not fail a model eager runs: the reference computes
    # the same thing, and the warning says what happened.
    check(u, w, bias, n, start, length, groups, out_dtype)
    try:
        from convfuse.backends.triton_monarch.mix import run_conv_mix

        y = run_conv_mix(u, w, bias, list(n), list(start), list(length), scale, n_power, conj_kernel, groups,
                         out_dtype, constant_kernel)
    except (ValueError, TypeError):
        raise
    except Exception as exc:  # noqa: BLE001
        _log.warning("convfuse: the Triton fft_conv_mix kernel failed (%s: %s); running the reference",
                     type(exc).__name__, exc)
        y = "triton failed"
    if isinstance(y, str):
        with _exact_precision(u):
            return fft_conv_mix_reference(u, w, bias, n, start, length, scale, n_power, conj_kernel, groups, out_dtype)
    return y


@fft_conv_mix.register_fake
def _(u, w, bias, n, start, length, scale, n_power, conj_kernel, groups, out_dtype, constant_kernel=False):
    check(u, w, bias, n, start, length, groups, out_dtype)
    return u.new_empty(output_shape(u, w, length), dtype=out_dtype)


def _setup(ctx, inputs, output):
    u, w, bias, n, start, length, scale, n_power, conj_kernel, groups, out_dtype, *rest = inputs
    ctx.save_for_backward(u, w, bias)
    ctx.params = (list(n), list(start), list(length), scale, n_power, conj_kernel, groups, bool(rest and rest[0]))


def _fit(x: Tensor, sizes, d: int) -> Tensor:
    """x zero-padded along its last d axes to ``sizes``: samples beyond n were truncated by the
    forward, so their gradient is zero."""
    pad = []
    for i in reversed(range(d)):
        pad += [0, sizes[i] - x.shape[x.dim() - d + i]]
    return F.pad(x, pad) if any(not statically_known_true(p == 0) for p in pad) else x


def _backward(ctx, grad):
    u, w, bias = ctx.saved_tensors
    n, start, length, scale, n_power, conj, groups, constant = ctx.params
    need_u, need_w, need_b = ctx.needs_input_grad[:3]
    d = len(n)
    dtype = compute_dtype(u, w, bias)
    g = grad.to(dtype)  # (*B, G*Co, *length)
    G, ci = groups, w.shape[1]
    co = w.shape[0] // G
    Lu, Lk = list(u.shape[-d:]), list(w.shape[-d:])
    back = [(-s) % ni for s, ni in zip(start, n)]
    sp = list(range(3, 3 + d))  # the convolved axes of a (x, G, y, *axes) view
    du = dw = db = None
    if need_u:
        wt = w.to(dtype).unflatten(0, (G, co)).transpose(1, 2).flatten(0, 1)  # (G*Ci, Co, *Lk): w^T per group
        # A transposed view of a constant weight is constant; with groups it is a fresh copy.
        du = fft_conv_mix(g, wt, None, n, back, [torch.sym_min(a, b) for a, b in zip(Lu, n)], scale, n_power,
                          not conj, G, dtype, constant and G == 1)
        du = _fit(du, Lu, d).to(u.dtype)
    if need_w:
        klen = [torch.sym_min(a, b) for a, b in zip(Lk, n)]
        u3 = u.to(dtype).reshape(-1, G * ci, *Lu)  # (Bf, G*Ci, *Lu)
        g3 = g.reshape(-1, G * co, *length)  # (Bf, G*Co, *length)
        bf = u3.shape[0]
        if not conj:
            # x[o, g*Bf+b] = g[b, g*Co+o], weight y[g*Ci+i, b] = u[b, g*Ci+i]: out[o, g*Ci+i] = d w[g*Co+o, i]
            x = g3.unflatten(1, (G, co)).permute(2, 1, 0, *sp).reshape(co, G * bf, *length)
            y = u3.transpose(0, 1)  # (G*Ci, Bf, *Lu)
            out = fft_conv_mix(x, y, None, n, back, klen, scale, n_power, True, G, dtype)  # (Co, G*Ci, *klen)
            dw = out.unflatten(1, (G, ci)).permute(1, 0, 2, *sp).reshape(G * co, ci, *klen)
        else:
            # x[i, g*Bf+b] = u[b, g*Ci+i], weight y[g*Co+o, b] = g[b, g*Co+o]: out[i, g*Co+o] = d w[g*Co+o, i]
            x = u3.unflatten(1, (G, ci)).permute(2, 1, 0, *sp).reshape(ci, G * bf, *Lu)
            y = g3.transpose(0, 1)  # (G*Co, Bf, *length)
            out = fft_conv_mix(x, y, None, n, list(start), klen, scale, n_power, True, G, dtype)  # (Ci, G*Co, *klen)
            dw = out.transpose(0, 1)
        dw = _fit(dw, Lk, d).to(w.dtype)
    if need_b and bias is not None:
        axis = g.dim() - d - 1
        db = g.sum(dim=[a for a in range(g.dim()) if a != axis]).to(bias.dtype)
    return du, dw, db, None, None, None, None, None, None, None, None, None


def _mix_tangent(u, w, bias, n, start, length, scale, n_power, conj_kernel, groups, out_dtype, constant_kernel=False):
    # forward-mode AD: the plain torch.fft definition carries the tangents (ops_autograd.register)
    return fft_conv_mix_reference(u, w, bias, n, start, length, scale, n_power, conj_kernel, groups, out_dtype)


ops_autograd.register(fft_conv_mix, _backward, _setup, cpu_kernel=_impl, tangent_reference=_mix_tangent)
