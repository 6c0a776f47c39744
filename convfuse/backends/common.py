"""Pieces every implementation of the fused operator shares: dtypes, windows, prologue, epilogue."""

from __future__ import annotations

import torch
from torch import Tensor

from convfuse.spec import ConvParams


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs, fp64 when any input is fp64: never less than fp32."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def output_shape(u: Tensor, k: Tensor, pre_gate: Tensor | None, length: int) -> torch.Size:
    u_shape = u.shape if pre_gate is None else torch.broadcast_shapes(u.shape, pre_gate.shape)
    batch = torch.broadcast_shapes(u_shape[:-1], k.shape[:-1])
    return torch.Size((*batch, length))


def check_epilogue_operand(name: str, t: Tensor | None, out_shape: torch.Size) -> None:
    if t is None:
        return
    if torch.broadcast_shapes(t.shape, out_shape) != out_shape:
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
