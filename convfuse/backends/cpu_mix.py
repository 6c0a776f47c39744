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
One batch row makes each per-frequency product a vector-matrix one: then multiply-adds of
frequency vectors on the kernel's rows as they are (no transposes of the kernel at all).  The
spectra of a call come from a workspace kept between calls (``workspace``): fresh memory is
first-touch page faults on every call.  A call whose spectra fit in L2 runs ``_small``, eager's
handful of torch calls, on this thread.

Short kernels with a linear window use torch's own direct convolution (``F.conv1d/2d/3d``, which
is the same function: see ``direct_pads``), below a measured crossover (``DIRECT_MAX_TAPS``).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from convfuse.backends import cpu_cache
from convfuse.backends.cpu_exec import MIN_TILE_ROWS, TILE_BYTES, empty_output, intra_op_threads, run_tiles
from convfuse.backends.cpu_nd import window_nd

# Below this many bytes of complex spectrum (X, Y and K together) a call runs on the calling
# thread: waking the pool costs more than it saves (as cpu_nd.INLINE_BYTES).
INLINE_BYTES = 512 * 1024
# The direct convolution is chosen while the kernel has at most this many taps (the product over
# the convolved axes) and the window is linear; half as many when the kernel's spectrum is cached
# (constant_kernel), which takes the kernel's transforms out of the FFT path's cost.  Measured with
# bench/mix.py --crossover (load 6-7 on the 2 cores, fp32, 'same', ms: direct / FFT / FFT cached):
#   (B, C, L) = (8, 4, 256):    32 taps 0.26 / 0.39 / 0.41,  64 taps 0.70 / 0.49 / 0.55
#   (8, 16, 1024):              32 taps 2.8 / 4.3 / 2.9,     64 taps 6.3 / 4.6 / 3.2,  128: 28 / 8.1 / 4.8
#   (4, 32, 4096):              16 taps 9.1 / 162 / 39,      32 taps 30 / 149 / 40,    64: 67 / 152 / 40
#   (2, 64, 8192):              32 taps 152 / 1422 / 137,    64 taps 197 / 956 / 156
#   2-D (2, 16, 64x64):         7x7 3.3 / 11.4 / 4.3,        9x9 4.6 / 9.9 / 3.8
#   2-D (2, 32, 128x128):       7x7 100 / 877 / 124,         9x9 168 / 709 / 107
# The transforms of a Ci*Co-row kernel make the per-call FFT path lose to direct well past 64 taps
# at many channels; a taps-only rule is what the measurements support with this much noise.
DIRECT_MAX_TAPS = 64
# Direct calls below this many multiply-adds run on the calling thread (~1 ms of one-thread oneDNN;
# measured (8, 4, 256) with 64 taps, 2.6M: 0.33 ms inline, 3.5 ms shared out at load ~6).
DIRECT_INLINE_MACS = 16_000_000
# Fewest frequencies in a GEMM block: shorter runs make the transposed copies gather single
# elements from cache lines that hold 8 (complex64).
MIN_BLOCK_FREQS = 16

# Spectra of a call (X, Y, the kernel's rows) come from a small pool of buffers kept between calls,
# up to this many bytes: a fresh buffer is first-touch page faults on every call (glibc maps large
# blocks anew each time), measured at load ~6: 64 rfft rows of n = 16384 written into fresh memory
# 13 ms a tile, into memory written before 2.5-8 ms; a (64, 64) kernel's 268 MB of rows 850 ms
# fresh against 320 ms reused (2.8 s fresh with MADV_HUGEPAGE: THP faults here cost more).
WORKSPACE_BYTES = 1024 * 2**20
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
    taps = math.prod(min(a, b) for a, b in zip(Lk, n))
    with intra_op_threads(1) as threads:
        if pads is not None and taps <= (DIRECT_MAX_TAPS // 2 if constant_kernel else DIRECT_MAX_TAPS):
            out = direct(u3, w, bias, n, pads, conj, G, total, dtype, out_dtype, threads)
        else:
            with workspace() as get:
                out = _fft(threads, get, u3, w, bias, n, start, length, conj, G, total, dtype, out_dtype,
                           constant_kernel)
    return out.view(shape)


def direct(u3: Tensor, w: Tensor, bias: Tensor | None, n: list[int], pads: list[int], conj: bool,
           groups: int, total: float, dtype: torch.dtype, out_dtype: torch.dtype | None = None,
           threads: int = 1) -> Tensor:
    """(Bf, G*Ci, *Lu) -> (Bf, G*Co, *length) by torch's convolution, contiguous.

    Batch rows (or, for one row, output channels) are shared out to the pool, each conv on one
    intra-op thread: oneDNN's two OpenMP threads wait a whole scheduler tick (4-16 ms, measured
    at load ~5) at their barrier whenever the other core is busy, on calls of 0.2 ms."""
    d = len(n)
    x = _narrow_to(u3, n)
    x = x if x.dtype == dtype else x.to(dtype)
    # Padded here, never by conv's padding argument: oneDNN with padding takes a slower kernel
    # (measured (8, 4, 256), 64 taps, 1 thread: F.pad + conv1d 0.30 ms, conv1d(padding=32) 0.71).
    x, conv = F.pad(x, pads), _CONV[d]
    k = _narrow_to(w, n)
    k = k if k.dtype == dtype else k.to(dtype)
    if not conj:
        k = k.flip(list(range(-d, 0)))
    k = k * total if total != 1.0 else k
    b = bias if bias is None or bias.dtype == dtype else bias.to(dtype)
    bf, co = x.shape[0], k.shape[0]
    work = bf * co * k[0].numel() * math.prod(x.shape[2:])
    if threads == 1 or work < DIRECT_INLINE_MACS or (bf == 1 and groups > 1):
        y = conv(x, k, b, groups=groups)
        return y.to(out_dtype or dtype).contiguous()
    out = empty_output((bf, co, *[s - t + 1 for s, t in zip(x.shape[2:], k.shape[2:])]), out_dtype or dtype)
    split_batch = bf > 1
    rows = bf if split_batch else co
    units = _ranges(rows, -(-rows // (2 * threads)), threads)

    def make_worker():
        def run(unit: tuple[int, int]) -> None:
            a, z = unit
            if split_batch:
                out[a:z].copy_(conv(x[a:z], k, b, groups=groups))
            else:
                out[:, a:z].copy_(conv(x, k[a:z], None if b is None else b[a:z]))

        return run

    run_tiles(units, make_worker, threads)
    return out


_ws_lock = threading.Lock()
_ws_free: OrderedDict[int, Tensor] = OrderedDict()  # id -> a free flat buffer (uint8), oldest first


@contextlib.contextmanager
def workspace():
    """``get(shape, dtype)`` gives a buffer for this call (uninitialised); they go back to the
    pool when the block ends, the oldest dropped beyond WORKSPACE_BYTES.  Concurrent calls never
    share a buffer: one is taken out of the pool while in use."""
    taken: list[Tensor] = []

    def get(shape, dtype: torch.dtype) -> Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        buf = None
        with _ws_lock:
            for key, t in _ws_free.items():
                if nbytes <= t.numel() <= 2 * nbytes:
                    buf = _ws_free.pop(key)
                    break
        if buf is None:
            buf = torch.empty(nbytes, dtype=torch.uint8)
        taken.append(buf)
        return buf[:nbytes].view(dtype).view(shape)

    try:
        yield get
    finally:
        with _ws_lock:
            for buf in taken:
                _ws_free[id(buf)] = buf
            total = sum(t.numel() for t in _ws_free.values())
            while _ws_free and total > WORKSPACE_BYTES:
                total -= _ws_free.popitem(last=False)[1].numel()


def _ranges(total: int, step: int, threads: int) -> list[tuple[int, int]]:
    """[0, total) in near-equal pieces of about ``step``, as many as a multiple of ``threads``
    when there are few (a thread left with one piece more than the others waits alone)."""
    count = max(1, -(-total // max(1, step)))
    if threads > 1 and count < 4 * threads:
        count = min(total, -(-count // threads) * threads)
    return [(total * i // count, total * (i + 1) // count) for i in range(count)]


def _fresh(shape, dtype: torch.dtype) -> Tensor:
    return torch.empty(shape, dtype=dtype)


def _padded_buffer(rows: int, n: list[int], dtype: torch.dtype) -> Tensor:
    return torch.zeros((rows, *n), dtype=dtype)  # zero once: only the signal's region is ever written


def kernel_rows(w: Tensor, n: list[int], conj: bool, total: float, dtype: torch.dtype, groups: int,
                threads: int, get=None) -> Tensor:
    """w (G*Co, Ci, *Lk) -> spectra (G*Ci*Co, F), rows in (g, i, o) order, scale and conjugate in.

    w is transposed per group as its rows are copied into the padded buffer (a gather of the
    short real kernel), so that a block of frequencies of these rows is one 2-D transpose away
    from the (F, Ci, Co) matrices the GEMMs take; the transforms write their rows in place."""
    d = len(n)
    axes = list(range(-d, 0))
    G, ci = groups, w.shape[1]
    co = w.shape[0] // G
    lk = [min(a, b) for a, b in zip(w.shape[-d:], n)]
    spec = [*n[:-1], n[-1] // 2 + 1]
    nf = math.prod(spec)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    wt = _narrow_to(w, n).unflatten(0, (G, co)).transpose(1, 2)  # (G, Ci, Co, *lk): a view
    rows = (get or _fresh)((G * ci * co, *spec), cdtype)
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
            r0 = (g * ci + i0) * co
            S = torch.fft.rfftn(buf, dim=axes, out=rows[r0 : r0 + m])
            if conj:
                S.conj_physical_()
            if total != 1.0:
                S.mul_(total)

        return work

    run_tiles(units, make_worker, threads)
    return rows.view(G * ci * co, nf)


def prepare_kernel(w: Tensor, n: list[int], conj: bool, total: float, dtype: torch.dtype, groups: int,
                   threads: int) -> Tensor:
    """K (G, F, Ci, Co), frequency-major: what a cached kernel keeps, so a hit needs no transpose."""
    G, ci = groups, w.shape[1]
    co = w.shape[0] // G
    with workspace() as get:
        rows = kernel_rows(w, n, conj, total, dtype, G, threads, get).view(G, ci * co, -1)
        nf = rows.shape[-1]
        K = torch.empty((G, nf, ci, co), dtype=rows.dtype)  # its own memory: the cache keeps it
        step = max(MIN_BLOCK_FREQS, TILE_BYTES // (ci * co * rows.dtype.itemsize))
        for g in range(G):
            for f0 in range(0, nf, step):  # blocked: each transpose stays in cache
                K[g, f0 : f0 + step].view(-1, ci * co).copy_(rows[g, :, f0 : f0 + step].t())
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


def _small(u3: Tensor, w: Tensor, bias: Tensor | None, n: list[int], start: list[int], length: list[int],
           conj: bool, G: int, total: float, dtype: torch.dtype, out_dtype: torch.dtype,
           constant_kernel: bool) -> Tensor:
    """A call whose spectra fit in L2, on this thread, in as few torch calls as eager's layer
    makes (each costs ~10 us; the tiled path makes several per tile and phase)."""
    d = len(n)
    axes = list(range(-d, 0))
    bf, ci, co = u3.shape[0], u3.shape[1] // G, w.shape[0] // G
    spec = [*n[:-1], n[-1] // 2 + 1]
    nf = math.prod(spec)

    def prep() -> Tensor:
        return prepare_kernel(w, n, conj, total, dtype, G, 1)

    K = cpu_cache.lookup(w, ("mix", tuple(n), conj, total, dtype, G, False), prep) if constant_kernel else None
    if K is None:
        S = torch.fft.rfftn(w if w.dtype == dtype else w.to(dtype), s=n, dim=axes)  # (G*Co, Ci, *spec)
        S = S.conj_physical_() if conj else S
        S = S.mul_(total) if total != 1.0 else S
        K = S.reshape(G, co, ci, nf).permute(0, 3, 2, 1)  # (G, F, Ci, Co)
    X = torch.fft.rfftn(u3 if u3.dtype == dtype else u3.to(dtype), s=n, dim=axes)
    X = X.reshape(bf, G, ci, nf).permute(1, 3, 0, 2)  # (G, F, Bf, Ci)
    Y = torch.bmm(X.reshape(G * nf, bf, ci), K.reshape(G * nf, ci, co))  # (G*F, Bf, Co)
    Y = Y.view(G, nf, bf, co).permute(2, 0, 3, 1).reshape(bf, G * co, *spec)  # (Bf, G*Co, *spec)
    y = window_nd(torch.fft.irfftn(Y, s=n, dim=axes), start, length)
    if bias is not None:
        y = y + bias.to(dtype).reshape(-1, *([1] * d))
    return y.to(out_dtype).contiguous()


def _fft(threads: int, get, u3: Tensor, w: Tensor, bias: Tensor | None, n: list[int], start: list[int],
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
        return _small(u3, w, bias, n, start, length, conj, G, total, dtype, out_dtype, constant_kernel)

    # One batch row: per frequency a vector-matrix product, which batched GEMMs run at ~1 GFLOP/s
    # here (4096 products of (1, 16) x (16, 16): 7.2 ms, against 2.7 ms as 16 multiply-adds of
    # frequency vectors, measured at load ~6); the kernel's rows then serve as they are.
    vector = bf == 1

    def prep() -> Tensor:
        if vector:
            return kernel_rows(w, n, conj, total, dtype, G, threads)
        return prepare_kernel(w, n, conj, total, dtype, G, threads)

    # The kernel: frequency-major K (G, F, Ci, Co) from the cache, or rows (G*Ci*Co, F), this
    # call's (transposed a block at a time by the GEMM phase: a whole-array transpose of a
    # spectrum this size runs from memory, measured ~1 GB/s, and costs more than its FFTs) or,
    # for one batch row, cached too.
    K = Kr = None
    if constant_kernel:
        K = cpu_cache.lookup(w, ("mix", tuple(n), conj, total, dtype, G, vector), prep)
        if vector:
            K, Kr = None, K
    if K is None and Kr is None:
        Kr = kernel_rows(w, n, conj, total, dtype, G, threads, get)

    # Phase 1: transform every input row once.  A row already of n samples in the compute dtype
    # is transformed where it lies; others go through the padded buffer.
    X = get((r_in, nf), cdtype)
    rows = max(MIN_TILE_ROWS, TILE_BYTES // (nf * item))  # MKL transforms one long row several times slower
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
    Y = X if ci == co else get((r_out, nf), cdtype)
    fb = max(MIN_BLOCK_FREQS, TILE_BYTES // ((r_in + r_out + G * ci * co) * item))
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
                state["k"] = torch.empty((most, G * ci * co), dtype=cdtype) if Kr is not None else None
            xb, yb = state["x"][:m], state["y"][:m]
            xb.copy_(X[:, f0:f1].t())  # (m, Bf*G*Ci): per frequency a (Bf, G, Ci) block
            if Kr is not None:
                kb = state["k"][:m]
                kb.copy_(Kr[:, f0:f1].t())  # (m, G*Ci*Co)
                Kg = kb.view(m, G, ci, co).transpose(0, 1)  # (G, m, Ci, Co): strided, as BLAS takes it
            else:
                Kg = K[:, f0:f1]
            if G == 1:
                torch.bmm(xb.view(m, bf, ci), Kg[0], out=yb.view(m, bf, co))
            else:
                x4, y4 = xb.view(m, bf, G, ci), yb.view(m, bf, G, co)
                for g in range(G):
                    y4[:, :, g].copy_(torch.bmm(x4[:, :, g], Kg[g]))
            Y[:, f0:f1].copy_(yb.t())

        return work

    if vector:
        fb = max(MIN_BLOCK_FREQS, TILE_BYTES // (4 * co * item))
        f_units = _ranges(nf, fb, threads)
        Kv = Kr.view(G, ci, co, nf)

        def make_product():  # noqa: F811  the one-row form
            def work(unit: tuple[int, int]) -> None:
                f0, f1 = unit
                for g in range(G):
                    x = X[g * ci : (g + 1) * ci, f0:f1]  # (Ci, m)
                    acc = Kv[g, 0, :, f0:f1] * x[0]  # (Co, m)
                    for i in range(1, ci):
                        acc.addcmul_(Kv[g, i, :, f0:f1], x[i])
                    Y[g * co : (g + 1) * co, f0:f1].copy_(acc)  # after every read of X's rows: Y may be X

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
