"""Kernel spectra in Monarch order made by one Triton launch (kernels_spectrum.py).

``plan.kernel_spectrum`` (and through it the spectrum cache, cpu_cache.py) calls
``triton_spectrum`` first; None means "build it with torch.fft" (plan._kernel_spectrum), for:
kernels on a device Triton does not run on (CPU without the interpreter), radices that are
neither a fused plan's (N1, N2) nor the three-level (N1, N2, N3) of 4K..32K (the outer plans'
four-radix orders, 64K and up), a three-level order with kept columns (frequency-sparse outer
plans) or with fp64 compute, and a launch the device refused (remembered).  Which builder made
each spectrum is counted in ``SPECTRA``.

Dots: the spectrum is a product operand of every row it serves, so it is transformed with
compute-dtype dots (fp32 at ``config.triton_fp32_dot``, ~fp32 with the default tf32x3), whatever
the call's dot dtype.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from convfuse import config
from convfuse.backends.triton_monarch import tuning
from convfuse.backends.triton_monarch.plan import MIN_DOT, check_dot_shape, device_smem, plan_for_factors

SPECTRA: Counter[str] = Counter()  # "triton n=.. RxR.." or "torch: why" -> spectra built
_REFUSED: set[tuple] = set()  # (m, radices, compute, device) whose launch did not fit the device


def _runs_here(k: Tensor) -> bool:
    if k.is_cuda:
        return True
    return k.device.type == "cpu" and config.triton_interpret


def triton_spectrum(k: Tensor, n: int, m: int, conj: bool, scale: float, compute: torch.dtype,
                    radices: tuple[int, ...], bins: int = 0, col0: int = 0, cols: int = 0) -> Tensor | None:
    """plan.kernel_spectrum's value, made by a Triton kernel, or None where it is not built here."""
    if not _runs_here(k):
        return None
    try:
        from convfuse.backends.triton_monarch import kernels_spectrum as ks
    except ImportError:
        return None
    radices = tuple(radices)
    key = (m, radices, compute, k.device)
    if key in _REFUSED:
        SPECTRA["torch: the launch did not fit the device"] += 1
        return None
    if len(radices) == 2:
        made = _launch2(ks, k, n, m, conj, scale, compute, radices, bins, col0, cols)
    elif len(radices) == 3:
        made = _launch3(ks, k, n, m, conj, scale, compute, radices, bins, cols)
    else:
        made = f"{len(radices)} radices"
    if isinstance(made, str):
        SPECTRA[f"torch: {made}"] += 1
        return None
    return made


def _rows(k: Tensor, m: int):
    from convfuse.backends.triton_monarch.launch import _int32_axis, _offsets

    k = _int32_axis(k, m)
    kb = tuple(k.shape[:-1])
    off = _offsets(kb, tuple(k.shape), tuple(k.stride()), k.device)
    return k, kb, off, (k.stride(-1) if k.shape[-1] != 1 else 0)


def _prec(compute: torch.dtype) -> str:
    return config.triton_fp32_dot if compute == torch.float32 else "ieee"


def _guard(key, launch) -> Tensor | str:
    try:
        return launch()
    except Exception as e:  # noqa: BLE001  (only the compiler's resource check is caught)
        from triton.runtime.errors import OutOfResources

        if not isinstance(e, OutOfResources):
            raise
        _REFUSED.add(key)
        return f"the launch did not fit the device ({e})"


def _launch2(ks, k, n, m, conj, scale, compute, radices, bins, col0, cols) -> Tensor | str:
    plan = plan_for_factors(m, radices, compute, k.device, compute)
    if isinstance(plan, str):
        return plan
    n1, n2 = radices
    w = cols or n2
    Lk = min(k.shape[-1], n)
    rin = n1 // 2 if Lk <= m // 2 and n1 // 2 >= MIN_DOT else n1  # zero input half: half of stage 1
    check_dot_shape(n1, n2, rin)
    check_dot_shape(n1, w, n2)
    k, kb, off, k_s = _rows(k, m)
    out = torch.empty((*kb, 2, n1, w), dtype=compute, device=k.device)
    rows = out[..., 0, 0, 0].numel()
    if rows == 0:
        return out
    mult = torch.full((1,), m * scale, dtype=compute, device=k.device)
    interpret = k.device.type == "cpu" or config.triton_interpret  # as launch.py

    def launch():
        ks.SPECTRUM2[interpret][(rows,)](k, off, k_s, out, plan.f1, plan.f2, plan.tw, mult, Lk, bins, col0,
                                         N1=n1, N2=n2, W=w, RIN=rin, CONJ=conj, PREC=_prec(compute),
                                         **tuning.options("spectrum2", m, compute, k.device))
        SPECTRA[f"triton n={m} {n1}x{n2}{f' {w} columns' if w < n2 else ''}"] += 1
        return out

    return _guard((m, radices, compute, k.device), launch)


def _launch3(ks, k, n, m, conj, scale, compute, radices, bins, cols) -> Tensor | str:
    from convfuse.backends.triton_monarch import fused3

    if fused3.FACTORS3.get(m) != radices:
        return f"radices {radices} at n={m} are not a three-level plan's"
    if cols and cols < radices[-1]:
        return "kept columns of a three-radix order"
    if compute != torch.float32:
        return f"three-level spectra are built for fp32 compute, not {compute}"
    device = k.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if fused3.SMEM3[(m, "fp32")] > device_smem(device):
        return f"n={m}: fp32 three-level stages need more shared memory than the device has"
    plan = fused3.plan3(m, compute, compute, device)
    n1, n2, n3 = radices
    Lk = min(k.shape[-1], n)
    rin = n1 // 2 if Lk <= m // 2 and plan.can_skip_half else n1
    check_dot_shape(n1, n2 * n3, rin)
    k, kb, off, k_s = _rows(k, m)
    out = torch.empty((*kb, 2, n1, n2, n3), dtype=compute, device=k.device)
    rows = out[..., 0, 0, 0, 0].numel()
    if rows == 0:
        return out
    mult = torch.full((1,), m * scale, dtype=compute, device=k.device)
    interpret = k.device.type == "cpu" or config.triton_interpret  # as launch.py

    def launch():
        ks.SPECTRUM3[interpret][(rows,)](k, off, k_s, out, plan.f1, plan.f2, plan.f3, plan.tw1, plan.t2, mult, Lk,
                                         bins, N1=n1, N2=n2, N3=n3, RIN=rin, CONJ=conj, PREC=_prec(compute),
                                         num_warps=fused3.WARPS3[m])
        SPECTRA[f"triton n={m} {n1}x{n2}x{n3}"] += 1
        return out

    return _guard((m, radices, compute, k.device), launch)
