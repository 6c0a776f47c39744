"""Kernel spectra in Monarch order made by one Triton launch (kernels_spectrum.py).

``plan.kernel_spectrum`` (and through it the spectrum cache, cpu_cache.py) calls
``triton_spectrum`` first; None means "build it with torch.fft" (plan._kernel_spectrum).
Which builder made each spectrum is counted in ``SPECTRA``.  Built here, each by one launch:

- the fused plans' (N1, N2) orders, dense or with kept columns (SPECTRUM2, a program a row);
- the three-level (N1, N2, N3) orders of 4K..32K, dense, fp32 (SPECTRUM3, a program a row);
- the outer plans' (N0, M1, M2) orders, 4K..128K (64K and 128K always; 4K..32K where SPECTRUM3
  does not: kept columns, fp64, stages beyond the device's shared memory), dense or with kept
  columns (SPECTRUM_OUTER: N0/16 programs a row, each the outer pass for 16 frequencies k0 into
  its own scratch slice, then their inner stages, 4096/m sequences a tile); where SPECTRUM3's
  launch did not fit the device (remembered), this one is tried for the same order.

Left to torch.fft:

- kernels on a device Triton does not run on (CPU without the interpreter), and a launch the
  device refused (remembered);
- the four-radix orders (N0, N0B, M1, M2) of the plans with a middle level (256K..4M).  The
  inner stages of a sequence k0 + N0*k0b need that sequence's middle DFT, a sum over all N0B
  column blocks of the n/N0-sample outer result of k0 (16K..64K samples).  One launch has no
  barrier between programs, so that result cannot be left in memory by other programs: a
  program would run the outer pass of its k0 over the whole row (n samples, re-read by each of
  the N0/16 programs of a row), then the middle DFT over N0B, then N0B inner transforms, all in
  sequence, through 16 * n/N0 complex samples of scratch (up to 8 MB) a program, at 1..4
  programs a row; per row that is more work in sequence and more memory traffic than torch's
  FFT and its permuting copies (about 3 passes over the row), and the outer passes of the
  forward (kernels_outer.py) are already that pipeline with the parallelism of a launch each;
- fewer than 16 kept columns (tl.dot needs 16; spectrum_columns never asks for them).

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
from convfuse.backends.triton_monarch.plan import (
    MIN_DOT, MonarchPlan, check_dot_shape, device_smem, plan_for_factors,
)

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
    if key in _REFUSED and (len(radices) != 3 or key + ("outer",) in _REFUSED):
        SPECTRA["torch: the launch did not fit the device"] += 1
        return None
    if len(radices) == 3 and key in _REFUSED:  # SPECTRUM3 did not fit: the outer-order builder may
        made = _launch_outer(ks, k, n, m, conj, scale, compute, radices, bins, col0, cols,
                             "the three-level launch did not fit the device")
    elif len(radices) == 2:
        made = _launch2(ks, k, n, m, conj, scale, compute, radices, bins, col0, cols)
    elif len(radices) == 3:
        made = _launch3(ks, k, n, m, conj, scale, compute, radices, bins, cols)
        if isinstance(made, str):  # an outer plan's order, kept columns, fp64, or stages too big
            made = _launch_outer(ks, k, n, m, conj, scale, compute, radices, bins, col0, cols, made)
    else:
        made = (f"{len(radices)} radices: a middle level needs a whole n/N0-sample sequence per k0 "
                f"between the outer and inner stages (see spectrum.py)")
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
    if not isinstance(plan, MonarchPlan):  # m is an outer plan's size: (N1, N2) is no plan's order
        return f"radices {radices} at n={m} are not a fused plan's"
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


def _launch_outer(ks, k, n, m, conj, scale, compute, radices, bins, col0, cols, why3: str) -> Tensor | str:
    # an outer plan's (N0, M1, M2) order (kernels_spectrum._spectrum_outer): N0 / 16 programs a row
    from convfuse.backends.triton_monarch.plan import OUTER_KB, OuterPlan, plan_for

    plan = plan_for(m, compute, k.device, compute)
    if isinstance(plan, str):
        return f"{why3}; {plan}"
    if not isinstance(plan, OuterPlan) or plan.radices != radices:
        return why3
    if (m, radices, compute, k.device, "outer") in _REFUSED:
        return f"{why3}; the outer-order launch did not fit the device"
    n0, (m1, m2), mm = plan.n0, plan.inner.radices, plan.inner.n
    w = cols or m2
    Lk = min(k.shape[-1], n)
    rin0 = n0 // 2 if Lk <= m // 2 and n0 // 2 >= OUTER_KB else n0  # the zero input half of the outer pass
    kb0, bj, g = 16, min(256, mm), max(1, min(16, 4096 // mm))  # g sequences of the inner stages a tile
    if w < MIN_DOT:
        return f"{w} kept columns: tl.dot needs 16"
    for shape in ((kb0, bj, 16), (g * m2, m1, m1), (g * m1, w, m2)):
        check_dot_shape(*shape)
    k, kb, off, k_s = _rows(k, m)
    out = torch.empty((*kb, 2, n0, m1, w), dtype=compute, device=k.device)
    rows = out[..., 0, 0, 0, 0].numel()
    if rows == 0:
        return out
    scratch = torch.empty((rows * (n0 // kb0), 2, kb0, mm), dtype=compute, device=k.device)
    mult = torch.full((1,), m * scale, dtype=compute, device=k.device)
    inner = plan.inner
    interpret = k.device.type == "cpu" or config.triton_interpret  # as launch.py

    def launch():
        ks.SPECTRUM_OUTER[interpret][(rows, n0 // kb0)](
            k, off, k_s, out, scratch, plan.f0, inner.f1, inner.f2, inner.tw, plan.otw, mult, Lk, bins, col0,
            N0=n0, M1=m1, M2=m2, W=w, RIN0=rin0, KB0=kb0, BJ=bj, G=g, CONJ=conj, PREC=_prec(compute),
            **tuning.options("spectrum_outer", m, compute, k.device))
        SPECTRA[f"triton n={m} {n0}x{m1}x{m2}{f' {w} columns' if w < m2 else ''} ({n0 // kb0} programs a row)"] += 1
        return out

    return _guard((m, radices, compute, k.device, "outer"), launch)
