"""Triton Monarch-FFT implementation of ``convfuse::fft_conv`` (issue 4).

``IMPLEMENTATION`` is what ``convfuse.backends.dispatch`` picks for ``kernel="triton"``: it runs on
CUDA tensors, and on CPU tensors only under ``TRITON_INTERPRET=1`` (for tests).  Sizes without a
Monarch plan run the reference; ``plan_for(n, dtype, device)`` says which plan a size gets or why
none, and ``explain(u, k, D, pre_gate, post_gate, p)`` what one call runs.

Modules: ``plan`` (factorizations, DFT/twiddle matrices, kernel spectra, padding rules, the
spectrum columns a frequency-sparse kernel keeps), ``kernels`` (the fused kernel, n <= 2048, also
running overlap-save frames), ``kernels3`` / ``fused3`` (the three-level fused kernel, 4K..32K in
one launch, chosen by ``select``), ``cufft`` (cuFFT with the prologue and epilogue as one Triton
kernel each: kernel="auto"'s other side on CUDA) and ``kernels_outer`` (outer/middle passes through GPU memory,
n = 4K..4M), both imported on first launch and built twice (compiled and interpreted) over the
device functions of ``kernels_common``, ``blocks`` (overlap-save for short kernels and the
roofline model that picks it), ``launch`` (offsets, row pairs, launches, fallback), ``measured``
(a cached per-shape Triton-vs-cuFFT choice for CUDA, ``AUTO_IMPLEMENTATION``), ``spectrum`` /
``kernels_spectrum`` (kernel spectra written in Monarch order by one launch), ``grad`` /
``kernels_grad`` (the fused backward for the two-radix sizes: dispatch.run_fft_conv_grad).

Status: correct under the Triton interpreter (tests/backends/test_triton_monarch.py,
test_triton_policies.py) and compiled for sm80/sm90 without a GPU (tests/backends/
test_triton_compile.py, ``python bench/gpu.py --compile-report``); GPU speed is unmeasured (no GPU
was available when it was written), including what the policies' skipped work saves.
"""

from __future__ import annotations

from convfuse.backends.dispatch import Implementation
from convfuse.backends.triton_monarch.launch import FALLBACKS, LAUNCHES
from convfuse.backends.triton_monarch.select import THREE_LEVEL_SIZES, explain, resolve, run
from convfuse.backends.triton_monarch.plan import FUSED_SIZES, MonarchPlan, check_dot_shape, plan_for

IMPLEMENTATION = Implementation("triton", run, ("cuda", "cpu"))

__all__ = ["IMPLEMENTATION", "FALLBACKS", "LAUNCHES", "THREE_LEVEL_SIZES", "FUSED_SIZES", "MonarchPlan", "check_dot_shape", "explain", "plan_for",
           "resolve", "run"]
