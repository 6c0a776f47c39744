"""Implementations of the fused FFT-convolution operator and the dispatch between them."""

from convfuse.backends.dispatch import KERNELS, choose_kernel, run_fft_conv

__all__ = ["KERNELS", "choose_kernel", "run_fft_conv"]
