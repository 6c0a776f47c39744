"""Launcher: from the operator's arguments to the Triton launches, or a stated fallback.

``run`` resolves a ``CallPlan`` (size, padding, causal skips, the spectrum columns of a
frequency-sparse kernel, or overlap-save frames for a short kernel: blocks.py), computes the
kernel spectrum in Monarch order (cached for constant kernels only on request, see plan.py),
builds per-row element offsets for every operand so broadcast batch dimensions need no copies,
pairs rows that share a kernel (one complex transform computes both; where no two rows share one,
as at B = 1, rows with different kernels pair through kernels_twok.py), and launches either the
fused kernel (n <= 2048, one program per pair of rows or of frames) or the outer passes through
GPU memory (n = 4K..4M: 3 or 5 launches, over a buffer in half precision when the result is half).  Calls with no plan run the reference implementation;
the reason is counted in ``FALLBACKS`` and returned by ``explain``.
"""

from __future__ import annotations

import functools
from collections import Counter

import torch
from torch import Tensor

from convfuse import config
from convfuse.backends.common import at_least_1d, compute_dtype, output_shape, signal_length
from convfuse.backends.reference import fft_conv_reference
from convfuse.backends.triton_monarch import blocks, tuning
from convfuse.backends.triton_monarch.plan import (
    OUTER_BJ, OUTER_KB, CallPlan, MonarchPlan, OuterPlan, call_plan, dot_dtype_for, kernel_spectrum,
)
from convfuse.spec import ConvParams

FALLBACKS: Counter[str] = Counter()  # reason -> number of calls that ran the reference instead
LAUNCHES: Counter[str] = Counter()  # plan description -> number of fused-kernel launches
# Warps and stages per launch: tuning.options (a per-plan table from the sm90/sm80 compiles, cached
# per plan, dtype and device; measured once on CUDA under tuning.measuring(); CONVFUSE_TRITON_WARPS
# overrides the warps).  Not measured on a GPU yet (none was available).


def _interpret_enabled() -> bool:
    return config.triton_interpret  # TRITON_INTERPRET, read once by convfuse.config


def _kernels():
    """The kernel module, imported on first use (it imports triton)."""
    from convfuse.backends.triton_monarch import kernels

    return kernels


def _check_device(device: torch.device) -> None:
    if device.type == "cuda":
        return
    if device.type != "cpu":
        raise RuntimeError(f"kernel 'triton' runs on cuda tensors (or cpu under TRITON_INTERPRET=1), got {device}")
    if not _interpret_enabled():
        raise RuntimeError(
            "kernel 'triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before importing triton (it is for testing, ~1000x slower than eager); use kernel='cpu' otherwise"
        )


@functools.lru_cache(maxsize=256)
def _offsets(batch: tuple[int, ...], shape: tuple[int, ...], stride: tuple[int, ...], device: torch.device) -> Tensor:
    # element offset of each broadcast row of a tensor with this shape/stride, as int64 (rows,)
    shape = (1,) * (len(batch) + 1 - len(shape)) + shape
    stride = (0,) * (len(batch) + 1 - len(stride)) + stride
    off = torch.zeros((), dtype=torch.int64)
    for size, (own, st) in zip(batch, zip(shape[:-1], stride[:-1])):
        step = torch.arange(size, dtype=torch.int64) * (st if own != 1 else 0)
        off = off.unsqueeze(-1) + step
    return off.reshape(-1).to(device)


@functools.lru_cache(maxsize=256)
def _spectrum_rows(batch: tuple[int, ...], shape: tuple[int, ...], stride: tuple[int, ...],
                   device: torch.device) -> tuple[Tensor, Tensor]:
    """Spectrum offsets per row, and a row order grouping rows that share a spectrum
    (all b for one h of a (B, H, L) input against an (H, L) kernel) onto consecutive programs."""
    k_off = _offsets(batch, shape, stride, device)
    return k_off, torch.argsort(k_off, stable=True)


@functools.lru_cache(maxsize=256)
def _pairs(batch: tuple[int, ...], shape: tuple[int, ...], stride: tuple[int, ...],
           device: torch.device, frames: int = 1) -> Tensor:
    """(pairs, 2) int64: consecutive rows of the spectrum order that share a spectrum, b = -1 for none.

    Two rows with the same real kernel go through one complex transform (kernels.py).  With
    ``frames`` > 1 the rows are frames, row * frames + f (overlap-save): a row's frames pair up
    with each other first."""
    k_off, order = _spectrum_rows(batch, shape, stride, device)
    if frames > 1:
        k_off = k_off.repeat_interleave(frames)
        order = torch.argsort(k_off, stable=True)
    ks = k_off[order]
    R = ks.numel()
    idx = torch.arange(R, device=ks.device)
    first = torch.ones(R, dtype=torch.bool, device=ks.device)
    first[1:] = ks[1:] != ks[:-1]
    pos = idx - torch.cummax(torch.where(first, idx, torch.zeros_like(idx)), 0).values  # position in group
    head = pos % 2 == 0
    nxt_same = torch.zeros(R, dtype=torch.bool, device=ks.device)
    nxt_same[:-1] = ks[1:] == ks[:-1]
    partner = torch.full((R,), -1, dtype=torch.int64, device=ks.device)
    partner[:-1] = torch.where(nxt_same[:-1], order[1:], -1)
    return torch.stack([order[head], partner[head]], dim=1).contiguous()


# Pair rows with different kernels (kernels_twok.py) when no two rows of a fused call share one.
TWO_KERNEL_PAIRS = True


@functools.lru_cache(maxsize=256)
def _two_kernel_pairs(batch: tuple[int, ...], shape: tuple[int, ...], stride: tuple[int, ...],
                      device: torch.device) -> tuple[Tensor, Tensor, Tensor] | None:
    """((pairs, 2) rows, kernel row of a, kernel row of b) pairing consecutive rows, or None where
    some rows share a kernel (kernels.py pairs those).  Decided on the host from shapes and strides,
    once per layout: no device synchronisation per call.  A last unpaired row gets b = -1 and its
    own kernel row twice (S = Ka, T = 0)."""
    k_off = _offsets(batch, shape, stride, torch.device("cpu"))
    R = k_off.numel()
    if R < 2 or torch.unique(k_off).numel() != R:
        return None
    rows = torch.arange(R, dtype=torch.int64)
    a = rows[0::2]
    b = torch.full_like(a, -1)
    b[: R // 2] = rows[1::2]
    kr = k_off // shape[-1]  # kernel row of each output row (a spectrum row is shape[-1] elements)
    ka, kb = kr[a], kr[torch.where(b >= 0, b, a)]
    return tuple(t.to(device) for t in (torch.stack([a, b], dim=1).contiguous(), ka, kb))


def _int32_axis(t: Tensor | None, n: int) -> Tensor | None:
    """Kernels index the last axis in int32 (index * stride): copy the rare operand that would overflow."""
    if t is not None and t.stride(-1) * max(t.shape[-1], n) >= 2**31:
        return t.contiguous()
    return t


def _rows(t: Tensor, batch: tuple[int, ...]) -> tuple[Tensor, int]:
    """(row offsets, last-axis stride) of t broadcast against batch; stride 0 for a size-1 last axis."""
    return _offsets(batch, tuple(t.shape), tuple(t.stride()), t.device), (t.stride(-1) if t.shape[-1] != 1 else 0)


def resolve(u: Tensor, k: Tensor, D, pre_gate, post_gate, p: ConvParams) -> CallPlan | str:
    """The plan this call would run with, or why it falls back to the reference."""
    dtype = compute_dtype(u, k, D, pre_gate, post_gate)
    Lue = signal_length(u, pre_gate)
    dot = dot_dtype_for(dtype, u.dtype, p.out_dtype or dtype)
    if dot == torch.bfloat16 and (u.device.type == "cpu" or _interpret_enabled()):
        dot = torch.float32  # the interpreter's bf16 tl.dot is wrong (errors ~1e9 measured): fp32 dots there
    bins = p.kept_bins if p.sparse_spectrum else 0
    full = call_plan(p.n, Lue, k.shape[-1], p.start, p.length, p.conj_kernel, dtype, dot, u.device, bins,
                     stacked=True)
    if bins:
        return full  # the masked kernel is dense in time: no overlap-save
    out_size = torch.empty((), dtype=p.out_dtype or dtype).element_size()
    return blocks.choose(full, p.n, min(Lue, p.n), min(k.shape[-1], p.n), p.start, p.length, p.conj_kernel,
                         dtype, dot, u.device, u.element_size(), out_size)


def explain(u, k, D=None, pre_gate=None, post_gate=None, p: ConvParams | None = None) -> str:
    r = resolve(u, k, D, pre_gate, post_gate, p)
    if isinstance(r, str):
        return f"reference fallback: {r}"
    pl = r.plan
    head = f"triton monarch n={r.m} = {'x'.join(map(str, pl.radices))}"
    dots = f", dots in {str(pl.dot_dtype).removeprefix('torch.')}"
    if r.frames is not None:
        return f"{head} for n={p.n}, {blocks.describe(r)}" + dots
    two_k = _pairs_two_kernels(r, u, k, pre_gate, p)
    # kernels_twok.py's stage 1 keeps K = N1 = 16 at 256: its zero input half saves loads only
    cut_in = "causal input" + (" (loads only)" if two_k and isinstance(pl, MonarchPlan) and pl.n1 < 32 else "")
    skips = [s for s, on in ((cut_in, r.half_in), ("causal output", r.half_out)) if on]
    return (head + (f" (outer radix-{pl.n0}{f' and middle radix-{pl.n0b}' if pl.n0b > 1 else ''} passes through GPU memory)"
                    if isinstance(pl, OuterPlan) else "") + (f" (padded from {p.n})" if r.m != p.n else "")
            + dots + (f", skips {' and '.join(skips)}" if skips else "") + _explain_sparse(r, p)
            + (", rows with different kernels paired in one transform" if two_k else ""))


def _pairs_two_kernels(r: CallPlan, u: Tensor, k: Tensor, pre_gate: Tensor | None, p: ConvParams) -> bool:
    """Whether ``_launch`` pairs rows with different kernels for this call (as it decides, from the
    layout of the kernel spectrum it would build: k's batch shape, contiguous)."""
    pl = r.plan
    if not (TWO_KERNEL_PAIRS and isinstance(pl, MonarchPlan) and r.frames is None and r.width == pl.n2):
        return False
    batch = tuple(output_shape(u, k, pre_gate, p.length)[:-1])
    shape = tuple(k.shape[:-1]) + (2 * pl.n1 * pl.n2,)
    stride = tuple(torch.empty(shape, device="meta").stride())
    return _two_kernel_pairs(batch, shape, stride, u.device) is not None


def _explain_sparse(r: CallPlan, p: ConvParams) -> str:
    if not r.bins:
        return ""
    ncols = r.plan.radices[-1]
    where = "inner " if isinstance(r.plan, OuterPlan) else ""
    said = f"; sparse spectrum: {r.bins} of {p.n // 2 + 1} bins kept, the rest masked to zero"
    if r.cols:
        said += (f"; {where}stage 2 and inverse stage 2 compute {r.cols} of {ncols} columns "
                 f"(from column {r.col0}, cyclic), the kernel spectrum is stored for those only")
    else:
        said += (f"; no column skipped: the kept bins reach {ncols} of {ncols} {where}stage-2 columns"
                 + (" (one 16-wide dot block)" if ncols == 16 else ""))
    if isinstance(r.plan, OuterPlan):
        said += "; the outer passes carry every frequency and are not skipped"
    return said


def outer_buffer_dtype(plan: OuterPlan) -> torch.dtype:
    """Z between the outer passes, one row per pair, (pairs, 2, N0, m): in the half dot dtype when
    the call's result is half (its consumers round it to that dtype for their dots anyway:
    kernels_outer.py), else the compute dtype.  Halves the passes' HBM traffic (bench/roofline.py)."""
    return plan.dot_dtype if plan.dot_dtype in (torch.float16, torch.bfloat16) else plan.compute_dtype


_REFUSED: dict[tuple, str] = {}  # (n, dot dtype, device) -> why the compiled kernels could not launch


def run(u: Tensor, k: Tensor, D: Tensor | None, pre_gate: Tensor | None, post_gate: Tensor | None,
        p: ConvParams) -> Tensor:
    _check_device(u.device)
    r = resolve(u, k, D, pre_gate, post_gate, p)
    if not isinstance(r, str):
        r = _REFUSED.get((r.m, r.plan.dot_dtype, u.device), r)
    if isinstance(r, str):
        FALLBACKS[r] += 1
        return fft_conv_reference(u, k, D, pre_gate, post_gate, p)
    try:
        D, pre_gate, post_gate = (at_least_1d(t, r.plan.compute_dtype) for t in (D, pre_gate, post_gate))  # 0-d
        return _launch(r, u, k, D, pre_gate, post_gate, p)
    except Exception as e:  # noqa: BLE001  (only the compiler's resource check is caught, below)
        from triton.runtime.errors import OutOfResources

        if not isinstance(e, OutOfResources):
            raise
        reason = f"n={r.m}: the compiled kernels do not fit this device ({e})"
        _REFUSED[(r.m, r.plan.dot_dtype, u.device)] = reason
        FALLBACKS[reason] += 1
        return fft_conv_reference(u, k, D, pre_gate, post_gate, p)


def _launch(r: CallPlan, u: Tensor, k: Tensor, D: Tensor | None, pre_gate: Tensor | None,
            post_gate: Tensor | None, p: ConvParams) -> Tensor:
    plan = r.plan
    dtype = plan.compute_dtype
    shape = output_shape(u, k, pre_gate, p.length)
    batch = tuple(shape[:-1])
    out = torch.empty(shape, dtype=p.out_dtype or dtype, device=u.device)
    if out.numel() == 0:
        return out
    Lue = signal_length(u, pre_gate)
    if D is not None and Lue != p.length:
        raise ValueError(f"convfuse.fft_conv: a skip term needs the output length ({p.length}) "
                         f"to equal the input length ({Lue})")

    u, pre_gate, D, post_gate = (_int32_axis(t, max(r.m, p.n)) for t in (u, pre_gate, D, post_gate))
    spec = kernel_spectrum(k, p.n, r.m, p.conj_kernel, p.total_scale, dtype, plan.radices, r.bins, r.col0, r.cols)
    # spectrum rows: (*k batch, 2, *radices[:-1], W) viewed as (*k batch, 2m W/N2); offsets and row pairs per output row
    d = len(plan.radices)
    per_row = spec.shape[-d - 1:].numel()
    k_rows = (batch, tuple(spec.shape[:-d - 1]) + (per_row,), tuple(spec.stride()[:-d - 1]) + (1,), u.device)
    k_off, _ = _spectrum_rows(*k_rows)
    pairs = _pairs(*k_rows)
    P = pairs.shape[0]
    # u of last size 1 broadcasts against a longer pre-gate: stride 0 along the axis reads it everywhere
    u_off, u_s = _rows(u, batch)
    pre_off, pre_s = _rows(pre_gate, batch) if pre_gate is not None else (u_off, 0)
    d_off, d_s = _rows(D, batch) if D is not None else (u_off, 0)
    post_off, post_s = _rows(post_gate, batch) if post_gate is not None else (u_off, 0)
    Lu = min(Lue, p.n)  # torch.fft truncates inputs longer than n
    flags = dict(HAS_PRE=pre_gate is not None, HAS_D=D is not None, HAS_POST=post_gate is not None,
                 PREC=plan.input_precision)
    pre = pre_gate if pre_gate is not None else u
    two_k = (_two_kernel_pairs(*k_rows) if TWO_KERNEL_PAIRS and isinstance(plan, MonarchPlan) and r.frames is None
             and r.width == plan.n2 else None)
    how = (" overlap-save" if r.frames is not None else f" {r.cols} columns" if r.cols else
           " two kernels a pair" if two_k is not None else "")
    LAUNCHES[f"n={r.m} {'x'.join(map(str, plan.radices))} {str(plan.dot_dtype).removeprefix('torch.')}{how}"] += 1
    interpret = u.device.type == "cpu" or _interpret_enabled()

    if isinstance(plan, OuterPlan):
        from convfuse.backends.triton_monarch import kernels_outer as ko

        inner, m = plan.inner, plan.n2  # m: the length of one outer column sequence, n / N0
        z = torch.empty((P, 2, plan.n0, m), dtype=outer_buffer_dtype(plan), device=u.device)
        grid = (P, m // OUTER_BJ)
        dot = plan.dot_dtype
        side = {kind: tuning.options(kind, r.m, dot, u.device) for kind in ("outer_fwd", "mid", "outer_inv")}
        mid = dict(N0A=plan.n0, N0B=plan.n0b, M=inner.n, BJ=OUTER_BJ, KB=OUTER_KB, PREC=plan.input_precision,
                   **side["mid"])
        del flags["HAS_D"], flags["HAS_POST"]

        def outer(inner_opts: dict) -> Tensor:  # the whole chain: the inner pass rewrites z in place
            ko.OUTER_FWD[interpret][grid](
                pairs, u, u_off, u_s, pre, pre_off, pre_s, z, plan.f0, Lu,
                N0=plan.n0, M=m, BJ=OUTER_BJ, KB=OUTER_KB, HALF_IN=r.half_in, **flags, **side["outer_fwd"])
            if plan.n0b > 1:
                ko.MID[interpret][(P * plan.n0, inner.n // OUTER_BJ)](z, plan.f0b, INVERSE=False, **mid)
            ko.INNER[interpret][(P * (r.m // inner.n),)](
                z, pairs, spec, k_off, inner.f1, inner.f2, inner.tw, plan.otw, r.col0,
                NSEQ=r.m // inner.n, NTW=plan.ntw, M1=inner.n1, M2=inner.n2, W=r.width, PREC=plan.input_precision,
                **inner_opts)
            if plan.n0b > 1:
                ko.MID[interpret][(P * plan.n0, inner.n // OUTER_BJ)](z, plan.f0b, INVERSE=True, **mid)
            ko.OUTER_INV[interpret][grid](
                pairs, z, plan.f0, u, u_off, u_s, pre, pre_off, pre_s,
                D if D is not None else u, d_off, d_s, post_gate if post_gate is not None else u, post_off, post_s,
                out, Lue, p.start, p.length,
                N0=plan.n0, M=m, BJ=OUTER_BJ, KB=OUTER_KB, HALF_OUT=r.half_out,
                HAS_D=D is not None, HAS_POST=post_gate is not None, **flags, **side["outer_inv"])
            return out

        # the inner pass is the chain's largest kernel (254-255 registers at 32x32): the one tuned
        return outer(tuning.options("inner", inner.n, dot, u.device, (r.m, plan.ntw, r.width), run=outer))

    if two_k is not None:  # no two rows share a kernel (B = 1): pair rows with different kernels
        from convfuse.backends.triton_monarch import kernels_twok as kt

        tk_pairs, ka, kb = two_k
        flat = spec.reshape(-1, 2, plan.n1, plan.n2)
        sa, sb = flat[ka], flat[kb]
        st = torch.stack([(sa + sb) * 0.5, (sa - sb) * 0.5], dim=1).contiguous()  # (pairs, [S, T], 2, N1, N2)

        def paired(opts: dict) -> Tensor:
            kt.MONARCH_CONV2_TWOK[interpret][(tk_pairs.shape[0],)](
                tk_pairs, u, u_off, u_s, pre, pre_off, pre_s, st, D if D is not None else u, d_off, d_s,
                post_gate if post_gate is not None else u, post_off, post_s, out, plan.f1, plan.f2, plan.tw,
                Lu, Lue, p.start, p.length, N1=plan.n1, N2=plan.n2, HALF_IN=r.half_in, HALF_OUT=r.half_out,
                **flags, **opts)
            return out

        key = (plan.n1, plan.n2, r.half_in, r.half_out)
        return paired(tuning.options("fused_twok", r.m, plan.dot_dtype, u.device, key, run=paired))

    operands = (u, u_off, u_s, pre, pre_off, pre_s, spec, k_off, D if D is not None else u, d_off, d_s,
                post_gate if post_gate is not None else u, post_off, post_s, out, plan.f1, plan.f2, plan.tw)
    conv2 = _kernels().MONARCH_CONV2[interpret]
    shape = dict(N1=plan.n1, N2=plan.n2, W=r.width, HALF_IN=r.half_in, HALF_OUT=r.half_out)
    f = r.frames

    def fused(opts: dict) -> Tensor:
        if f is None:
            conv2[(P,)](pairs, *operands, Lu, Lue, p.start, p.length, p.length, r.col0, 1, 0, 0, p.length,
                        FRAMES=False, **shape, **flags, **opts)
            return out
        for (a, b, o), nf in zip(f.segments, f.counts()):  # one launch per segment, its frames in place
            frame_pairs = _pairs(*k_rows, nf)
            conv2[(frame_pairs.shape[0],)](frame_pairs, *operands, Lu, Lue, f.window, f.block, p.length, 0,
                                            nf, a, o, o + b - a, FRAMES=True, **shape, **flags, **opts)
        return out

    key = (plan.n1, plan.n2, r.width, r.half_in, r.half_out)
    return fused(tuning.options("fused" if f is None else "fused_frames", r.m, plan.dot_dtype, u.device, key, run=fused))
