"""Row-tiled execution for the CPU path: layout, tiles, and both cores.

Every operand is viewed as (Ko, Hk, X): Hk is the number of distinct kernel rows
(the kernel's batch shape is a suffix of the output's batch shape, after leading
ones) and Ko the number of rows sharing each kernel row.  A tile is a box
[o0, o1) x [h0, h1) of that grid, sized so its complex FFT buffer fits in L2
(1 MiB per core here): the prologue (cast, pre-gate), transform, multiply,
inverse, window and epilogue (skip, post-gate, cast) of a tile all run while it is
cache-resident, and only the output is written at full size.

A tile takes all Ko rows of its kernel rows when they fit, so a kernel block's prepared
form (spectrum) is computed once and reused by every row that shares it.

Threads: MKL's FFT parallelises a small batch poorly (measured, 2 cores, 64 rows of
n=2048: one call with 2 intra-op threads 6.4 ms vs 3.4 ms with 1 thread; splitting the
tiles over 2 Python threads with 1 intra-op thread each: 1.9 ms), so tiles are shared
out to a small pool of Python threads (torch ops release the GIL), each running torch
with one intra-op thread, pulling work dynamically.  ``torch.set_num_threads`` is thread-local in the OpenMP
build, so the caller's setting is restored when the call returns.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

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


@dataclass
class Layout:
    Ko: int
    Hk: int
    batch: torch.Size  # broadcast batch shape of the output
    k2: Tensor  # (Hk, Lk) kernel rows


def _full_rank(t: Tensor, rank: int) -> Tensor:
    return t.reshape((1,) * (rank - t.dim()) + tuple(t.shape)) if t.dim() < rank else t


def make_layout(batch: torch.Size, k: Tensor) -> Layout:
    """Split the batch into (outer, inner) with the kernel's batch == inner (after ones)."""
    rank = len(batch)
    kb = tuple(_full_rank(k, rank + 1).shape[:-1])
    for s in range(rank + 1):
        if kb[s:] == tuple(batch[s:]) and all(d == 1 for d in kb[:s]):
            Hk = math.prod(batch[s:])
            Ko = math.prod(batch[:s])
            return Layout(Ko, Hk, batch, k.reshape(Hk, k.shape[-1]))
    # Kernel batch interleaved with broadcast dims (rare): materialise its rows per output
    # row; correct, at the cost of transforming the kernel once per output row.
    rows = math.prod(batch)
    k2 = _full_rank(k, rank + 1).expand(*batch, k.shape[-1]).reshape(rows, k.shape[-1])
    return Layout(1, rows, batch, k2)


def grid_view(t: Tensor | None, lay: Layout) -> Tensor | None:
    """t broadcast to (batch..., X) then viewed as (Ko, Hk, X) (a view whenever strides allow)."""
    if t is None:
        return None
    rank = len(lay.batch)
    t = _full_rank(t, rank + 1)
    t = t.expand(*lay.batch, t.shape[-1])
    return t.reshape(lay.Ko, lay.Hk, t.shape[-1])


def tiles(lay: Layout, row_bytes: int, threads: int) -> list[list[tuple[int, int, int, int]]]:
    """Work units: lists of boxes (o0, o1, h0, h1) of about TILE_BYTES of complex buffer.

    A box takes all Ko rows of its kernel block when they fit, so a kernel block is
    prepared once and used by every row sharing it.  Units are whole kernel blocks
    (no two threads prepare the same block) when there are enough of them to balance
    two threads, else single boxes.
    """
    rows = max(MIN_TILE_ROWS, TILE_BYTES // max(row_bytes, 1))
    hh = max(1, min(lay.Hk, rows // lay.Ko))
    oo = max(1, min(lay.Ko, rows // hh))
    groups = []
    for h0 in range(0, lay.Hk, hh):
        groups.append([(o0, min(o0 + oo, lay.Ko), h0, min(h0 + hh, lay.Hk)) for o0 in range(0, lay.Ko, oo)])
    if len(groups) >= 4 * threads:
        return groups
    return [[box] for group in groups for box in group]


_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


def _single_thread() -> None:
    torch.set_num_threads(1)


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        # A forked child inherits the executor object but not its threads: rebuild it.
        if _pool is None or _pool_pid != os.getpid() or _pool._max_workers < workers:
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="convfuse-cpu", initializer=_single_thread)
            _pool_pid = os.getpid()
        return _pool


_in_worker = threading.local()


def run_tiles(units: list, make_worker: Callable[[], Callable[[list], None]], threads: int | None = None) -> None:
    """Process every unit once, on up to ``threads`` (default torch.get_num_threads()) threads.

    Threads pull units from a shared counter rather than taking fixed halves: on a
    shared machine a core is often busy with someone else's process, and a static split
    then waits for the slow half.  ``make_worker()`` gives each thread its own state
    (the kernel block it prepared last).  A caller that already runs with one intra-op
    thread (so its own torch calls never wait on a busy core) passes the count it had.
    """
    threads = min(torch.get_num_threads() if threads is None else threads, len(units))
    counter = itertools.count()  # next() is atomic under the GIL
    inference = torch.is_inference_mode_enabled()

    def drain() -> None:
        # Grad mode, inference mode and the operator's below-autograd dispatch state are
        # thread-local: a pool thread would otherwise record autograd graphs for inputs that
        # require grad, or write into an inference-mode output outside inference mode.
        with torch.inference_mode(inference), torch.no_grad():
            worker = make_worker()
            for i in iter(lambda: next(counter), None):
                if i >= len(units):
                    return
                worker(units[i])

    if threads <= 1 or getattr(_in_worker, "active", False):
        drain()
        return

    pool = _get_pool(threads - 1)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    _in_worker.active = True
    futures = []
    try:
        futures = [pool.submit(drain) for _ in range(threads - 1)]
        drain()
    finally:
        # Wait for every worker even when this thread failed: they write into the output.
        errors = [f.exception() for f in futures]
        _in_worker.active = False
        torch.set_num_threads(saved)
    for error in errors:
        if error is not None:
            raise error
