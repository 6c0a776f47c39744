"""Pieces every implementation of the fused operator shares: dtypes, windows, prologue, epilogue."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from convfuse.spec import ConvParams


def spectrum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of a real compute dtype's spectra."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs, fp64 when any input is fp64: never less than fp32.

    A 0-d operand (``u * torch.tensor(0.5, dtype=torch.float64)``) does not count: as in eager's
    type promotion, a 0-d tensor never raises the dtype of floating tensors with dimensions
    (u and k always have one)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64 and t.dim() > 0:
            dtype = torch.float64
    return dtype


def broadcast_shapes(a: Sequence, b: Sequence) -> torch.Size:
    """torch.broadcast_shapes of two shapes.  That one is Python over symbolic-size machinery
    (~40 us a call, four per operator call); concrete shapes take this loop instead."""
    if not all(type(x) is int for x in (*a, *b)):
        return torch.broadcast_shapes(a, b)  # symbolic sizes (fake tensors while tracing)
    if tuple(a) == tuple(b):
        return torch.Size(a)
    a, b = (1,) * (len(b) - len(a)) + tuple(a), (1,) * (len(a) - len(b)) + tuple(b)
    if any(x != y and x != 1 and y != 1 for x, y in zip(a, b)):
        raise RuntimeError(f"Shape mismatch: objects cannot be broadcast to a single shape: {a} and {b}")
    return torch.Size(y if x == 1 else x for x, y in zip(a, b))


def at_least_1d(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A 0-d operand (a scalar tensor gate or skip: ``u * torch.tensor(2.0)``) as shape (1,), which
    broadcasts as the scalar does, for implementations that index the convolved axis.  ``dtype`` is
    the call's ``compute_dtype`` (taken from the operands as given: a 0-d operand does not promote,
    one of shape (1,) would): a 0-d fp64 operand of an fp32 call is cast to it, as eager does."""
    if t is None or t.dim() > 0:
        return t
    return t.reshape(1) if t.dtype != torch.float64 or dtype == torch.float64 else t.to(dtype).reshape(1)


def signal_length(u: Tensor, pre_gate: Tensor | None) -> int:
    """Length of ue = u * pre_gate along the convolved axis (either may broadcast along it)."""
    if pre_gate is None or pre_gate.dim() == 0:
        return u.shape[-1]
    return broadcast_shapes(u.shape[-1:], pre_gate.shape[-1:])[0]


def output_shape(u: Tensor, k: Tensor, pre_gate: Tensor | None, length: int) -> torch.Size:
    u_shape = u.shape if pre_gate is None else broadcast_shapes(u.shape, pre_gate.shape)
    batch = broadcast_shapes(u_shape[:-1], k.shape[:-1])
    return torch.Size((*batch, length))


def check_epilogue_operand(name: str, t: Tensor | None, out_shape: torch.Size) -> None:
    if t is None:
        return
    if broadcast_shapes(t.shape, out_shape) != out_shape:
        raise ValueError(
            f"convfuse.fft_conv: {name} of shape {tuple(t.shape)} would broadcast the output "
            f"{tuple(out_shape)} to a larger shape"
        )


def window(c: Tensor, start: int, length: int) -> Tensor:
    """Samples (start + t) mod n of the length-n cyclic result c, t in [0, length)."""
    n = c.shape[-1]
    if start + length <= n:
        return c[..., start : start + length]
    head = c[..., start:]
    return torch.cat([head, c[..., : length - head.shape[-1]]], dim=-1)


def spectrum_mask(spectrum: Tensor, bins: int) -> Tensor:
    """A one-sided spectrum with bins [bins, end) zeroed (FrequencySparse), in place when it
    owns its memory; the mask is real and even, so it commutes with conj and with the product."""
    if bins >= spectrum.shape[-1]:
        return spectrum
    spectrum = spectrum.resolve_conj() if spectrum.is_conj() else spectrum
    spectrum[..., bins:] = 0
    return spectrum


def prologue(u: Tensor, pre_gate: Tensor | None, dtype: torch.dtype) -> Tensor:
    ue = u.to(dtype)
    return ue if pre_gate is None else ue * pre_gate.to(dtype)


def epilogue(
    y: Tensor, ue: Tensor, D: Tensor | None, post_gate: Tensor | None, p: ConvParams
) -> Tensor:
    """y (compute dtype, scaled window) -> (y + ue * D) * post_gate, cast to the output dtype."""
    if D is not None:
        if ue.shape[-1] != y.shape[-1]:
            raise ValueError(
                f"convfuse.fft_conv: a skip term needs the output length ({y.shape[-1]}) "
                f"to equal the input length ({ue.shape[-1]})"
            )
        y = y + ue * D.to(y.dtype)
    if post_gate is not None:
        y = y * post_gate.to(y.dtype)
    return y.to(p.out_dtype or y.dtype)
