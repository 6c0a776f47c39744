"""ConvSpec: what one FFT-convolution site computes, in one record.

The fused operator ``convfuse::fft_conv`` computes, along the last axis of its
canonical-layout inputs (batch dimensions broadcast)::

    ue      = u * pre_gate                         (pre_gate optional)
    c[m]    = sum_j ue[j] * k[(m - j) mod n]        cyclic convolution of size n
              (or sum_j ue[j] * k[(j - m) mod n]    when conj_kernel: a correlation)
    h[t]    = scale * n**n_power * c[(start + t) mod n] + ue[t] * D     t in [0, length)
    out     = (h * post_gate).to(out_dtype)

Signals longer than ``n`` are truncated and shorter ones zero-padded, exactly as
``torch.fft.rfft(x, n=n)`` does, so this is the FFT program's own semantics: a
site whose ``n >= L + K - 1`` and whose window lies in ``[0, L + K - 1)`` is a
linear (causal) convolution, anything else is the cyclic one, and both are
computed exactly.  Whether the convolution is linear only decides which
algorithm a kernel may use, never what is computed.

``ConvSpec`` is what the pass proved about one site; it is what the report
shows and what the rewrite turns into an operator call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

IntLike = Any  # int, or torch.SymInt / fx.Node while a graph is being rewritten


@dataclass(frozen=True)
class ConvParams:
    """The non-tensor arguments of the fused operator, as one value the kernels take."""

    n: int
    start: int
    length: int
    scale: float = 1.0
    n_power: float = 0.0
    conj_kernel: bool = False
    out_dtype: torch.dtype | None = None
    # The compiler proved k is a module parameter/buffer read as is: an implementation may
    # cache its spectrum (keyed by the tensor's version). Never set for a computed kernel.
    constant_kernel: bool = False
    # FrequencySparse: the kernel's one-sided spectrum at size n keeps bins [0, spectrum_bins)
    # and the rest are zero (0: all bins).  Part of the definition, not a hint: every
    # implementation masks, and may skip the work the zero bins remove.
    spectrum_bins: int = 0

    @property
    def total_scale(self) -> float:
        return self.scale * float(self.n) ** self.n_power

    @property
    def kept_bins(self) -> int:
        """One-sided bins of the kernel spectrum that may be nonzero (n // 2 + 1 when dense)."""
        total = self.n // 2 + 1
        return min(self.spectrum_bins, total) if self.spectrum_bins > 0 else total

    @property
    def sparse_spectrum(self) -> bool:
        return self.kept_bins < self.n // 2 + 1

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"convfuse.fft_conv: FFT size n must be >= 1, got {self.n}")
        if not 0 <= self.start < self.n:
            raise ValueError(f"convfuse.fft_conv: window start {self.start} outside [0, n={self.n})")
        if not 0 <= self.length <= self.n:
            raise ValueError(f"convfuse.fft_conv: window length {self.length} outside [0, n={self.n}]")
        if self.spectrum_bins < 0:
            raise ValueError(f"convfuse.fft_conv: spectrum_bins must be >= 0 (0: all bins), got {self.spectrum_bins}")


def is_linear(n: int, L: int, K: int, start: int, length: int) -> bool:
    """True when the cyclic result equals the linear (causal) convolution on the window.

    The linear convolution of lengths L and K has L + K - 1 samples; with n >= that,
    nothing wraps around, and a window [start, start + length) inside [0, n) reads
    linear-convolution samples (zeros beyond L + K - 1).
    """
    L, K = min(L, n), min(K, n)
    return n >= L + K - 1 and start + length <= n


def linear_segments(n: int, K: int, start: int, length: int, conj: bool) -> tuple[tuple[int, int, int], ...]:
    """A linear window as ranges of the cross-correlation z[m] = sum_{i<K} x[m + i] w[i].

    Returns (a, b, at) triples: output samples [at, at + b - a) are z[a:b].  With w = flip(k)
    a convolution's c[q] = z[q - K + 1], one segment; with w = k a correlation's c[q] = z[q]
    for q < n - K + 1, and beyond that its negative lags wrap around: c[q] = z[q - n], so a
    window straddling n - K + 1 is two segments.  Valid where ``is_linear`` holds.
    """
    end = start + length
    if not conj:
        return ((start - K + 1, end - K + 1, 0),)
    wrap = n - K + 1  # first cyclic index holding a negative lag
    parts = []
    if start < wrap:
        parts.append((start, min(end, wrap), 0))
    if end > wrap:
        lo = max(start, wrap)
        parts.append((lo - n, end - n, lo - start))
    return tuple(parts)


@dataclass
class ConvSpec:
    """One proven FFT convolution site, in the user's layout (``axis`` negative)."""

    axis: int
    L: IntLike  # length of the input signal u along the axis
    K: IntLike  # length of the kernel signal k along the axis
    n: IntLike  # FFT size
    start: IntLike = 0  # window start in the length-n cyclic result
    length: IntLike = None  # window length (defaults to L for causal sites)
    scale: float = 1.0  # constant factor
    n_power: float = 0.0  # total scale = scale * n ** n_power (from norm modes and "/ n")
    conj_kernel: bool = False
    skip: bool = False
    pre_gate: bool = False
    post_gate: bool = False
    out_dtype: torch.dtype | None = None
    rank: int = 3
    causal: bool | None = None  # True: provably linear for every size; None: decided per call
    constant_kernel: bool = False  # k is a parameter/buffer: its spectrum may be cached
    transforms: str = "rfft/irfft"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, torch.dtype):
                d[key] = str(value).removeprefix("torch.")
            elif not isinstance(value, (int, float, bool, str, list, type(None))):
                d[key] = str(value)  # symbolic sizes print as their expression, e.g. 2*s0
        return d

    def describe(self) -> str:
        kind = "causal" if self.causal else ("circular" if self.causal is False else "cyclic")
        parts = [f"{kind} axis={self.axis} L={self.L} K={self.K} n={self.n}"]
        if any(self.start) if isinstance(self.start, (list, tuple)) else self.start:
            parts.append(f"offset={self.start}")
        if self.conj_kernel:
            parts.append("correlation")
        parts.append(f"scale={format_scale(self.scale, self.n_power)}")
        for name in ("skip", "pre_gate", "post_gate"):
            if getattr(self, name):
                parts.append(name)
        return " ".join(parts)


def format_scale(scale: float, n_power: float) -> str:
    if n_power == 0:
        return f"{scale:g}"
    power = f"n^{n_power:g}"
    return power if scale == 1 else f"{scale:g}*{power}"
