"""Row-tiled execution for the CPU path: layout, tiles, and both cores.

Every operand is viewed as (Ko, Hk, X): Hk is the number of distinct kernel rows
(the kernel's batch shape is a suffix of the output's batch shape, after leading
ones) and Ko the number of rows sharing each kernel row.  A tile is a box
[o0, o1) x [h0, h1) of that grid, sized so its complex FFT buffer fits in L2
(1 MiB per core here): the prologue (cast, pre-gate), transform, multiply,
inverse, window and epilogue (skip, post-gate, cast) of a tile all run while it is
cache-resident, and only the output is written at full size.

A tile takes all Ko rows of its kernel rows when they fit, so a kernel block's prepared
form (spectrum) is computed once and reused by every row that shares it; a kernel
prepared per call is transformed in blocks of at least KERNEL_BLOCK_ROWS rows.

Threads, two ways (``cpu_cost.use_pool`` picks per call).  Under load MKL's FFT with 2
OpenMP threads parallelises a small batch poorly (measured at load ~6, 64 rows of n=2048:
2 intra-op threads 6.4 ms vs 3.4 ms with 1; 2 Python threads with 1 intra-op thread
each: 1.9 ms), so long calls share tiles out to a small pool of Python threads (torch
ops release the GIL), each running torch with one intra-op thread, pulling work
dynamically.  On a quiet machine MKL does well (1.74x on 2 threads at those sizes), and
libgomp's workers spin ~10 ms after every OpenMP op, holding a core a pool thread needs:
short calls run their tiles on the calling thread with torch's own intra-op threads.
``torch.set_num_threads`` is thread-local in the OpenMP build, but it also sets the count a
thread started later begins with (process-wide): every change here is scoped
(``intra_op_threads``), so when a call returns, or raises, the caller's count and the one new
threads get are what the caller had.

Output buffers of at least HUGE_OUTPUT_BYTES get transparent huge pages (``empty_output``).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

# Bytes of complex FFT buffer per tile.  A tile costs ~14 Python-level torch calls
# (~50 us) besides its FFTs, which matters for short rows (64 rows at n = 2048 take
# ~260 us), so tiles are as large as still runs from cache: about the 1 MiB per-core
# L2 of complex spectrum (the real input/output tiles then live in the 32 MiB L3).
# Measured, one thread, best of 12 rounds (machine shared, load ~6): (4,256,1024)
# 512 KiB tiles 8.4 ms, 1 MiB 4.8 ms, 2 MiB 8.8 ms; (4,256,4096) 512 KiB 67.9 ms,
# 1 MiB 52.3 ms, 2 MiB 49.3 ms.
# Long rows still go at least 4 to a tile: MKL transforms a single row of n = 262144
# several times slower than a batch of a few (measured, (1, 64, 131072), kernel as input,
# 5 rounds: 1 row per tile 897 ms wall / 583 ms CPU, 2 rows 278 / 173, 4 rows 251 / 153,
# 8 rows 305 / 179; eager 668 / 434).  Peak memory then: ~4 rows of buffers per thread.
TILE_BYTES = 1024 * 1024
MIN_TILE_ROWS = 4
# A call small enough to run on the caller's OpenMP threads (cpu_cost.use_pool) shares each
# tile between them: twice the bytes, so each of 2 threads still works on an L2's worth.
# Larger tiles mean fewer rounds of calls but more memory: measured, medians of 100
# interleaved calls, constant kernel (two runs): (4, 256, 1024) 2x 7.8 / 5.1 ms, 4x 7.3 / 4.8,
# 8x 8.4 / 5.4; (4, 64, 4096) 2x 6.5 / 6.1, 4x 6.2 / 5.8, 8x 7.7 / 6.3; but at 4x the peak
# extra memory at (4, 256, 1024) is 9 MiB against eager's 26 (7 MiB at 2x).
SHARED_TILE_FACTOR = 2


@dataclass
class Layout:
    Ko: int
    Hk: int
    batch: torch.Size  # broadcast batch shape of the output
    k2: Tensor  # (Hk, Lk) kernel rows


def _full_rank(t: Tensor, rank: int) -> Tensor:
    return t.reshape((1,) * (rank - t.dim()) + tuple(t.shape)) if t.dim() < rank else t


def layout_geometry(batch: torch.Size, k_shape: torch.Size) -> tuple[int, int, bool]:
    """(Ko, Hk, interleaved) of ``make_layout``: shapes only, so a per-shape plan decides it once."""
    rank = len(batch)
    kb = (1,) * (rank + 1 - len(k_shape)) + tuple(k_shape[:-1]) if len(k_shape) <= rank + 1 else tuple(k_shape[:-1])
    for s in range(rank + 1):
        if kb[s:] == tuple(batch[s:]) and all(d == 1 for d in kb[:s]):
            return math.prod(batch[:s]), math.prod(batch[s:]), False
    return 1, math.prod(batch), True


def layout_from(geometry: tuple[int, int, bool], batch: torch.Size, k: Tensor) -> Layout:
    """The Layout of ``geometry`` (from ``layout_geometry``) for this call's kernel tensor."""
    Ko, Hk, interleaved = geometry
    if not interleaved:
        return Layout(Ko, Hk, batch, k.reshape(Hk, k.shape[-1]))
    # Kernel batch interleaved with broadcast dims (rare): materialise its rows per output
    # row; correct, at the cost of transforming the kernel once per output row.
    k2 = _full_rank(k, len(batch) + 1).expand(*batch, k.shape[-1]).reshape(Hk, k.shape[-1])
    return Layout(Ko, Hk, batch, k2)


def make_layout(batch: torch.Size, k: Tensor) -> Layout:
    """Split the batch into (outer, inner) with the kernel's batch == inner (after ones)."""
    return layout_from(layout_geometry(batch, k.shape), batch, k)


def grid_view(t: Tensor | None, lay: Layout) -> Tensor | None:
    """t broadcast to (batch..., X) then viewed as (Ko, Hk, X) (a view whenever strides allow)."""
    if t is None:
        return None
    rank = len(lay.batch)
    t = _full_rank(t, rank + 1)
    t = t.expand(*lay.batch, t.shape[-1])
    return t.reshape(lay.Ko, lay.Hk, t.shape[-1])


def tiles(lay: Layout, row_bytes: int, kernel_blocks: bool = True, shared: bool = False,
          ) -> list[list[tuple[int, int, int, int]]]:
    """Work units: lists of boxes (o0, o1, h0, h1), each box about TILE_BYTES of complex buffer
    (SHARED_TILE_FACTOR times that when all threads work on each box: ``shared``).

    A box takes all Ko rows of its kernel rows when they fit.  With ``kernel_blocks`` (the
    kernel is prepared per call) a unit is a block of at least KERNEL_BLOCK_ROWS kernel rows
    (at most KERNEL_BLOCK_BYTES of spectrum) and every box using them: one thread prepares
    the block in one transform call and runs all its boxes.  Without (a cached kernel), or
    when there are fewer than BALANCE blocks to share out, a unit is one box (preparing its
    own rows).
    """
    rows = max(MIN_TILE_ROWS, TILE_BYTES * (SHARED_TILE_FACTOR if shared else 1) // max(row_bytes, 1))
    hh = max(1, min(lay.Hk, rows // lay.Ko))
    oo = max(1, min(lay.Ko, rows // hh))
    o_splits = _splits(lay.Ko, oo, balance=lay.Hk == 1)
    if kernel_blocks:
        want = min(KERNEL_BLOCK_ROWS, max(1, KERNEL_BLOCK_BYTES // max(row_bytes, 1)))
        blocks = _splits(lay.Hk, min(lay.Hk, hh * -(-want // hh)), balance=True)
        if len(blocks) >= BALANCE:
            return [[(o0, o1, h0, min(h0 + hh, H1)) for h0 in range(H0, H1, hh) for o0, o1 in o_splits]
                    for H0, H1 in blocks]
    return [[(o0, o1, h0, h1)] for h0, h1 in _splits(lay.Hk, hh, balance=len(o_splits) == 1) for o0, o1 in o_splits]


def largest_box(units: list[list[tuple[int, int, int, int]]]) -> int:
    """Rows of the largest box: what a per-thread row buffer must hold."""
    return max((o1 - o0) * (h1 - h0) for unit in units for o0, o1, h0, h1 in unit)


def box_rows(buf: Tensor, o0: int, o1: int, h0: int, h1: int) -> Tensor:
    """A box's rows of a (largest_box, X) per-thread buffer, viewed (O, Hh, X)."""
    return buf[: (o1 - o0) * (h1 - h0)].view(o1 - o0, h1 - h0, buf.shape[-1])


def _splits(total: int, step: int, balance: bool) -> list[tuple[int, int]]:
    """[0, total) in ceil(total / step) near-equal pieces (a ragged last piece of one row would
    cost a whole call's overhead); with ``balance``, when that is few pieces, in a multiple
    of BALANCE of them, no smaller than step / 2 (a thread left with one more piece than the
    other waits alone: 9 pieces on 2 threads take 5 piece-times, 12 pieces 3/4 as large 4.5)."""
    count = -(-total // step)
    if balance and count < 4 * BALANCE:
        even = -(-count // BALANCE) * BALANCE
        if 2 * (total // even) >= step:
            count = even
    return [(total * i // count, total * (i + 1) // count) for i in range(count)]


# Kernel rows transformed in one call when the kernel is prepared per call: MKL's cost per
# row falls with the batch (rfft at n = 8192, 1 thread, measured: 1 row 56 us, 4 rows
# 24 us/row, 7 rows 18, 28 rows 13.6, 64 rows 12.7).
KERNEL_BLOCK_ROWS = 16
# ...and at most this many bytes of spectrum per block (each thread holds one): at n = 262144,
# 16 rows would be 16 MiB a thread, and a row's own cost there dwarfs a call's overhead.
KERNEL_BLOCK_BYTES = 4 * 2**20
# Few pieces are cut into a multiple of this many: balanced on 1, 2 or 4 threads, and the
# tiles (so the rows MKL transforms together, so the rounding) never depend on the thread
# count: results are bitwise the same whatever torch.get_num_threads() is.
BALANCE = 4


# Outputs at least this large get transparent huge pages.  glibc serves them with a fresh
# mmap on every call (its mmap threshold stops adapting at 32 MiB), and first-touch faults
# on 4 KiB pages then cost more than writing the data: measured here (KVM guest, THP
# "madvise"), empty + fill of 32 MiB, 1 thread: 21.8 ms, 5.7 ms with MADV_HUGEPAGE, against
# 3.0 ms for 31 MiB served from glibc's heap; at (2, 256, 16384) the operator's output alone
# was 20 ms of its 114 ms.  Smaller outputs come from the heap, already faulted in.
HUGE_OUTPUT_BYTES = 32 * 2**20
_HUGE_PAGE = 2 * 2**20
_MADV_HUGEPAGE = 14
_libc: ctypes.CDLL | None = None


def _madvise_huge(t: Tensor) -> None:
    """Ask for huge pages on the 2 MiB-aligned interior of t's fresh memory (Linux only; the
    kernel may ignore advice, and a failure changes nothing but speed)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    start = t.data_ptr()
    lo = -(-start // _HUGE_PAGE) * _HUGE_PAGE
    hi = (start + t.numel() * t.element_size()) // _HUGE_PAGE * _HUGE_PAGE
    if hi > lo:
        _libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_HUGEPAGE)


def empty_output(shape, dtype: torch.dtype) -> Tensor:
    """A fresh CPU output tensor; a large one on huge pages (see HUGE_OUTPUT_BYTES)."""
    out = torch.empty(shape, dtype=dtype)
    if out.numel() * out.element_size() >= HUGE_OUTPUT_BYTES:
        _madvise_huge(out)
    return out


_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


@contextlib.contextmanager
def intra_op_threads(count: int) -> Iterator[int]:
    """torch runs this thread's ops on ``count`` intra-op threads inside the block; the count it
    had is back after it, however the block ends.  Yields the count it had."""
    saved = torch.get_num_threads()
    if saved == count:
        yield saved
        return
    torch.set_num_threads(count)
    try:
        yield saved
    finally:
        torch.set_num_threads(saved)


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        # A forked child inherits the executor object but not its threads: rebuild it.
        if _pool is None or _pool_pid != os.getpid() or _pool._max_workers < workers:
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)
            # No initializer setting one intra-op thread: torch.set_num_threads in a worker also
            # sets the count threads started later begin with; each drain scopes its own.
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="convfuse-cpu")
            _pool_pid = os.getpid()
        return _pool


_in_worker = threading.local()


def run_tiles(units: list, make_worker: Callable[[], Callable[[list], None]], threads: int | None = None) -> None:
    """Process every unit once, on up to ``threads`` (default torch.get_num_threads()) threads.

    Threads pull units from a shared counter rather than taking fixed halves: on a
    shared machine a core is often busy with someone else's process, and a static split
    then waits for the slow half.  ``make_worker()`` gives each thread its own state (its
    row buffers).  ``threads=1`` runs every unit on the calling thread with its intra-op
    threads as they are (short calls, ``cpu_cost.use_pool``); a caller that already runs
    with one intra-op thread passes the count it had.
    """
    threads = min(torch.get_num_threads() if threads is None else threads, len(units))
    counter = itertools.count()  # next() is atomic under the GIL
    inference = torch.is_inference_mode_enabled()

    def drain(count: int | None = None) -> None:
        # Grad mode, inference mode and the operator's below-autograd dispatch state are
        # thread-local: a pool thread would otherwise record autograd graphs for inputs that
        # require grad, or write into an inference-mode output outside inference mode.
        # ``count``: the intra-op threads a pool thread runs with (1), restored after.
        scoped = intra_op_threads(count) if count is not None else contextlib.nullcontext()
        with scoped, torch.inference_mode(inference), torch.no_grad():
            worker = make_worker()
            for i in iter(lambda: next(counter), None):
                if i >= len(units):
                    return
                worker(units[i])

    if threads <= 1 or getattr(_in_worker, "active", False):
        drain()
        return

    pool = _get_pool(threads - 1)
    futures = []
    with intra_op_threads(1):
        _in_worker.active = True
        try:
            futures = [pool.submit(drain, 1) for _ in range(threads - 1)]
            drain()
        finally:
            # Wait for every worker even when this thread failed: they write into the output
            # (and restore their thread counts before their futures finish).
            errors = [f.exception() for f in futures]
            _in_worker.active = False
    for error in errors:
        if error is not None:
            raise error
