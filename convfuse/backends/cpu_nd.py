"""CPU implementation of ``fft_convnd`` (the multi-axis cyclic convolution, GFNet's global filter).

What made plain ``torch.fft`` slow here (measured, see bench/nd.py and ARCHITECTURE.md):

- a channels-last activation (B, H, W, C) convolved over (H, W) reaches the operator as the
  (B, C, H, W) view with strides (HWC, 1, WC, C).  torch's FFT needs one batch dimension, so
  each transform first gathers a full-size transposed copy, and the multi-axis inverse
  (a complex transform over H, then a complex-to-real one over W) copies twice more: at
  (8, 56, 56, 256) these memory passes are about 2/3 of eager's time;
- with 2 OpenMP threads MKL's FFT stalls whenever the other core is busy (same call:
  1.0 ms with 1 thread, 56 ms with 2 on this shared machine).

So, as on the 1-D path (``cpu_exec``): work runs in cache-sized tiles on a small pool of
Python threads with one intra-op thread each, and the kernel's spectrum (scale and
conjugate folded in) is computed once per call, or once per weight with ``cpu_cache``
when the caller proves the kernel constant.  A channels-last batch row is first transposed
whole into a contiguous buffer, because ATen transposes a full 2-D matrix in blocks (about
4x faster than the strided gather a channel slice needs); the transforms, the product and
the window then run per tile of about ``TILE_BYTES`` of spectrum, so their internal copies
stay in L2.  The output is the operator's contiguous (..., *length), as the reference's.
A call whose spectra fit ``FAST_BYTES`` is one tile anyway: it runs inline on the caller's
thread, with a channels-last input copied contiguous first.
A given spectrum (GFNet's parameter) is prepared every call, not cached: one copy is cheaper
than comparing it with a stored one (48.6 us against 63.3 us for a (64, 32, 17) spectrum).

Where the native library is loaded with MKL's multi-axis DFTI (x86 torch wheels), a call that
convolves whole periods (the input as long as the FFT, the whole result: GFNet's filter) runs on
``convfuse::_convnd_kept_out`` (convfuse/csrc/mkl_convnd.h) instead: kept descriptors, the
channels of a channels-last map gathered per block in C++, the product and both transforms in
an L2-sized buffer, the result written in place.  GFNet (4, 32, 32, 64), 1 thread, thread time:
eager 1.81 ms, the kept call 1.08 ms; (8, 56, 56, 256): 129 ms against 51 ms.  The tiles below
serve every other call (padding, windows, a cast output, no MKL).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from convfuse import config
from convfuse.backends import cpu_cache
from convfuse.backends.common import broadcast_shapes, spectrum_dtype
from convfuse.backends.cpu_exec import TILE_BYTES, grid_view, intra_op_threads, make_layout, run_tiles

# Below this many bytes of real input the whole call runs on the calling thread: waking the
# pool costs more than it saves (measured (2, 8, 8, 8): inline 60 us, pool 150 us).
INLINE_BYTES = 256 * 1024
# A channels-last batch row is transposed whole only while that buffer (per thread) is
# L3-sized; beyond it tiles gather their own channels.
ROW_BUFFER_BYTES = 8 * 2**20
# With one intra-op thread, calls with at most this many bytes of spectrum run inline too
# (the 1-D path's ``cpu.FAST_BYTES``).
FAST_BYTES = 2 * 2**20


_kept: list = [None]  # convfuse::_convnd_kept_out, set by cpu_native.load() where MKL's multi-axis DFTI is exported


def use_kept_descriptors(op) -> None:
    _kept[0] = op


def kept_descriptors() -> bool:
    """Whether whole-period calls run on kept multi-axis MKL descriptors now."""
    return _kept[0] is not None and config.native_cpu


def window_nd(c: Tensor, starts: list[int], lengths: list[int]) -> Tensor:
    """Samples (start_i + t_i) mod n_i along the last len(starts) axes of the cyclic result."""
    d = len(starts)
    for i, (start, length) in enumerate(zip(starts, lengths)):
        axis = c.dim() - d + i
        if start == 0 and length == c.shape[axis]:
            continue
        if start + length <= c.shape[axis]:
            c = c.narrow(axis, start, length)
        else:
            idx = (torch.arange(length, device=c.device) + start) % c.shape[axis]
            c = c.index_select(axis, idx)
    return c


def _flat(t: Tensor, d: int) -> Tensor:
    """t with its last d axes as one (a view whenever their strides allow)."""
    return t.reshape(*t.shape[: t.dim() - d], -1)


def prepare_kernel(
    k2: Tensor, Lk: list[int], n: list[int], conj: bool, total: float, dtype: torch.dtype, threads: int = 1
) -> Tensor:
    """(Hk, prod Lk) kernel rows -> (Hk, *spectrum) one-sided spectra with scale and conjugate in,
    in tiles of rows over ``threads`` threads (a kernel is as large as one batch row of the input)."""
    d = len(n)
    axes = list(range(-d, 0))
    Hk = k2.shape[0]
    rows = _rows_contiguous(k2, dtype).view(Hk, *Lk)
    spec = [*n[:-1], n[-1] // 2 + 1]
    per = max(1, TILE_BYTES // (math.prod(spec) * (16 if dtype == torch.float64 else 8)))

    def transform(h0: int, h1: int) -> Tensor:
        Kh = torch.fft.rfftn(rows[h0:h1], s=n, dim=axes)
        if conj:
            Kh = Kh.conj_physical_()  # fresh: in place, no lazy conj bit for the products to resolve
        return Kh.mul_(total) if total != 1.0 else Kh

    if threads == 1 or per >= Hk:
        return transform(0, Hk)
    K = torch.empty((Hk, *spec), dtype=spectrum_dtype(dtype))

    def make_worker():
        def work(unit: list[tuple[int, int]]) -> None:
            for h0, h1 in unit:
                K[h0:h1].copy_(transform(h0, h1))

        return work

    run_tiles([[(h0, min(Hk, h0 + per))] for h0 in range(0, Hk, per)], make_worker, threads)
    return K


def prepare_spectrum(k2: Tensor, spec: list[int], conj: bool, total: float, dtype: torch.dtype) -> Tensor:
    """(Hk, prod spec) kernel spectrum rows (``kernel_is_spectrum``) -> the (Hk, *spec) spectrum
    the tiles multiply by: contiguous, in the compute dtype, scale and conjugate in.  One pass
    over W, where a time-domain kernel costs a transform."""
    cdtype = spectrum_dtype(dtype)
    K = torch.empty((k2.shape[0], *spec), dtype=cdtype)
    K.view(k2.shape).copy_(k2.conj() if conj else k2)
    return K.mul_(total) if total != 1.0 else K


def _memory_order(t: Tensor) -> Tensor:
    """t's dimensions permuted into memory order when that makes it contiguous (a channels-last
    kernel): the cache then copies and compares it in one sequential pass."""
    order = sorted(range(t.dim()), key=lambda i: -t.stride(i))
    p = t.permute(order)
    return p if p.is_contiguous() else t


def _rows_contiguous(x2: Tensor, dtype: torch.dtype, buf: Tensor | None = None) -> Tensor:
    """(R, S) rows as a contiguous tensor in dtype, written into ``buf`` when one is given.
    Rows of a channels-last map have strides (1, R): copied into a contiguous buffer of the
    same dtype, ATen takes its blocked 2-D transpose (copy_transpose_valid), the cheap way to
    this layout."""
    if buf is None:
        if x2.dtype == dtype and x2.is_contiguous():
            return x2
        buf = torch.empty(x2.shape, dtype=dtype)
    if x2.dtype != dtype and x2.stride(0) == 1:
        x2 = x2.t().to(dtype).t()  # cast in the source's layout first: the transpose stays blocked
    return buf.copy_(x2)


def _whole_period(Lu: list[int], n: list[int], start: list[int], length: list[int], out_dtype: torch.dtype,
                  dtype: torch.dtype) -> bool:
    """What the kept multi-axis descriptors compute: the input as long as the FFT, the whole
    period out, in the compute dtype (fp32 or fp64)."""
    return (kept_descriptors() and dtype in (torch.float32, torch.float64) and out_dtype == dtype and Lu == n
            and length == n and not any(start))


def _kept_call(u4: Tensor, K: Tensor, n: list[int], out_shape, total: float = 1.0, conj: bool = False) -> Tensor:
    """irfftn(rfftn(u4) * total * K (conjugated with ``conj``)) for u4 (Ko, Hk, *n) and the spectrum
    K (Hk, *spec) on kept descriptors, viewed as out_shape; the C++ shares its items out over the
    intra-op thread count it sees."""
    out = torch.empty(out_shape, dtype=u4.dtype)
    _kept[0](u4, K, n, total, conj, out.view(u4.shape))
    return out


def _boxes(Ko: int, Hk: int, rows: int, threads: int) -> list[tuple[int, int, int, int]]:
    """Boxes (o0, o1, h0, h1) of about ``rows`` rows, as many as a multiple of ``threads``.

    The kernel spectrum is computed for all rows up front, so a box need not keep a kernel
    block's rows together (the 1-D ``cpu_exec.tiles`` does): a box is a run of rows that is
    contiguous in a channels-first map, and equal boxes balance the threads."""
    total = Ko * Hk
    count = -(-total // max(1, rows))
    count = -(-count // threads) * threads
    rows = max(1, -(-total // count))
    if rows >= Hk:
        per = rows // Hk
        return [(o0, min(Ko, o0 + per), 0, Hk) for o0 in range(0, Ko, per)]
    return [(o, o + 1, h0, min(Hk, h0 + rows)) for o in range(Ko) for h0 in range(0, Hk, rows)]


def fft_convnd_cpu(*args, **kwargs) -> Tensor:
    """The operator on CPU tensors (arguments checked by the caller; dtype is the compute dtype).

    This thread runs torch with one intra-op thread for the whole call, as the pool threads
    do: the kernel transform and an inline call then never wait on a core someone else holds
    (with two, the suite's fp64 gradchecks of tiny calls took 38-41 s beside another job,
    against under 9 s with one)."""
    if _whole_spectrum_call(*args, **kwargs):
        u, k, n, _, _, scale, n_power, conj_kernel = args[:8]
        return _kept_call(u, k, n, u.shape, scale * float(math.prod(n)) ** n_power, conj_kernel)
    with intra_op_threads(1) as threads:
        return _fft_convnd(threads, *args, **kwargs)


def _whole_spectrum_call(u: Tensor, k: Tensor, n: list[int], start: list[int], length: list[int], scale: float,
                         n_power: float, conj_kernel: bool, out_dtype: torch.dtype, dtype: torch.dtype,
                         constant_kernel: bool = False, kernel_is_spectrum: bool = False) -> bool:
    """GFNet's call, as the compiled graph makes it: u (B, C, *n), a spectrum k (C, *spec) of u's
    precision, the whole period out in u's dtype.  It skips the layout machinery below (about
    100 us of Python a call: the whole of eager's time at (2, 8, 8, 8))."""
    d = len(n)
    return (kernel_is_spectrum and u.dtype == dtype and k.dtype == spectrum_dtype(dtype) and u.dim() == d + 2
            and k.dim() == d + 1 and k.shape[0] == u.shape[1] and u.numel() > 0
            and _whole_period(list(u.shape[2:]), n, start, length, out_dtype, dtype)
            and not (u.is_conj() or k.is_conj() or k.is_neg() or u.is_neg()))


def _fft_convnd(
    threads: int,
    u: Tensor,
    k: Tensor,
    n: list[int],
    start: list[int],
    length: list[int],
    scale: float,
    n_power: float,
    conj_kernel: bool,
    out_dtype: torch.dtype,
    dtype: torch.dtype,
    constant_kernel: bool = False,
    kernel_is_spectrum: bool = False,
) -> Tensor:
    d = len(n)
    axes = list(range(-d, 0))
    batch = broadcast_shapes(u.shape[:-d], k.shape[:-d])
    if 0 in batch or 0 in length:
        return torch.empty((*batch, *length), dtype=out_dtype)
    Lu, Lk = list(u.shape[-d:]), list(k.shape[-d:])
    spec = [*n[:-1], n[-1] // 2 + 1]
    total = scale * float(math.prod(n)) ** n_power
    lay = make_layout(batch, _flat(k, d))
    u3 = grid_view(_flat(u, d), lay)  # (Ko, Hk, S)
    row_bytes = math.prod(spec) * (16 if dtype == torch.float64 else 8)
    rows_per_tile = max(1, TILE_BYTES // row_bytes)

    # A call whose spectra fit FAST_BYTES is one tile anyway: the tiles' row transposes and
    # output copy would be extra passes (bench/nd.py --quick, 2026-12-02, torch on 2 threads,
    # tiled -> inline: (4, 32, 32, 64) 0.40x -> 0.77x eager, (1, 14, 14, 384) 0.30x -> 0.87x).
    inline = u3.numel() * u3.element_size() < INLINE_BYTES or lay.Ko * lay.Hk * row_bytes <= FAST_BYTES

    def prep() -> Tensor:
        if kernel_is_spectrum:
            return prepare_spectrum(lay.k2, spec, conj_kernel, total, dtype)
        return prepare_kernel(lay.k2, Lk, n, conj_kernel, total, dtype, threads)

    K = None
    variant = ("fft-nd", tuple(n), tuple(Lk), conj_kernel, total, dtype, kernel_is_spectrum)
    cdtype = spectrum_dtype(dtype)
    if kernel_is_spectrum and total == 1.0 and not conj_kernel and lay.k2.dtype == cdtype and lay.k2.is_contiguous():
        K = lay.k2.view(lay.Hk, *spec)  # W is already what the tiles multiply by: no copy, nothing to cache
    elif kernel_is_spectrum:
        # constant or not: preparing W (a copy, scale and conjugate folded in) is one pass over
        # it, as comparing it with a stored copy would be, without the lookup (GFNet's (64, 32, 17)
        # spectrum: 48.6 us to prepare, 63.3 us to find and compare, 1 thread)
        pass
    elif constant_kernel:
        K = cpu_cache.lookup(_memory_order(lay.k2), variant, prep)
    elif (lay.Ko > 1 or k.dim() < u.dim()) and not (torch.is_grad_enabled() or k.requires_grad):
        # A weight-like kernel (shared by batch rows) at inference: GFNet's graph rebuilds it
        # from the parameter spectrum every call, equal each time; recognised by value.
        K = cpu_cache.lookup_value(lay.k2, variant, prep)
    if K is None:
        K = prep()

    if _whole_period(Lu, n, start, length, out_dtype, dtype):
        u4 = u3.unflatten(-1, Lu)
        with intra_op_threads(threads):  # the count the call had: the C++ shares its items out over it
            return _kept_call(u4 if u4.dtype == dtype else u4.to(dtype), K, n, (*batch, *n))
    if inline:
        threads = 1  # waking the pool costs more than it saves

    def cyclic(x: Tensor, Kh: Tensor) -> Tensor:
        """x (..., h, *Lu) real tile -> (..., h, *n): transform, product, inverse."""
        X = torch.fft.rfftn(x if x.dtype == dtype else x.to(dtype), s=n, dim=axes)
        X.mul_(Kh)
        return torch.fft.irfftn(X, s=n, dim=axes)

    def convolve(x: Tensor, Kh: Tensor, dst: Tensor) -> None:
        """x (..., h, *Lu) real tile -> dst (..., h, prod length), windowed."""
        y = cyclic(x, Kh)
        dst.view(*y.shape[:-d], *length).copy_(window_nd(y, start, length))

    if inline:  # one tile, on this thread: as few Python-level calls as the reference makes
        x = u3.unflatten(-1, Lu)
        # channels-last rows copied into contiguous ones first: MKL's multi-axis transforms of
        # strided rows cost more than the copy (GFNet's (4, 32, 32, 64) filter, 1 thread: the
        # operator inline on the strided rows 1.87-1.89 ms; the transforms after a copy 1.56-1.60)
        y = cyclic(x if x.is_contiguous() else x.contiguous(), K)
        if out_dtype == dtype and list(length) == list(n) and not any(start):
            return y.view(*batch, *length)  # the whole period: the inverse's fresh result is the output
        out = torch.empty((*batch, *length), dtype=out_dtype)
        out.view(*y.shape[:-d], *length).copy_(window_nd(y, start, length))
        return out

    out = torch.empty((*batch, *length), dtype=out_dtype)
    out3 = out.view(lay.Ko, lay.Hk, -1)

    Hk, S = lay.Hk, u3.shape[-1]
    item = torch.finfo(dtype).bits // 8
    whole_rows = (
        Hk > 1 and lay.Ko >= threads and u3.stride(1) == 1 and u3.stride(2) == Hk
        and Hk * S * item <= ROW_BUFFER_BYTES
    )
    if whole_rows:
        # Channels-last: a unit is a few batch rows, each transposed whole, convolved in tiles of
        # channels (or all rows of the unit at once when they fit a tile: fewer calls).
        per = max(1, min(rows_per_tile // Hk, -(-lay.Ko // threads)))
        units: list = [[(o0, min(lay.Ko, o0 + per))] for o0 in range(0, lay.Ko, per)]

        def make_worker():
            state: dict = {"buf": None}

            def work(unit: list[tuple[int, int]]) -> None:
                if state["buf"] is None:
                    state["buf"] = torch.empty((per, Hk, S), dtype=dtype)  # reused: one allocation per thread
                for o0, o1 in unit:
                    buf = state["buf"][: o1 - o0]
                    for o in range(o0, o1):
                        _rows_contiguous(u3[o], dtype, buf[o - o0])
                    x = buf.view(o1 - o0, Hk, *Lu)
                    for h0 in range(0, Hk, rows_per_tile):
                        h1 = min(Hk, h0 + rows_per_tile)
                        convolve(x[:, h0:h1], K[h0:h1], out3[o0:o1, h0:h1])

            return work
    else:
        units = [[box] for box in _boxes(lay.Ko, Hk, rows_per_tile, threads)]

        def make_worker():
            def work(unit: list[tuple[int, int, int, int]]) -> None:
                for o0, o1, h0, h1 in unit:
                    x = u3[o0:o1, h0:h1].unflatten(-1, Lu)
                    convolve(x, K[h0:h1], out3[o0:o1, h0:h1])

            return work

    run_tiles(units, make_worker, threads)
    return out
