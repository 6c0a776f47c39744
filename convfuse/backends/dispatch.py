"""Which implementation runs the fused operator, per device and shape.

``kernel`` is what the user asked for (torch.compile ``options={"kernel": ...}``, by default
``convfuse.config.kernel``, from ``CONVFUSE_KERNEL``); ``choose_kernel`` turns it into the implementation that
runs, and the report shows that name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from convfuse import config
from convfuse.backends.common import at_least_1d, compute_dtype
from convfuse.backends.cpu import fft_conv_cpu
from convfuse.backends.cpu_grad import fft_conv_grad_cpu
from convfuse.backends.reference import fft_conv_reference
from convfuse.spec import ConvParams

KERNELS = config.KERNELS

Impl = Callable[[Tensor, Tensor, "Tensor | None", "Tensor | None", "Tensor | None", ConvParams], Tensor]


@dataclass(frozen=True)
class Implementation:
    name: str
    run: Impl
    devices: tuple[str, ...]  # device types it runs on


def _triton_impl() -> Implementation | None:
    try:
        from convfuse.backends import triton_monarch
    except ImportError:
        return None
    return triton_monarch.IMPLEMENTATION


def _cuda_auto_impl() -> Implementation:
    """On CUDA, "auto" measures Triton against cuFFT once per shape and keeps the faster
    (convfuse/backends/triton_monarch/measured.py); without Triton it is cuFFT."""
    try:
        from convfuse.backends.triton_monarch.measured import AUTO_IMPLEMENTATION
    except ImportError:
        return IMPLEMENTATIONS["cufft"]
    return AUTO_IMPLEMENTATION


IMPLEMENTATIONS: dict[str, Implementation] = {
    "reference": Implementation("reference", fft_conv_reference, ("cpu", "cuda")),
    "cpu": Implementation("cpu", fft_conv_cpu, ("cpu",)),
    # cuFFT through torch.fft with the prologue/epilogue around it.
    "cufft": Implementation("cufft", fft_conv_reference, ("cuda",)),
}


class KernelUnavailable(RuntimeError):
    pass


def choose_kernel(requested: str, device_type: str) -> Implementation:
    """The implementation that runs ``requested`` on ``device_type``; raises KernelUnavailable."""
    if requested == "auto":
        if device_type == "cuda":
            return _cuda_auto_impl()
        requested = "cpu" if device_type == "cpu" else "reference"
    if requested == "triton":
        impl = _triton_impl()
        if impl is None:
            raise KernelUnavailable("kernel='triton': Triton is not importable here")
        if device_type == "cpu" and not config.triton_interpret:
            raise KernelUnavailable(
                "kernel='triton' on CPU tensors needs the Triton interpreter (TRITON_INTERPRET=1 or "
                "convfuse.config.triton_interpret, a testing aid ~1000x slower than eager); use kernel='cpu' or 'auto'"
            )
    else:
        impl = IMPLEMENTATIONS.get(requested)
        if impl is None:
            raise KernelUnavailable(f"unknown kernel {requested!r}: expected one of {', '.join(KERNELS)}")
    if requested != "reference" and device_type not in impl.devices:
        raise KernelUnavailable(f"kernel {impl.name!r} does not run on {device_type} tensors")
    return impl


def run_fft_conv(u, k, D, pre_gate, post_gate, p: ConvParams, kernel: str) -> Tensor:
    impl = choose_kernel(kernel, u.device.type)
    # 0-d operands (scalar tensor gates, skips) as shape (1,) for every implementation
    dtype = compute_dtype(u, k, D, pre_gate, post_gate)
    D, pre_gate, post_gate = (at_least_1d(t, dtype) for t in (D, pre_gate, post_gate))
    return impl.run(u, k, D, pre_gate, post_gate, p)


def run_fft_conv_grad(g, ue, k, p: ConvParams, kernel: str, need_u: bool, need_k: bool, need_h: bool):
    """(d ue, d k, h) from an implementation with a fused backward, or (None, None, None): the
    caller composes them from ``fft_conv`` calls."""
    impl = choose_kernel(kernel, g.device.type)
    if impl.name == "cpu":
        return fft_conv_grad_cpu(g, ue, k, p, need_u, need_k, need_h)
    if impl.name == "triton":
        # the fused Triton backward where the forward runs a two-radix plan, else composed
        from convfuse.backends.triton_monarch.grad import run_grad

        return run_grad(g, ue, k, p, need_u, need_k, need_h)
    return None, None, None
