"""Triton Monarch-FFT implementation of ``convfuse::fft_conv`` (issue 4).

``IMPLEMENTATION`` is what ``convfuse.backends.dispatch`` picks for ``kernel="triton"``: it runs on
CUDA tensors, and on CPU tensors only under ``TRITON_INTERPRET=1`` (for tests).  Sizes without a
Monarch plan run the reference; ``plan_for(n, dtype, device)`` says which plan a size gets or why
none, and ``explain(u, k, D, pre_gate, post_gate, p)`` what one call runs.

Modules: ``plan`` (factorizations, DFT/twiddle matrices, kernel spectra, padding rules),
``kernels`` (the Triton kernel, imported lazily so the interpreter flag can be set first),
``launch`` (offsets, launch, fallback).
"""

from __future__ import annotations

from convfuse.backends.dispatch import Implementation
from convfuse.backends.triton_monarch.launch import FALLBACKS, LAUNCHES, explain, resolve, run
from convfuse.backends.triton_monarch.plan import FUSED_SIZES, MonarchPlan, check_dot_shape, plan_for

IMPLEMENTATION = Implementation("triton", run, ("cuda", "cpu"))

__all__ = ["IMPLEMENTATION", "FALLBACKS", "LAUNCHES", "FUSED_SIZES", "MonarchPlan", "check_dot_shape", "explain", "plan_for",
           "resolve", "run"]
