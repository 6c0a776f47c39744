"""Drawing random ``Program``s: the same code under hypothesis (``programs()``, which shrinks) and
under ``random.Random`` (``random_program(seed)``, which bench/differential.py runs by the thousand).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Callable

from programs_record import (CASTS, FAMILIES, LAYOUT_OPS, OUT_LAYOUT_OPS, LAYOUTS, RANK_CHANGING, kernel_rows, LENGTHS, MULS, N_CHOICES, NEAR_MISSES, NORMS, PENDING,
                             SCALE_FORMS, SCALE_WHERE, Program)


class Chooser:
    """What the generator draws from: hypothesis's ``draw`` or a ``random.Random``."""

    def __init__(self, draw: Callable | None = None, rng: random.Random | None = None):
        self._draw, self._rng = draw, rng

    def choice(self, options):
        options = list(options)
        if self._draw is not None:
            from hypothesis import strategies as st

            return self._draw(st.sampled_from(options))
        return self._rng.choice(options)

    def boolean(self, p_true: float = 0.5) -> bool:
        if self._draw is not None:
            from hypothesis import strategies as st

            return self._draw(st.booleans())
        return self._rng.random() < p_true

    def chance(self, p_true: float) -> bool:
        """True with probability ``p_true`` under hypothesis too (``boolean`` is even there); shrinks to False."""
        if self._draw is not None:
            from hypothesis import strategies as st

            return self._draw(st.sampled_from(range(100))) >= round(100 * (1 - p_true))
        return self._rng.random() < p_true


# the share of convolutions drawn in one of FAMILIES (each family gets FAMILY_SHARE / len(FAMILIES));
# the rest is the plain spelling, where the other choices vary most
FAMILY_SHARE = 0.3


def draw_program(c: Chooser, *, near_misses: bool = True, pending: bool = False, family: str | None = None,
                 miss: str | None = None) -> Program:
    """Draw one valid program (retrying the few choices that contradict each other).

    ``near_misses``: a share of the programs are near misses; ``pending``: also draw what ``PENDING`` and
    ``Program.pending`` hold back. ``family`` ("" for the plain spelling) and ``miss`` fix that choice
    instead of drawing it (a near miss has no family).
    """
    for _ in range(50):
        p = _draw_once(c, near_misses=near_misses, pending=pending, family=family, miss=miss)
        if p.valid() and (pending or not p.pending):
            return p
    # fall back on a simple convolution with the drawn lengths (and family, where it fits)
    plain = replace(Program(), L=p.L, K=p.K, dynamic=p.dynamic)
    windowed = p.family in ("roll_window", "index_select_window")
    q = replace(plain, family=p.family, kdims=int(p.family == "rfft2"), window="offset" if windowed else "slice",
                offset=int(windowed))
    return q if q.valid() and (pending or not q.pending) else plain


def _draw_once(c: Chooser, *, near_misses: bool, pending: bool, family: str | None, miss: str | None) -> Program:
    layout = c.choice(LAYOUTS)
    rank = c.choice((2, 3, 3, 4, 5))
    batch = tuple(c.choice((1, 2, 3)) for _ in range(rank - 1))
    L = c.choice(LENGTHS)
    rel = c.choice(("lt", "eq", "gt"))
    K = {"lt": max(1, L - c.choice((1, 2, L // 2 or 1))), "eq": L, "gt": L + c.choice((1, 2, 5))}[rel]
    n = c.choice(N_CHOICES)
    kdims = c.choice(range(0 if layout == "last" else 1, len(batch) + 1))
    norms = tuple(c.choice(NORMS) for _ in range(3))
    scales = tuple((c.choice(SCALE_WHERE), c.choice(SCALE_FORMS)) for _ in range(c.choice((0, 0, 1, 2))))
    window = "none" if n == "L" and c.boolean() else c.choice(("slice", "slice", "offset", "narrow"))
    offset = c.choice((1, 2)) if window in ("offset", "narrow") else 0
    mul = c.choice(MULS)
    channels = c.choice((2, 3)) if (mul == "einsum" and layout == "last" and rank == 3 and kdims == 1
                                    and c.boolean(0.3)) else 0
    if miss is None:
        miss = c.choice(NEAR_MISSES) if near_misses and c.boolean(0.3) else ""
    pool = FAMILIES + (PENDING if pending else ())
    if miss:
        pend = ""
    elif family is None:
        pend = c.choice(pool) if pool and c.chance(FAMILY_SHARE) else ""
    else:
        pend = family
    skip = c.boolean(0.4) and not channels
    irfft_n = True
    if miss == "odd_no_n":
        irfft_n = False
    elif n in ("2L", "big") and c.boolean(0.2):
        irfft_n = False
    p = Program(
        layout=layout, batch=batch, L=L, K=K, n=n, kdims=kdims, norms=norms, scales=scales,
        fp16=c.boolean(0.2), cast=c.choice(CASTS), cast_back=c.boolean(0.3), conj=c.boolean(0.25),
        window=window, offset=offset, skip=skip, skip_unsqueeze=skip and c.boolean(),
        gate=c.boolean(0.3), mul=mul, channels=channels, irfft_n=irfft_n,
        ktranspose=layout == "transpose" and c.boolean(), dynamic=c.boolean(0.4), miss=miss, family=pend,
    )
    # fit the rest of the choices to the mutation or family drawn (they are rare otherwise)
    if miss == "contracting_einsum":
        p = replace(p, skip=False, gate=False, channels=0, layout="last", kdims=max(1, p.kdims), ktranspose=False)
    if miss in ("real_mask", "lone_spectrum", "three_spectra"):
        p = replace(p, channels=0)
    if miss == "odd_no_n":  # the one of L + K, L + K - 1 that is odd (K >= 2: n - 1 >= L)
        K = max(p.K, 2)
        p = replace(p, window="slice", offset=0, K=K, n="L+K" if (p.L + K) % 2 else "L+K-1")
    if pend == "rfft2":
        p = replace(p, layout="last", kdims=max(1, p.kdims), mul=c.choice(("*", "torch.mul")), channels=0,
                    window="slice" if p.window != "none" else "none", offset=0, irfft_n=True, ktranspose=False)
    if pend in ("roll_window", "index_select_window") and p.window not in ("offset", "narrow"):
        p = replace(p, window="offset", offset=1, n=c.choice(("2L", "L+K", "big")))
    if pend in ("inplace_mul", "sum_of_spectra") and p.mul == "einsum":
        p = replace(p, mul="*", channels=0)
    if pend == "ifft_real":
        p = replace(p, irfft_n=True)
    if not p.miss and pend not in ("sum_of_spectra", "inplace_mul") and c.boolean(0.3):
        pool = [op for op in LAYOUT_OPS if op != "merge" and not (p.mul == "einsum" and op in RANK_CHANGING)]
        ops = tuple(c.choice(pool) for _ in range(c.choice((1, 2, 3))))
        if c.boolean(0.15) and kernel_rows(p) > 1 and pend != "rfft2":
            ops += ("merge",)  # on a kernel spectrum with rows (of one row, reshape(-1) mixes nothing)
        p = replace(p, layout_ops=ops)
    if c.boolean(0.25):
        p = replace(p, out_layout_ops=tuple(c.choice(list(OUT_LAYOUT_OPS)) for _ in range(c.choice((1, 2)))))
    return p


def programs(*, near_misses: bool = True, pending: bool = False, family: str | None = None, miss: str | None = None):
    """A hypothesis strategy of ``Program``s (the arguments are ``draw_program``'s)."""
    from hypothesis import strategies as st

    @st.composite
    def _programs(draw):
        return draw_program(Chooser(draw=draw), near_misses=near_misses, pending=pending, family=family, miss=miss)

    return _programs()


def random_program(seed: int, *, near_misses: bool = True, pending: bool = False, family: str | None = None,
                   miss: str | None = None) -> Program:
    return draw_program(Chooser(rng=random.Random(seed)), near_misses=near_misses, pending=pending, family=family,
                        miss=miss)

