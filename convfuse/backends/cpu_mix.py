"""CPU implementation of ``fft_conv_mix`` (conv1d/conv2d by FFT: a complex Ci x Co matrix per frequency).

What made eager's FFT conv layer slow here (rfft, einsum 'bcf,ocf->bof', irfft, bias; measured
at (4, 16, 8192) with 512 taps, n = 16384, 2 threads, load ~3): 182 ms, of which the einsum took
49 ms although the batched GEMM it stands for takes 3.5 ms once its operands are frequency-major
(the einsum's permuted copies are the rest), the kernel's transform 21 ms (10 ms on one thread:
MKL's two threads stall on a busy core), and rfft with n > L pads the input itself, several
times slower than transforming a padded buffer (13 ms against 1.6 + 0.9 ms for the pad).

So, in three phases on ``cpu_exec``'s pool (one intra-op thread per thread, units pulled
dynamically, as ``cpu_nd``):
1. rows: each (b, c) row of u is copied (cast, truncated) into a zero-padded per-thread buffer
   and transformed once, into X (Bf*G*Ci, F); the kernel's spectrum, scale and conjugate folded
   in, is built frequency-major, K (G, F, Ci, Co), once per call or cached across calls
   (``cpu_cache.lookup``: used only while w's bits equal those it was computed from);
2. frequencies: per block of frequencies sized for L2, a 2-D transpose of X's block into
   (Fb, Bf, G, Ci), one batched complex GEMM per group against K's block (contiguous: no
   copy), a 2-D transpose back into Y (Bf*G*Co, F).  ATen's 2-D transposed copies run at
   ~5-9 GB/s here, a 3-D permuted gather at ~2.  Y overwrites X when Ci == Co: each block reads
   its part of X whole before writing the same part of Y, and blocks are disjoint;
3. rows: the inverse of each output row, the window, the bias and the cast, written once.

Short kernels with a linear window use torch's own direct convolution (``F.conv1d/2d/3d``, which
is the same function: see ``direct_pads``), below a measured crossover (``DIRECT_MAX_TAPS``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from convfuse.backends import cpu_cache
from convfuse.backends.cpu_exec import TILE_BYTES, empty_output, intra_op_threads, run_tiles
from convfuse.backends.cpu_nd import window_nd

# Below this many bytes of complex spectrum (X, Y and K together) a call runs on the calling
# thread: waking the pool costs more than it saves (as cpu_nd.INLINE_BYTES).
INLINE_BYTES = 512 * 1024
# The direct convolution is chosen while the kernel has at most this many taps (the product
# over the convolved axes) and the window is linear.  Measured, see bench/mix.py --crossover.
DIRECT_MAX_TAPS = 48
# Fewest frequencies in a GEMM block: shorter runs make the transposed copies gather single
# elements from cache lines that hold 8 (complex64).
MIN_BLOCK_FREQS = 16

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def direct_pads(Lu: list[int], Lk: list[int], n: list[int], start: list[int], length: list[int],
                conj: bool) -> list[int] | None:
    """F.pad amounts (last axis first, negative = crop) that make ``conv(pad(u), w')`` equal the
    windowed cyclic result, w' the kernel flipped for a convolution and as is for a correlation
    (conv1d is a cross-correlation); None when no such padding exists.

    Per axis, with u and w cut to n (lu, lk): the cyclic result equals the linear one when
    n >= S = lu + lk - 1; its S non-zero samples start at index a = 0 (convolution) or at the
    most negative lag, a = -(lk - 1) mod n (correlation), and the rest is zero.  Relative to a,
    the window starts at r = (start - a) mod n and reads consecutive samples of the linear result
    from r when it does not wrap (r + length <= n), or from r - n when it starts in the zero gap
    (r >= S).  Then conv with left padding lk - 1 - r gives exactly those samples, in both cases.
    """
    pads: list[int] = []
    for lu0, lk0, ni, si, li in zip(Lu, Lk, n, start, length):
        lu, lk = min(lu0, ni), min(lk0, ni)
        S = lu + lk - 1
        if lu < 1 or lk < 1 or li < 1 or S > ni:
            return None
        a = (ni - (lk - 1)) % ni if conj else 0
        r = (si - a) % ni
        if r + li <= ni:
            lam = r
        elif r >= S:
            lam = r - ni
        else:
            return None
        left, right = lk - 1 - lam, li - lu + lam
        if lu + min(left, 0) + min(right, 0) < 1:
            return None  # a window wholly in the zero gap: cropping more than the signal has
        pads = [left, right] + pads
    return pads


def _narrow_to(t: Tensor, sizes: list[int]) -> Tensor:
    d = len(sizes)
    for i, s in enumerate(sizes):
        axis = t.dim() - d + i
        if t.shape[axis] > s:
            t = t.narrow(axis, 0, s)
    return t


def fft_conv_mix_cpu(u: Tensor, w: Tensor, bias: Tensor | None, n: list[int], start: list[int],
                     length: list[int], scale: float, n_power: float, conj: bool, groups: int,
                     out_dtype: torch.dtype, dtype: torch.dtype, constant_kernel: bool = False) -> Tensor:
    """The operator on CPU tensors (arguments checked by the caller; dtype is the compute dtype)."""
    d = len(n)
    batch = u.shape[: u.dim() - d - 1]
    bf = math.prod(batch)
    G, ci = groups, w.shape[1]
    co = w.shape[0] // G
    Lu, Lk = list(u.shape[-d:]), list(w.shape[-d:])
    shape = (*batch, G * co, *length)
    total = scale * float(math.prod(n)) ** n_power
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=out_dtype)
    if ci == 0 or math.prod(Lu) == 0 or math.prod(Lk) == 0:  # c is zero: the bias alone
        y = torch.zeros((bf, G * co, *length), dtype=dtype)
        if bias is not None:
            y += bias.to(dtype).reshape(-1, *([1] * d))
        return y.to(out_dtype).reshape(shape)
    u3 = u.reshape(bf, G * ci, *Lu)  # (Bf, G*Ci, *Lu): a view whenever strides allow
    pads = direct_pads(Lu, Lk, n, start, length, conj) if d in _CONV else None
    if pads is not None and math.prod(min(a, b) for a, b in zip(Lk, n)) <= DIRECT_MAX_TAPS:
        return direct(u3, w, bias, n, pads, conj, G, total, dtype).to(out_dtype).reshape(shape).contiguous()
    with intra_op_threads(1) as threads:
        out = _fft(threads, u3, w, bias, n, start, length, conj, G, total, dtype, out_dtype, constant_kernel)
    return out.view(shape)


def direct(u3: Tensor, w: Tensor, bias: Tensor | None, n: list[int], pads: list[int], conj: bool,
           groups: int, total: float, dtype: torch.dtype) -> Tensor:
    """(Bf, G*Ci, *Lu) -> (Bf, G*Co, *length) by torch's convolution, on the caller's threads
    (oneDNN's threads do not stall the way MKL's FFT does)."""
    d = len(n)
    x = _narrow_to(u3, n).to(dtype)
    k = _narrow_to(w, n).to(dtype)
    if not conj:
        k = k.flip(list(range(-d, 0)))
    k = k * total if total != 1.0 else k
    b = bias.to(dtype) if bias is not None else None
    return _CONV[d](F.pad(x, pads), k, b, groups=groups)


def _ranges(total: int, step: int, threads: int) -> list[tuple[int, int]]:
    """[0, total) in near-equal pieces of about ``step``, as many as a multiple of ``threads``
    when there are few (a thread left with one piece more than the others waits alone)."""
    count = max(1, -(-total // max(1, step)))
    if threads > 1 and count < 4 * threads:
        count = min(total, -(-count // threads) * threads)
    return [(total * i // count, total * (i + 1) // count) for i in range(count)]


def _padded_buffer(rows: int, n: list[int], dtype: torch.dtype) -> Tensor:
    return torch.zeros((rows, *n), dtype=dtype)  # zero once: only the signal's region is ever written


def prepare_kernel(w: Tensor, n: list[int], conj: bool, total: float, dtype: torch.dtype, groups: int,
                   threads: int) -> Tensor:
    """w (G*Co, Ci, *Lk) -> K (G, F, Ci, Co), frequency-major, scale and conjugate in.

    Rows are transformed in (i, o) order, w transposed per group as they are copied into the
    padded buffer, so that each tile's spectra (m*Co, F) are one 2-D transpose away from
    K[g, :, i0:i1, :] (F, m*Co)."""
    d = len(n)
    axes = list(range(-d, 0))
    G, ci = groups, w.shape[1]
    co = w.shape[0] // G
    lk = [min(a, b) for a, b in zip(w.shape[-d:], n)]
    spec = [*n[:-1], n[-1] // 2 + 1]
    nf = math.prod(spec)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    wt = _narrow_to(w, n).unflatten(0, (G, co)).transpose(1, 2)  # (G, Ci, Co, *lk): a view
    K = torch.empty((G, nf, ci, co), dtype=cdtype)
    per = max(1, TILE_BYTES // (nf * cdtype.itemsize * co))  # input channels per tile
    units = [(g, i0, i1) for g in range(G) for i0, i1 in _ranges(ci, per, threads if G == 1 else 1)]

    def make_worker():
        state: dict = {}

        def work(unit: tuple[int, int, int]) -> None:
            g, i0, i1 = unit
            m = (i1 - i0) * co
            if "buf" not in state:
                state["buf"] = _padded_buffer(max(b - a for _, a, b in units) * co, n, dtype)
            buf = state["buf"][:m]
            region = buf.view(i1 - i0, co, *n)
            for i, size in enumerate(lk):
                region = region.narrow(region.dim() - d + i, 0, size)
            region.copy_(wt[g, i0:i1])
            S = torch.fft.rfftn(buf, dim=axes).view(m, nf)  # (m, F), rows (i, o)
            if conj:
                S = S.conj_physical_()
            if total != 1.0:
                S = S.mul_(total)
            K[g, :, i0:i1, :].view(nf, m).copy_(S.t())

        return work

    run_tiles(units, make_worker, threads)
    return K


def _fill_rows(buf: Tensor, u3: Tensor, r0: int, r1: int, lu: list[int]) -> None:
    """Rows [r0, r1) of u3's (b, c) grid into the padded buffer's signal region (cast, truncated)."""
    d = len(lu)
    C = u3.shape[1]
    src = _narrow_to(u3, lu)
    r = r0
    while r < r1:
        b, c = divmod(r, C)
        c1 = min(C, c + (r1 - r))
        dst = buf[r - r0 : r - r0 + c1 - c]
        for i, size in enumerate(lu):
            dst = dst.narrow(dst.dim() - d + i, 0, size)
        dst.copy_(src[b, c:c1])
        r += c1 - c


def _fft(threads: int, u3: Tensor, w: Tensor, bias: Tensor | None, n: list[int], start: list[int],
         length: list[int], conj: bool, G: int, total: float, dtype: torch.dtype, out_dtype: torch.dtype,
         constant_kernel: bool) -> Tensor:
    d = len(n)
    axes = list(range(-d, 0))
    bf, C = u3.shape[0], u3.shape[1]
    ci, co = C // G, w.shape[0] // G
    Lu = list(u3.shape[-d:])
    lu = [min(a, b) for a, b in zip(Lu, n)]
    spec = [*n[:-1], n[-1] // 2 + 1]
    nf = math.prod(spec)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    item = cdtype.itemsize
    r_in, r_out = bf * C, bf * G * co
    spectrum_bytes = (r_in + r_out + G * ci * co) * nf * item
    if spectrum_bytes < INLINE_BYTES:
        threads = 1

    def prep() -> Tensor:
        return prepare_kernel(w, n, conj, total, dtype, G, threads)

    K = None
    if constant_kernel:
        K = cpu_cache.lookup(w, ("mix", tuple(n), conj, total, dtype, G), prep)
    if K is None:
        K = prep()  # (G, F, Ci, Co)

    # Phase 1: transform every input row once.  A row already of n samples in the compute dtype
    # is transformed where it lies; others go through the padded buffer.
    X = torch.empty((r_in, nf), dtype=cdtype)
    rows = max(1, TILE_BYTES // (nf * item))
    row_units = _ranges(r_in, rows, threads)
    in_place_src = u3.dtype == dtype and Lu == list(n) and u3.is_contiguous()
    rows_in = u3.reshape(r_in, *n) if in_place_src else None

    def make_forward():
        state: dict = {}

        def work(unit: tuple[int, int]) -> None:
            r0, r1 = unit
            dst = X[r0:r1].view(r1 - r0, *spec)
            if rows_in is not None:
                torch.fft.rfftn(rows_in[r0:r1], dim=axes, out=dst)
                return
            if "buf" not in state:
                state["buf"] = _padded_buffer(max(b - a for a, b in row_units), n, dtype)
            buf = state["buf"][: r1 - r0]
            _fill_rows(buf, u3, r0, r1, lu)
            torch.fft.rfftn(buf, dim=axes, out=dst)

        return work

    run_tiles(row_units, make_forward, threads)

    # Phase 2: the per-frequency products, a block of frequencies at a time.
    Y = X if ci == co else torch.empty((r_out, nf), dtype=cdtype)
    fb = max(MIN_BLOCK_FREQS, TILE_BYTES // ((r_in + r_out) * item))
    f_units = _ranges(nf, fb, threads)

    def make_product():
        state: dict = {}

        def work(unit: tuple[int, int]) -> None:
            f0, f1 = unit
            m = f1 - f0
            if "x" not in state:
                most = max(b - a for a, b in f_units)
                state["x"] = torch.empty((most, r_in), dtype=cdtype)
                state["y"] = torch.empty((most, r_out), dtype=cdtype)
            xb, yb = state["x"][:m], state["y"][:m]
            xb.copy_(X[:, f0:f1].t())  # (m, Bf*G*Ci): per frequency a (Bf, G, Ci) block
            if G == 1:
                torch.bmm(xb.view(m, bf, ci), K[0, f0:f1], out=yb.view(m, bf, co))
            else:
                x4, y4 = xb.view(m, bf, G, ci), yb.view(m, bf, G, co)
                for g in range(G):
                    y4[:, :, g].copy_(torch.bmm(x4[:, :, g], K[g, f0:f1]))
            Y[:, f0:f1].copy_(yb.t())

        return work

    run_tiles(f_units, make_product, threads)
    del X

    # Phase 3: inverse, window, bias, cast: the output written once.
    out = empty_output((r_out, *length), out_dtype)
    b_rows = None
    if bias is not None:
        b_rows = bias.to(dtype).repeat(bf).reshape(r_out, *([1] * d))  # (Bf*G*Co, 1, ...)
    out_units = _ranges(r_out, rows, threads)

    def make_inverse():
        def work(unit: tuple[int, int]) -> None:
            r0, r1 = unit
            y = window_nd(torch.fft.irfftn(Y[r0:r1].view(r1 - r0, *spec), s=n, dim=axes), start, length)
            dst = out[r0:r1]
            if b_rows is None:
                dst.copy_(y)
            elif out_dtype == dtype:
                torch.add(y, b_rows[r0:r1], out=dst)
            else:
                dst.copy_(y + b_rows[r0:r1])

        return work

    run_tiles(out_units, make_inverse, threads)
    return out
