"""CPU implementation of ``fft_spectral_mix`` (the FNO spectral layer) that never multiplies or
stores the zero bins eager's ``out_ft = torch.zeros(...)`` holds.

Eager's layer transforms the whole input (rfftn), writes a zero spectrum as large as that
(complex: twice the input's bytes), multiplies the kept corner blocks and transforms the whole
spectrum back.  Only the blocks are ever non-zero, so here:

- forward, last axis first: only the columns the blocks use are computed, then the complex
  transform of each earlier axis runs over those columns only, and only the blocks' rows of its
  result are kept (per axis, the union of the blocks' ranges: ``Plan``);
- the product: per block one batched GEMM over frequencies, (F, B, Ci) @ (F, Ci, Co), done as a
  real GEMM on interleaved (re, im) planes with the 2x2 real form of each complex weight
  (measured: MKL's real sgemm runs ~1.7x the rate of torch's complex bmm here);
- inverse in reverse: an earlier axis's zero rows are supplied by padding just before its
  transform, and the last axis runs from the kept columns straight to the real output.

The last axis by DFT matrix: only a few of its n//2+1 bins are wanted, and a GEMM against the
(L, 2 * cols) cos/sin matrix costs 4 * n * cols flops a row against a real FFT's ~2.5 n log2 n
at a far lower rate on this CPU; ``dft_pays`` picks it by a measured rule (module comment there).
Its inverse matrix carries irfft's weights (1 for DC and an even n's Nyquist bin, 2 between),
and its sine rows vanish at exactly those two bins: their imaginary parts are discarded, as
irfft does.  Elsewhere ``torch.fft.rfft`` / ``irfft(n=)`` (which zero-pads the short spectrum
itself, never stored here).

The scale (scale * N**n_power / N, the 1/N being the inverses' normalization) is folded into
the prepared weights; with ``constant_weights`` those are cached by ``cpu_cache`` (bits
compared, the sound rule).  Work runs in L2-sized tiles on ``cpu_exec``'s pool, one intra-op
thread per thread, in three phases: transforms of the input rows, GEMMs in frequency chunks,
inverse transforms of the output rows.  A small call (under INLINE_BYTES of input) runs each
phase as one tile on the calling thread with no pool machinery: eager's layer makes ~8 torch
calls there, and every extra Python-level call is a visible share of its time.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from convfuse.backends import cpu_cache
from convfuse.backends.cpu_exec import TILE_BYTES, empty_output, intra_op_threads, run_tiles

# Below this many bytes of input the call runs on the calling thread (waking the pool costs more).
INLINE_BYTES = 256 * 1024
# ...and below this many, the plain reference on one thread: this path's ~30 extra small torch
# calls cost more than eager's full transforms save there (measured, one thread, best of a
# loaded machine's rounds: (4, 32, 256), 16 modes: reference 190 us, this path 285 us;
# (4, 16, 1024): 365 / 314; (4, 32, 32x32), 12 modes: 2170 / 2340, within noise).
REFERENCE_BYTES = 160 * 1024
# Frequencies per GEMM work unit: the unit's slice of X, W and Y stays in L2.
GEMM_CHUNK_BYTES = 1024 * 1024
# Below this many flops the products run on the calling thread: handing them to the pool cost
# ~1 ms a call on the loaded machine, more than the GEMMs themselves (32x32 grid, 12 modes).
GEMM_POOL_FLOPS = 64 * 10**6
# None: the last-axis method dft_pays chooses; True/False: forced (tests, benchmarks).
FORCE_DFT: bool | None = None
DFT_MAX_MATRIX_BYTES = 64 * 2**20


def dft_pays(n: int, cols: int) -> bool:
    """Whether the last axis runs as a GEMM against its DFT columns: a real GEMM costs 4 n cols
    flops a row against rfft's ~2.5 n log2 n, at several times the rate.  Measured here (the
    whole operator, one thread, fp32, 2 corner blocks in 2-D; ms, FFT / DFT): n = 256, 16 bins
    1.02 / 0.85; 1024: 16 bins 2.10 / 2.03, 32 bins 1.94 / 1.74; 8192: 16 bins 15.9 / 6.1,
    32 bins 16.7 / 13.4; 65536, 32 bins 144 / 102; 64x64, 16 bins 20.2 / 23.2; 256x256, 16 bins
    51.3 / 48.3, 32 bins 140 / 178.  The crossing lies near cols = 2.5 log2 n."""
    return cols <= DFT_COLS_PER_LOG2 * math.log2(max(n, 2))


DFT_COLS_PER_LOG2 = 2.5


@dataclass(frozen=True)
class Plan:
    d: int
    n: tuple[int, ...]
    lows: tuple[tuple[int, ...], ...]  # per block
    sizes: tuple[tuple[int, ...], ...]  # per block
    spans: tuple[tuple[tuple[int, int], ...], ...]  # per axis: merged (lo, hi) ranges the blocks use
    pos: tuple[tuple[int, ...], ...]  # per block: its start in the compact (kept-only) axes
    hi: int  # the inverse keeps last-axis columns [0, hi): irfft(n=) pads the rest
    cols: tuple[int, ...]  # the last-axis bins the forward computes
    compact: tuple[int, ...]  # the forward's kept sizes per axis
    dft: bool  # the last axis by DFT matrix (dft_pays, decided once per plan)


def _merge(ranges) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple(map(tuple, out))


def make_plan(lows: list[int], sizes: list[list[int]], n: list[int]) -> Plan:
    return _plan(tuple(lows), tuple(tuple(int(s) for s in m) for m in sizes), tuple(n))


@functools.lru_cache(maxsize=256)
def _plan(lows: tuple, sizes: tuple, n: tuple) -> Plan:
    d = len(n)
    lw = tuple(tuple(lows[j * d:(j + 1) * d]) for j in range(len(sizes)))
    sz = tuple(tuple(int(s) for s in m) for m in sizes)
    keep = [j for j, m in enumerate(sz) if math.prod(m) > 0]
    lw, sz = tuple(lw[j] for j in keep), tuple(sz[j] for j in keep)
    spans = tuple(_merge((lo[i], lo[i] + m[i]) for lo, m in zip(lw, sz)) for i in range(d))

    def compact(i: int, x: int) -> int:
        before = 0
        for lo, hi in spans[i]:
            if lo <= x < hi:
                return before + x - lo
            before += hi - lo
        raise AssertionError("a block start outside the merged spans")

    pos = tuple(tuple(compact(i, lo[i]) for i in range(d)) for lo in lw)
    hi = max((lo[-1] + m[-1] for lo, m in zip(lw, sz)), default=0)
    cols = tuple(c for lo, h in spans[-1] for c in range(lo, h))
    compact = tuple(sum(h - lo for lo, h in s) for s in spans)
    dft = dft_pays(n[-1], len(cols)) and n[-1] * 2 * max(hi, len(cols)) * 8 <= DFT_MAX_MATRIX_BYTES
    return Plan(d, tuple(n), lw, sz, spans, pos, hi, cols, compact, dft)


def _gather(x: Tensor, axis: int, spans) -> Tensor:
    if len(spans) == 1:
        return x.narrow(axis, spans[0][0], spans[0][1] - spans[0][0])
    # copies into one buffer: torch.cat of strided complex slices ran ~20x slower (measured)
    shape = list(x.shape)
    shape[axis] = sum(hi - lo for lo, hi in spans)
    out = x.new_empty(shape)
    at = 0
    for lo, hi in spans:
        out.narrow(axis, at, hi - lo).copy_(x.narrow(axis, lo, hi - lo))
        at += hi - lo
    return out


def _spread(x: Tensor, axis: int, spans, size: int) -> Tensor:
    """The compact axis back at full ``size``, zeros where no block is (just before its transform)."""
    if len(spans) == 1 and spans[0][0] == 0:
        return x  # the transform's n= pads the tail
    shape = list(x.shape)
    shape[axis] = size
    z = x.new_zeros(shape)
    at = 0
    for lo, hi in spans:
        z.narrow(axis, lo, hi - lo).copy_(x.narrow(axis, at, hi - lo))
        at += hi - lo
    return z


# -- DFT matrices for the last axis (cached: a few per shape) ----------------------------------

_mats: OrderedDict = OrderedDict()
_mats_lock = threading.Lock()


def _dft_matrix(n: int, cols: tuple[int, ...], length: int, inverse: bool, dtype: torch.dtype) -> Tensor:
    key = (n, cols, length, inverse, dtype)
    with _mats_lock:
        m = _mats.get(key)
        if m is not None:
            _mats.move_to_end(key)
            return m
    k = torch.tensor(cols, dtype=torch.float64)
    t = torch.arange(length, dtype=torch.float64)
    # the angle from (k t mod n): exact integers, so large n loses no phase precision
    ang = (torch.outer(t, k).remainder(n)) * (2 * math.pi / n)  # (length, cols)
    if not inverse:  # X_k = sum_t u_t (cos - i sin): (length, 2 cols), (re, im) interleaved
        m = torch.stack([ang.cos(), -ang.sin()], dim=-1).reshape(length, 2 * len(cols))
    else:  # y_t = sum_k w_k (Re Y_k cos - Im Y_k sin): (2 cols, length)
        w = torch.where((k == 0) | (2 * k == n), 1.0, 2.0)
        m = torch.stack([ang.cos().T * w[:, None], -ang.sin().T * w[:, None]], dim=1).reshape(2 * len(cols), length)
    m = m.to(dtype).contiguous()
    with _mats_lock:
        _mats[key] = m
        while len(_mats) > 16:
            _mats.popitem(last=False)
    return m


# -- the three phases ------------------------------------------------------------------------------


def _forward_tile(x: Tensor, plan: Plan, real: torch.dtype, dft: bool) -> Tensor:
    """x (rows, *L) real -> (rows, *compact) complex: the blocks' bins of rfftn(x, s=n), only those."""
    d, n = plan.d, plan.n
    for i in range(d - 1):  # beyond n: truncated, as rfftn(s=n) does
        if x.shape[1 + i] > n[i]:
            x = x.narrow(1 + i, 0, n[i])
    x = x if x.dtype == real else x.to(real)
    if dft:
        length = min(x.shape[-1], n[-1])
        m = _dft_matrix(n[-1], plan.cols, length, False, real)
        X = torch.view_as_complex((x[..., :length] @ m).unflatten(-1, (-1, 2)))
    else:
        X = _gather(torch.fft.rfft(x, n=n[-1], dim=-1), x.dim() - 1, plan.spans[-1])
    for i in reversed(range(d - 1)):
        X = _gather(torch.fft.fft(X, n=n[i], dim=1 + i), 1 + i, plan.spans[i])
    return X


def _inverse_tile(Y: Tensor, plan: Plan, real: torch.dtype, dft: bool, dst: Tensor) -> None:
    """Y (rows, *compact leading, hi) complex -> dst (rows, *n) real: irfftn without the 1/N."""
    d, n = plan.d, plan.n
    for i in range(d - 1):
        Y = torch.fft.ifft(_spread(Y, 1 + i, plan.spans[i], n[i]), n=n[i], dim=1 + i, norm="forward")
    direct = dst.is_contiguous() and dst.dtype == real  # written in place: no pass over the output
    if dft:
        m = _dft_matrix(n[-1], tuple(range(plan.hi)), n[-1], True, real)
        x = torch.view_as_real(Y).flatten(-2)
        y = torch.matmul(x, m, out=dst) if direct else x @ m
    else:
        y = torch.fft.irfft(Y, n=n[-1], dim=-1, norm="forward", out=dst if direct else None)
    if not direct:
        dst.copy_(y)


def _row_units(R: int, C: int, row_bytes: int, threads: int) -> list[tuple[int, int, int, int]]:
    """Boxes (r0, r1, c0, c1) of (batch, channel) rows, about a tile each: whole batch rows when
    all channels fit, else channel ranges of one batch row (each box's rows are contiguous in a
    channels-first tensor)."""
    total = R * C
    count = max(-(-total * max(1, row_bytes) // TILE_BYTES), min(total, threads))  # every thread gets work
    per = max(1, -(-total // count))
    if per >= C:
        rr = per // C
        return [(r, min(R, r + rr), 0, C) for r in range(0, R, rr)]
    return [(r, r + 1, c, min(C, c + per)) for r in range(R) for c in range(0, C, per)]


def _forward_all(u3: Tensor, plan: Plan, real, cplx, dft: bool, threads: int) -> Tensor:
    """u3 (R, C, *L) -> (R, C, *compact) complex spectrum of the kept bins."""
    R, C = u3.shape[:2]
    compact = plan.compact
    if R * C == 0:
        return torch.empty((R, C, *compact), dtype=cplx)
    lead = math.prod(min(a, b) for a, b in zip(u3.shape[2:-1], plan.n[:-1]))
    # a tile's buffer: rfft's whole one-sided row, or only the kept bins by DFT matrix (whose
    # tiles must be tall: each GEMM streams the matrix once, 8 MiB at n = 64K)
    bins = len(plan.cols) if dft else plan.n[-1] // 2 + 1
    row_bytes = lead * bins * (16 if cplx == torch.complex128 else 8)
    if threads == 1 and row_bytes * R * C <= 4 * TILE_BYTES:  # small: one tile, no pool machinery
        return _forward_tile(u3.flatten(0, 1), plan, real, dft).view(R, C, *compact)
    X = torch.empty((R, C, *compact), dtype=cplx)
    units = [[b] for b in _row_units(R, C, row_bytes, threads)]

    def make_worker():
        def work(unit) -> None:
            for r0, r1, c0, c1 in unit:
                x = u3[r0:r1, c0:c1].flatten(0, 1)
                X[r0:r1, c0:c1].copy_(_forward_tile(x, plan, real, dft).unflatten(0, (r1 - r0, c1 - c0)))

        return work

    run_tiles(units, make_worker, threads)
    return X


def _block_slices(plan: Plan, j: int, last_at_lo: bool) -> tuple:
    """Block j's slices of a compact spectrum; the inverse's last axis is [0, hi), so there at lo."""
    d = plan.d
    at = [*plan.pos[j][:-1], plan.lows[j][-1] if last_at_lo else plan.pos[j][-1]]
    return (slice(None), slice(None), *(slice(a, a + m) for a, m in zip(at, plan.sizes[j])))


def _freq_major(x: Tensor) -> Tensor:
    """(R, C, *m) complex -> (F, R, 2C) real, (re, im) interleaved per channel (one copy)."""
    d = x.dim() - 2
    xf = x.permute(*range(2, 2 + d), 0, 1).reshape(-1, x.shape[0], x.shape[1])
    return torch.view_as_real(xf.contiguous()).flatten(-2)


def real_form(w: Tensor, factor: float = 1.0) -> Tensor:
    """(F, Ci, Co) complex -> (F, 2Ci, 2Co) real times factor: [xr xi] @ [[wr wi], [-wi wr]] = [yr yi],
    interleaved; the factor rides on the three writes."""
    F_, Ci, Co = w.shape
    wv = torch.view_as_real(w.resolve_conj())  # (F, Ci, Co, 2) = [wr, wi]
    out = torch.empty((F_, Ci, 2, Co, 2), dtype=wv.dtype)
    torch.mul(wv, factor, out=out[:, :, 0])  # the rows x's real parts meet
    torch.mul(wv[..., 1], -factor, out=out[:, :, 1, :, 0])  # x's imaginary parts: [-wi, wr]
    torch.mul(wv[..., 0], factor, out=out[:, :, 1, :, 1])
    return out.view(F_, 2 * Ci, 2 * Co)


def prepare_weight(w: Tensor, factor: float, cplx: torch.dtype) -> Tensor:
    """W (Ci, Co, *m) -> (F, 2Ci, 2Co) real form, scale folded in."""
    Ci, Co = w.shape[:2]
    w2 = w.detach().to(cplx).resolve_conj().reshape(Ci * Co, -1)  # (Ci Co, F)
    if cplx == torch.complex64 and w2.stride(-1) == 1:
        # one 8-byte element per value: ATen's blocked 2-D transpose (a strided permute of the
        # complex tensor measured ~10x slower, and elementwise ops keep such strides)
        wf = w2.view(torch.float64).t().contiguous().view(cplx)
    else:
        wf = w2.t().contiguous()
    return real_form(wf.view(-1, Ci, Co), factor)


def _gemm_units(F: int, rows: int, cols: int, item: int, threads: int) -> list[tuple[int, int]]:
    per = max(1, GEMM_CHUNK_BYTES // max(1, rows * cols * item))
    count = max(-(-F // per), min(F, threads))
    return [(F * i // count, F * (i + 1) // count) for i in range(count)]


def _products(X: Tensor, weights: list[Tensor], plan: Plan, Co: int, factor: float, constant: bool,
              cplx, threads: int) -> Tensor:
    """The blocks' products as the inverse's compact spectrum (R, Co, *compact leading, hi)."""
    R = X.shape[0]
    shape = (R, Co, *plan.compact[:-1], plan.hi)
    whole = len(plan.sizes) == 1 and plan.sizes[0] == shape[2:]  # one block is the whole kept spectrum
    Y = None if whole else torch.zeros(shape, dtype=cplx)  # modes only: small; gaps stay zero
    blocks = [j for j in range(len(weights)) if math.prod(weights[j].shape[2:]) > 0]
    for b, j in enumerate(blocks):
        w = weights[j]
        # the conjugate bit is in the key: d u's call passes W^H as a view of W's own storage
        variant = ("spectral-mix", factor, cplx, w.is_conj())
        W = cpu_cache.lookup(w, variant, lambda: prepare_weight(w, factor, cplx)) if constant else None
        if W is None:
            W = prepare_weight(w, factor, cplx)
        xf = _freq_major(X[_block_slices(plan, b, False)])  # (F, R, 2Ci)
        if 2 * W.numel() * R < GEMM_POOL_FLOPS or threads == 1:
            out = torch.bmm(xf, W)  # (F, R, 2Co)
        else:
            out = torch.empty((W.shape[0], R, W.shape[2]), dtype=W.dtype)
            units = [[u] for u in _gemm_units(W.shape[0], W.shape[1], W.shape[2], W.element_size(), threads)]

            def make_worker(xf=xf, W=W, out=out):
                def work(unit) -> None:
                    for f0, f1 in unit:
                        torch.bmm(xf[f0:f1], W[f0:f1], out=out[f0:f1])

                return work

            run_tiles(units, make_worker, threads)
        m = plan.sizes[b]
        yb = torch.view_as_complex(out.unflatten(-1, (-1, 2))).reshape(*m, R, Co)  # (*m, R, Co)
        yb = yb.permute(-2, -1, *range(len(m)))  # (R, Co, *m)
        if whole:
            return yb
        Y[_block_slices(plan, b, True)].copy_(yb)
    return Y


def _inverse_all(Y: Tensor, plan: Plan, real, dft: bool, out3: Tensor, threads: int) -> None:
    R, Co = Y.shape[:2]
    row_bytes = math.prod(plan.n[:-1]) * (plan.hi if dft else plan.n[-1] // 2 + 1) * Y.element_size()
    if threads == 1 and row_bytes * R * Co <= 4 * TILE_BYTES:  # small: one tile, no pool machinery
        _inverse_tile(Y.flatten(0, 1), plan, real, dft, out3.flatten(0, 1))
        return
    units = [[b] for b in _row_units(R, Co, row_bytes, threads)]

    def make_worker():
        def work(unit) -> None:
            for r0, r1, c0, c1 in unit:
                _inverse_tile(Y[r0:r1, c0:c1].flatten(0, 1), plan, real, dft, out3[r0:r1, c0:c1].flatten(0, 1))

        return work

    run_tiles(units, make_worker, threads)


def _lead_as_rows(t: Tensor, d: int) -> Tensor:
    """(*B, C, *L) -> (R, C, *L), a view whenever the batch axes merge (channels-last merges too)."""
    return t.reshape(-1, *t.shape[t.dim() - d - 1:])


def spectral_mix_cpu(u: Tensor, weights: list[Tensor], lows: list[int], n: list[int], scale: float,
                     n_power: float, out_dtype: torch.dtype, constant_weights: bool = False) -> Tensor:
    """The operator on CPU tensors (arguments checked by the caller)."""
    d = len(n)
    real, cplx = (torch.float64, torch.complex128) if u.dtype == torch.float64 else (torch.float32, torch.complex64)
    Co = weights[0].shape[1]
    out = empty_output((*u.shape[: u.dim() - d - 1], Co, *n), out_dtype)
    if out.numel() == 0:
        return out
    plan = make_plan(lows, [list(w.shape[2:]) for w in weights], n)
    if not plan.sizes:
        return out.zero_()
    u3 = _lead_as_rows(u, d)
    dft = plan.dft if FORCE_DFT is None else FORCE_DFT
    factor = scale * float(math.prod(n)) ** (n_power - 1.0)
    with intra_op_threads(1) as threads:
        if u3.numel() * u3.element_size() < INLINE_BYTES:
            threads = 1
        X = _forward_all(u3, plan, real, cplx, dft, threads)
        Y = _products(X, [w for w in weights if math.prod(w.shape[2:]) > 0], plan, Co, factor,
                      constant_weights, cplx, threads)
        del X
        direct = out_dtype == real
        out3 = out.view(-1, Co, *n) if direct else torch.empty((u3.shape[0], Co, *n), dtype=real)
        _inverse_all(Y, plan, real, dft, out3, threads)
    if not direct:
        out.view(-1, Co, *n).copy_(out3)
    return out


def wgrad_cpu(u: Tensor, g: Tensor, lows: list[int], sizes: list[int], n: list[int], scale: float,
              n_power: float) -> list[Tensor]:
    """d W_j = kappa * sum_b conj(X[block]) * D * R[block] (ops_spectral.wgrad_reference), the
    transforms of u and g pruned to the blocks as in the forward."""
    d = len(n)
    real, cplx = (torch.float64, torch.complex128) if u.dtype == torch.float64 else (torch.float32, torch.complex64)
    block_sz = [sizes[j * d:(j + 1) * d] for j in range(len(sizes) // d)]
    Ci, Co = u.shape[-d - 1], g.shape[-d - 1]
    result = [torch.zeros((Ci, Co, *m), dtype=cplx) for m in block_sz]
    plan = make_plan(lows, block_sz, n)
    u3, g3 = _lead_as_rows(u, d), _lead_as_rows(g, d)
    if not plan.sizes or u3.shape[0] == 0:
        return result
    dft = plan.dft if FORCE_DFT is None else FORCE_DFT
    kappa = scale * float(math.prod(n)) ** n_power
    nonempty = [j for j, m in enumerate(block_sz) if math.prod(m) > 0]
    with intra_op_threads(1) as threads:
        if (u3.numel() + g3.numel()) * u3.element_size() < INLINE_BYTES:
            threads = 1
        X = _forward_all(u3, plan, real, cplx, dft, threads)
        G = _forward_all(g3, plan, real, cplx, dft, threads)
        for b, j in enumerate(nonempty):
            sl = _block_slices(plan, b, False)
            m = plan.sizes[b]
            lo = plan.lows[b][-1]
            w = torch.ones(m[-1], dtype=real)
            k = torch.arange(lo, lo + m[-1])
            w[(k >= 1) & (k <= n[-1] - (n[-1] // 2 + 1))] = 2.0
            xf = X[sl].permute(*range(2, 2 + d), 0, 1).reshape(-1, X.shape[0], Ci)  # (F, R, Ci)
            gf = (G[sl] * (w * kappa)).permute(*range(2, 2 + d), 0, 1).reshape(-1, X.shape[0], Co)
            dw = torch.bmm(xf.conj().transpose(1, 2), gf)  # (F, Ci, Co)
            result[j] = dw.reshape(*m, Ci, Co).permute(-2, -1, *range(d)).contiguous()
    return result
