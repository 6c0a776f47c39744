"""``torch.ops.convfuse.fft_spectral_mix``: the Fourier-neural-operator spectral layer
(neuraloperator's SpectralConv1d/2d/3d) as one operator.

With d = len(n) transformed last axes and N = n1 * ... * nd:

    X = rfftn(u, s=n)                                   (*B, Ci, n1, ..., nd//2+1) complex
    Y = 0;  Y[block j] = einsum('b i ..., i o ... -> b o ...', X[block j], W_j)
    y = (scale * N**n_power * irfftn(Y, s=n)).to(out_dtype)          (*B, Co, *n)

Block j starts at ``lows[j*d : (j+1)*d]`` and has the sizes of W_j's last d axes.  Blocks lie
inside the one-sided spectrum and do not overlap (checked: overlapping assignments would mean
"the later block wins", which no implementation reproduces).

Where it runs: CPU tensors take ``convfuse.backends.cpu_spectral`` (only the blocks' bins are
ever computed; ``CPU_IMPL = False`` runs the reference instead), other devices the reference
``fft_spectral_mix_reference`` (plain torch.fft, cuFFT on GPUs), also the tests' ground truth.

Dtypes (the rule the compiler pass relies on): the compute dtype is fp64 when u is fp64 and
fp32 otherwise (fp16/bf16/fp32 u), the spectra are its complex dtype, and every W_j is cast to
that complex dtype.  Eager promotes instead (complex128 weights would lift an fp32 u's einsum to
complex128), so a call is only emitted where eager's dtypes are these.

Gradients (PyTorch's convention, conjugate Wirtinger), with G = grad_Y = c/N * D * rfftn(g)
(c = scale * N**n_power; D doubles the last-axis bins 1 .. n_d - (n_d//2 + 1), the ones
irfftn's one-sided input stands for twice):
- d u:   Re(N * ifftn(zero-padded d X)) with d X = G @ conj(W)^T; rfftn's adjoint halves exactly
         the bins D doubled, so d u = c * irfftn(scatter(rfftn(g)[block] @ W^H)) fit to u's
         sizes: this operator again, on g with the weights W_j^H (Co, Ci, ...);
- d W_j: sum over the batch of conj(X[block]) * G[block] per frequency: the sibling operator
         ``convfuse::fft_spectral_mix_wgrad``, whose own gradients are this operator again,
         so every order of derivative is expressed through these two ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from convfuse import ops_autograd  # torch only: no import cycle

_log = __import__("logging").getLogger("convfuse")
from torch.fx.experimental.symbolic_shapes import statically_known_true

NAME = "convfuse.fft_spectral_mix"
# False runs the plain reference on CPU too (benchmarks compare the two; a way out).
CPU_IMPL = True


def compute_dtypes(u: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(real, complex) compute dtypes: fp64 only for an fp64 u."""
    if u.dtype == torch.float64:
        return torch.float64, torch.complex128
    return torch.float32, torch.complex64


def _definitely(cond) -> bool:
    """True when ``cond`` holds for every value of its symbols (a plain bool: when it holds).
    Checks on symbolic sizes raise only on a certain violation, never add a guard."""
    return bool(cond) if isinstance(cond, bool) else statically_known_true(cond)


def check(u: Tensor, weights: list[Tensor], lows: list[int], n: list, out_dtype=None) -> None:
    d = len(n)
    if d < 1:
        raise ValueError(f"{NAME}: n needs one FFT size per transformed axis, got none")
    if not u.is_floating_point():
        raise TypeError(f"{NAME}: u must be a real floating tensor, got {u.dtype}")
    if u.dim() < d + 1:
        raise ValueError(f"{NAME}: u of shape {tuple(u.shape)} needs a channel axis and {d} transformed axes")
    if out_dtype is not None and not (out_dtype.is_floating_point and not out_dtype.is_complex):
        raise TypeError(f"{NAME}: out_dtype must be a real floating dtype, got {out_dtype}")
    if not weights:
        raise ValueError(f"{NAME}: at least one weight block is needed")
    if len(lows) != len(weights) * d:
        raise ValueError(f"{NAME}: lows needs {d} entries per weight block ({len(weights) * d}), got {len(lows)}")
    for i, ni in enumerate(n):
        if _definitely(ni < 1):
            raise ValueError(f"{NAME}: FFT size n[{i}] = {ni} must be positive")
    ci = u.shape[-d - 1]
    co = weights[0].shape[1] if weights[0].dim() >= 2 else None
    spectrum = [*n[:-1], n[-1] // 2 + 1]
    for j, w in enumerate(weights):
        if not w.is_complex():
            raise TypeError(f"{NAME}: weight {j} must be complex (complex64 or complex128), got {w.dtype}")
        if w.device != u.device:
            raise ValueError(f"{NAME}: weight {j} is on {w.device}, u on {u.device}")
        if w.dim() != d + 2:
            raise ValueError(f"{NAME}: weight {j} of shape {tuple(w.shape)} must be (Ci, Co, m1..m{d})")
        if _definitely(w.shape[0] != ci) or _definitely(w.shape[1] != co):
            raise ValueError(f"{NAME}: weight {j} of shape {tuple(w.shape)} does not map u's {ci} channels "
                             f"to weight 0's {co}")
        for i in range(d):
            lo, m = lows[j * d + i], w.shape[2 + i]
            if lo < 0 or _definitely(lo + m > spectrum[i]):
                raise ValueError(f"{NAME}: block {j} [{lo}, {lo} + {m}) on axis {i} lies outside the "
                                 f"spectrum's {spectrum[i]} bins (n = {list(n)})")
    for a in range(len(weights)):
        for b in range(a):
            if all(_definitely(lows[a * d + i] < lows[b * d + i] + weights[b].shape[2 + i])
                   and _definitely(lows[b * d + i] < lows[a * d + i] + weights[a].shape[2 + i]) for i in range(d)):
                raise ValueError(f"{NAME}: blocks {b} and {a} overlap (lows {lows[b * d:(b + 1) * d]} and "
                                 f"{lows[a * d:(a + 1) * d]}): the later block would win")


def out_shape(u: Tensor, weights: list[Tensor], n: list) -> list:
    d = len(n)
    return [*u.shape[: u.dim() - d - 1], weights[0].shape[1], *n]


def block_slices(lows: list[int], sizes: list, d: int, j: int) -> tuple:
    return tuple(slice(lows[j * d + i], lows[j * d + i] + sizes[i]) for i in range(d))


def fft_spectral_mix_reference(
    u: Tensor, weights: list[Tensor], lows: list[int], n: list[int],
    scale: float, n_power: float, out_dtype: torch.dtype, constant_weights: bool = False,
) -> Tensor:
    """The definition in plain torch: any device, and the ground truth for the CPU path."""
    check(u, weights, lows, n, out_dtype)
    d = len(n)
    real, cplx = compute_dtypes(u)
    axes = list(range(-d, 0))
    X = torch.fft.rfftn(u.to(real), s=n, dim=axes)  # (*B, Ci, n1, ..., nd//2+1)
    Y = X.new_zeros((*X.shape[: X.dim() - d - 1], weights[0].shape[1], *X.shape[X.dim() - d:]))
    for j, w in enumerate(weights):
        idx = (Ellipsis, slice(None), *block_slices(lows, w.shape[2:], d, j))
        xb = X[idx]
        xb = xb.reshape(math.prod(xb.shape[: xb.dim() - d - 1]), *xb.shape[xb.dim() - d - 1:])  # (b, Ci, *m)
        Y[idx] = torch.einsum("bi...,io...->bo...", xb, w.to(cplx)).reshape(Y[idx].shape)
    y = torch.fft.irfftn(Y, s=n, dim=axes)
    total = scale * float(math.prod(n)) ** n_power
    if total != 1.0:  # a pass over the output saved in the common case (eager's own layer has none)
        y = y * total
    return y.to(out_dtype).contiguous()


def wgrad_reference(u: Tensor, g: Tensor, lows: list[int], sizes: list[int], n: list[int],
                    scale: float, n_power: float) -> list[Tensor]:
    """d W_j for every block: kappa * sum_b conj(X[block]) * D * rfftn(g)[block], kappa = scale * N**n_power
    (the caller passes n_power - 1 for the 1/N of irfftn's normalization)."""
    d = len(n)
    real, _ = compute_dtypes(u)
    axes = list(range(-d, 0))
    X = torch.fft.rfftn(u.to(real), s=n, dim=axes)
    R = torch.fft.rfftn(g.to(real), s=n, dim=axes)
    R = R * doubling(n[-1], R.shape[-1], R.real.dtype, R.device)
    kappa = scale * float(math.prod(n)) ** n_power
    out = []
    for j in range(len(sizes) // d):
        idx = (Ellipsis, slice(None), *block_slices(lows, sizes[j * d:(j + 1) * d], d, j))
        batch = math.prod(X.shape[: X.dim() - d - 1])
        xj = X[idx].reshape(batch, *X[idx].shape[X.dim() - d - 1:])  # (Bf, Ci, *m)
        rj = R[idx].reshape(batch, *R[idx].shape[R.dim() - d - 1:])  # (Bf, Co, *m)
        out.append(torch.einsum("bi...,bo...->io...", xj.conj(), rj) * kappa)
    return out


def doubling(nd: int, bins: int, dtype: torch.dtype, device) -> Tensor:
    """(bins,) weights 1, 2, ..., 2, 1: the last-axis bins a one-sided spectrum stands for twice
    (bins 1 .. nd - (nd//2 + 1); not DC, not an even nd's Nyquist bin)."""
    D = torch.ones(bins, dtype=dtype, device=device)
    D[1: 1 + nd - (nd // 2 + 1)] = 2
    return D


@torch.library.custom_op("convfuse::fft_spectral_mix", mutates_args=())
def fft_spectral_mix(
    u: Tensor, weights: list[Tensor], lows: list[int], n: list[int],
    scale: float, n_power: float, out_dtype: torch.dtype, constant_weights: bool = False,
) -> Tensor:
    """``constant_weights``: the caller proves the weights are module state read as is (their
    prepared layout may then be cached while their bits are unchanged)."""
    return fft_spectral_mix_reference(u, weights, lows, n, scale, n_power, out_dtype)


@fft_spectral_mix.register_kernel("cpu")
def _(u, weights, lows, n, scale, n_power, out_dtype, constant_weights=False):
    if not CPU_IMPL:
        return fft_spectral_mix_reference(u, weights, lows, n, scale, n_power, out_dtype)
    from convfuse.backends.cpu_spectral import REFERENCE_BYTES, intra_op_threads, spectral_mix_cpu

    if u.numel() * u.element_size() < REFERENCE_BYTES:
        with intra_op_threads(1):  # eager's own few calls, on one thread (2 OpenMP threads stall under load)
            return fft_spectral_mix_reference(u, weights, lows, n, scale, n_power, out_dtype)
    check(u, weights, lows, n, out_dtype)

    return spectral_mix_cpu(u, list(weights), list(lows), list(n), scale, n_power, out_dtype, constant_weights)


@fft_spectral_mix.register_kernel("cuda")
def _(u, weights, lows, n, scale, n_power, out_dtype, constant_weights=False):
    # The fused Triton kernel where its plan applies (1-D, n <= 2048), the reference otherwise;
    # run_spectral_mix says why it does not apply by returning a string.
    # A Triton failure on a device we never measured must not fail a model eager runs: the
    # reference computes the same thing, and the warning says what happened.
    try:
        from convfuse.backends.triton_monarch.mix import run_spectral_mix

        y = run_spectral_mix(u, weights, lows, n, scale, n_power, out_dtype, constant_weights)
    except (ValueError, TypeError):
        raise  # bad arguments: the same error eager's reference would raise
    except Exception as exc:  # noqa: BLE001
        _log.warning("convfuse: the Triton fft_spectral_mix kernel failed (%s: %s); running the reference",
                     type(exc).__name__, exc)
        y = "triton failed"
    return fft_spectral_mix_reference(u, weights, lows, n, scale, n_power, out_dtype) if isinstance(y, str) else y


@fft_spectral_mix.register_fake
def _(u, weights, lows, n, scale, n_power, out_dtype, constant_weights=False):
    check(u, weights, lows, n, out_dtype)
    return u.new_empty(out_shape(u, weights, n), dtype=out_dtype)


@torch.library.custom_op("convfuse::fft_spectral_mix_wgrad", mutates_args=())
def fft_spectral_mix_wgrad(u: Tensor, g: Tensor, lows: list[int], sizes: list[int], n: list[int],
                           scale: float, n_power: float) -> list[Tensor]:
    """The weight gradients of ``fft_spectral_mix`` (in the compute complex dtype), for
    g = the output's gradient (*B, Co, *n); ``sizes``: the blocks' sizes, flattened as ``lows``."""
    return wgrad_reference(u, g, lows, sizes, n, scale, n_power)


@fft_spectral_mix_wgrad.register_kernel("cpu")
def _(u, g, lows, sizes, n, scale, n_power):
    if not CPU_IMPL:
        return wgrad_reference(u, g, lows, sizes, n, scale, n_power)
    from convfuse.backends.cpu_spectral import wgrad_cpu

    return wgrad_cpu(u, g, list(lows), list(sizes), list(n), scale, n_power)


@fft_spectral_mix_wgrad.register_fake
def _(u, g, lows, sizes, n, scale, n_power):
    d = len(n)
    _, cplx = compute_dtypes(u)
    ci, co = u.shape[-d - 1], g.shape[-d - 1]
    return [u.new_empty((ci, co, *sizes[j * d:(j + 1) * d]), dtype=cplx) for j in range(len(sizes) // d)]


def _fit(x: Tensor, like: Tensor, d: int) -> Tensor:
    """x (..., *n) cut or zero-padded to like's last d sizes, as rfftn(s=n)'s adjoint does: a
    negative pad crops, so no comparison of (possibly symbolic) sizes is needed."""
    pad = []
    for i in reversed(range(d)):
        pad += [0, like.shape[like.dim() - d + i] - x.shape[x.dim() - d + i]]
    return F.pad(x, pad)


def _hermitian(weights) -> list[Tensor]:
    return [w.conj().transpose(0, 1) for w in weights]  # (Co, Ci, *m) views


def _setup(ctx, inputs, output):
    u, weights, lows, n, scale, n_power, out_dtype, *rest = inputs
    ctx.save_for_backward(u, *weights)
    ctx.params = (list(lows), list(n), scale, n_power, bool(rest and rest[0]))


def _backward(ctx, grad):
    u, *weights = ctx.saved_tensors
    lows, n, scale, n_power, constant = ctx.params
    d = len(n)
    real, _ = compute_dtypes(u)
    g = grad.to(real)
    du = dws = None
    if ctx.needs_input_grad[0]:
        du = fft_spectral_mix(g, _hermitian(weights), lows, n, scale, n_power, real, constant)
        du = _fit(du, u, d).to(u.dtype)
    if ctx.needs_input_grad[1]:
        sizes = [s for w in weights for s in w.shape[2:]]
        dws = [dw.to(w.dtype) for dw, w in zip(fft_spectral_mix_wgrad(u, g, lows, sizes, n, scale, n_power - 1.0),
                                                weights)]
    # one gradient per argument as passed (a defaulted constant_weights is not among them)
    return (du, dws, *[None] * (len(ctx.needs_input_grad) - 2))


fft_spectral_mix.register_autograd(_backward, setup_context=_setup)
# forward-mode AD: the plain torch.fft definition (same arguments) carries the tangents
ops_autograd.guard_forward_mode(fft_spectral_mix, tangent_reference=fft_spectral_mix_reference)


def _wgrad_setup(ctx, inputs, output):
    u, g, lows, sizes, n, scale, n_power = inputs
    ctx.save_for_backward(u, g)
    ctx.params = (list(lows), list(sizes), list(n), scale, n_power)


def _wgrad_backward(ctx, grads):
    """d W_j = kappa * sum_b conj(X) D R with X, R the blocks of rfftn(u), rfftn(g): linear in g and
    antilinear in X, so given cotangents H_j, d g = c * irfftn(X[block] @ H) and d u = c * irfftn(R[block] @ H^H)
    (D cancels against rfftn's adjoint as in the forward's backward), c = kappa * N."""
    u, g = ctx.saved_tensors
    lows, sizes, n, scale, n_power = ctx.params
    d = len(n)
    real, cplx = compute_dtypes(u)
    ci, co = u.shape[-d - 1], g.shape[-d - 1]
    # a block whose gradient is unused comes as None: a zero cotangent
    hs = [u.new_zeros((ci, co, *sizes[j * d:(j + 1) * d]), dtype=cplx) if h is None else h
          for j, h in enumerate(grads)]
    du = dg = None
    if ctx.needs_input_grad[0]:
        du = fft_spectral_mix(g.to(real), _hermitian(hs), lows, n, scale, n_power + 1.0, real)
        du = _fit(du, u, d).to(u.dtype)
    if ctx.needs_input_grad[1]:
        dg = fft_spectral_mix(u, list(hs), lows, n, scale, n_power + 1.0, real).to(g.dtype)
    return du, dg, None, None, None, None, None


fft_spectral_mix_wgrad.register_autograd(_wgrad_backward, setup_context=_wgrad_setup)
ops_autograd.guard_forward_mode(fft_spectral_mix_wgrad)
