"""Random FFT-convolution programs for differential testing (issue 3, item 6).

A ``Program`` is a plain record of choices (layout, rank, lengths, FFT size, norm modes, where
a scale sits, casts, conj, window, skip, gate, multiply spelling, dynamic shapes, and at most one
"near miss" mutation that makes it something other than a convolution). ``render`` writes it as
Python source; ``build`` execs that source into a fresh namespace under a unique file name that is
registered in ``linecache`` (so tracebacks, Dynamo's stack traces and the report's source line
point at the generated line). ``check`` compiles it with convfuse (rest of the graph eager),
compares outputs and gradients with eager, and compares what was rewritten with the oracle
``Program.is_convolution``.

The same drawing code runs under hypothesis (``programs()``, shrinks) and under ``random.Random``
(``random_program(seed)``, used by bench/differential.py to run thousands reproducibly).

Families the matcher does not support yet (``PENDING``) are drawn only with ``pending=True``.
"""

from __future__ import annotations

import hashlib
import linecache
import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

# ---- the choices -------------------------------------------------------------------------------

LENGTHS = (1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32)
LAYOUTS = ("last", "blh", "transpose")  # conv along -1; (.., L, H) along -2; transposed to -1 and back
N_CHOICES = ("2L", "L+K", "L+K-1", "big", "L")  # "L" is circular
NORMS = (None, "backward", "ortho", "forward")
SCALE_WHERE = ("kernel", "input", "product", "output")
SCALE_FORMS = ("/ n", "* 0.5", "/ 3.0", "* 2")
MULS = ("*", "*rev", "torch.mul", "einsum")
WINDOWS = ("none", "slice", "offset", "narrow")
CASTS = ("to", "float", "to_dtype_k")  # how an fp16 input is upcast

# Not convolutions: each must be left alone with a reason.
NEAR_MISSES = (
    "real_mask",  # the spectrum times a real tensor that is no signal's transform
    "nonlinear",  # torch.complex(relu(X.real), X.imag) between the transforms
    "different_n",  # the kernel transformed at another size, its bins sliced to match
    "three_spectra",  # U * Kf * U
    "cumsum",  # a cumulative sum over frequency
    "contracting_einsum",  # an einsum that sums over a batch axis
    "odd_no_n",  # irfft without n when the forward size is odd
    "lone_spectrum",  # an irfft of one (scaled) spectrum
)

# Convolutions the matcher does not recognise yet: drawn only with pending=True (bench --all).
PENDING = (
    "full_fft",  # one-sided half sliced from a full complex fft of a real signal
    "ifft_real",  # full ffts on both sides and an ifft(...).real inverse
    "roll_window",  # torch.roll then a window
    "index_select_window",  # index_select with an arange
    "inplace_mul",  # U *= Kf
    "sum_of_spectra",  # U * K1 + U * K2 (one convolution with k1 + k2)
    "rfft2",  # 2-D rfft2 / irfft2 over the last two axes
)


@dataclass(frozen=True)
class Program:
    layout: str = "last"
    batch: tuple[int, ...] = (2,)  # u's dims other than the convolved one, in order (H last)
    L: int = 8
    K: int = 8
    n: str = "2L"
    kdims: int = 0  # how many of u's trailing batch dims the kernel has (0: kernel is (K,) or (K, H))
    norms: tuple = (None, None, None)  # rfft(u), rfft(k), irfft
    scales: tuple = ()  # ((where, form), ...)
    fp16: bool = False
    cast: str = "to"
    cast_back: bool = False
    conj: bool = False
    window: str = "slice"
    offset: int = 0
    skip: bool = False
    skip_unsqueeze: bool = False  # D given as (H,) and unsqueezed in the program
    gate: bool = False
    mul: str = "*"
    channels: int = 0  # 'bhz,chz->bchz' with C channels (rank 3, last layout, einsum)
    irfft_n: bool = True  # False: irfft without n (only where n is even for every size)
    ktranspose: bool = False  # transpose layout: the kernel is (.., K, H) and transposed too
    dynamic: bool = False
    miss: str = ""  # a NEAR_MISSES mutation
    pending: str = ""  # a PENDING family

    # -- the oracle ------------------------------------------------------------------------------

    @property
    def is_convolution(self) -> bool:
        return not self.miss

    @property
    def nval(self) -> int:
        L, K = self.L, self.K
        return {"2L": 2 * L, "L+K": L + K, "L+K-1": L + K - 1, "big": 2 * (L + K), "L": L}[self.n]

    @property
    def rtol(self) -> float:
        # fp32: 1e-4 of the output's scale. fp16 outputs are rounded to 11 bits: two ulps of the
        # largest value (2 * 2**-10 relative) plus the fp32 error; see also _compare's fp64 check.
        return 2.5e-3 if self.fp16 else 1e-4

    def features(self) -> list[str]:
        """Labels used to group mismatches."""
        out = [f"layout={self.layout}", f"rank={len(self.batch) + 1}", f"n={self.n}",
               f"K{'<' if self.K < self.L else '=' if self.K == self.L else '>'}L",
               f"window={self.window}", f"mul={self.mul}", "dynamic" if self.dynamic else "static"]
        out += [f"norm{i}={m}" for i, m in enumerate(self.norms) if m is not None]
        out += [f"scale@{w}{f.replace(' ', '')}" for w, f in self.scales]
        for flag in ("fp16", "cast_back", "conj", "skip", "gate", "ktranspose"):
            if getattr(self, flag):
                out.append(flag)
        if not self.irfft_n:
            out.append("irfft-no-n")
        if self.channels:
            out.append("channels")
        if self.L == 1:
            out.append("L=1")
        if self.miss:
            out.append(f"miss={self.miss}")
        if self.pending:
            out.append(f"pending={self.pending}")
        return out

    def simpler(self) -> list["Program"]:
        """Programs with one feature turned off (for shrinking a mismatch outside hypothesis)."""
        base = Program()
        out = []
        for f in fields(self):
            if f.name in ("layout", "batch", "L", "K", "n", "miss", "pending", "window"):
                continue
            if getattr(self, f.name) != getattr(base, f.name):
                out.append(replace(self, **{f.name: getattr(base, f.name)}))
        for i in range(len(self.scales)):
            out.append(replace(self, scales=self.scales[:i] + self.scales[i + 1:]))
        if len(self.batch) > 1:
            out.append(replace(self, batch=self.batch[1:], kdims=min(self.kdims, len(self.batch) - 1)))
        if any(b > 2 for b in self.batch):
            out.append(replace(self, batch=tuple(min(b, 2) for b in self.batch)))
        if self.layout != "last":
            out.append(replace(self, layout="last", ktranspose=False))
        if self.window in ("offset", "narrow") and not self.pending:
            out.append(replace(self, window="slice", offset=0))
        if self.n != "2L" and self.n != "L":
            out.append(replace(self, n="2L"))
        if self.L > 2:  # shorter, keeping the order of K against L and the parity of both
            L2 = self.L // 2 if (self.L // 2) % 2 == self.L % 2 else self.L // 2 + 1
            K2 = {True: max(1, L2 - (self.L - self.K)), False: L2 + (self.K - self.L)}[self.K <= self.L]
            if K2 >= 1 and (K2 < L2) == (self.K < self.L) and (K2 == L2) == (self.K == self.L):
                out.append(replace(self, L=L2, K=K2))
        return [p for p in out if p.valid()]

    def valid(self) -> bool:
        try:
            _check_valid(self)
        except ValueError:
            return False
        return True


def _check_valid(p: Program) -> None:
    def need(cond, why):
        if not cond:
            raise ValueError(why)

    need(p.layout == "last" or len(p.batch) >= 1, "(.., L, H) needs H")
    need(0 <= p.kdims <= len(p.batch), "kdims")
    need(p.window != "none" or p.n == "L", "a linear convolution needs a window")
    if p.window in ("offset", "narrow"):
        # a + L <= n for every size (so the dynamic proof exists too)
        ok = {"2L": p.offset <= 1, "L+K": p.offset <= 1, "big": p.offset <= 2}.get(p.n, False)
        need(ok and p.offset >= 1, "window outside the cyclic result")
    need(p.irfft_n or p.n in ("2L", "big") or p.miss == "odd_no_n", "irfft without n needs an even n")
    need(not p.channels or (p.layout == "last" and len(p.batch) == 2 and p.mul == "einsum" and p.kdims == 1
                            and not p.skip), "channels")
    need(not p.ktranspose or p.layout == "transpose", "ktranspose")
    if p.layout != "last":
        need(p.kdims >= 1, "a (.., K, H) kernel has H")
    if p.miss == "odd_no_n":
        need(not p.irfft_n and p.nval % 2 == 1 and p.nval - 1 >= p.L and p.window == "slice", "odd_no_n")
    if p.miss == "three_spectra":
        need(not p.channels, "three spectra with channels")
    if p.miss == "contracting_einsum":
        need(p.kdims >= 1 and p.layout == "last" and not p.skip and not p.gate and not p.channels, "contract")
    if p.miss == "real_mask":
        need(not p.conj, "mask conj")
    if p.pending in ("ifft_real",):
        need(p.irfft_n, "ifft n")
    if p.pending == "rfft2":
        need(p.layout == "last" and len(p.batch) >= 1 and p.kdims >= 1 and p.mul != "einsum" and not p.channels
             and p.window in ("none", "slice") and p.irfft_n, "rfft2")
    if p.pending in ("roll_window", "index_select_window"):
        need(p.window in ("offset", "narrow"), "roll needs an offset window")
    if p.pending in ("inplace_mul", "sum_of_spectra"):
        need(p.mul != "einsum", "mul spelling")


# ---- drawing -----------------------------------------------------------------------------------


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


def draw_program(c: Chooser, *, near_misses: bool = True, pending: bool = False) -> Program:
    """Draw one valid program (retrying the few choices that contradict each other)."""
    for _ in range(50):
        p = _draw_once(c, near_misses=near_misses, pending=pending)
        if p.valid():
            return p
    # fall back on a plain convolution with the drawn lengths
    return replace(Program(), L=p.L, K=p.K, dynamic=p.dynamic)


def _draw_once(c: Chooser, *, near_misses: bool, pending: bool) -> Program:
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
    miss = ""
    if near_misses and c.boolean(0.3):
        miss = c.choice(NEAR_MISSES)
    pend = ""
    if pending and not miss and c.boolean(0.3):
        pend = c.choice(PENDING)
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
        ktranspose=layout == "transpose" and c.boolean(), dynamic=c.boolean(0.4), miss=miss, pending=pend,
    )
    # fit the rest of the choices to the mutation or family drawn (they are rare otherwise)
    if miss == "contracting_einsum":
        p = replace(p, skip=False, gate=False, channels=0, layout="last", kdims=max(1, p.kdims), ktranspose=False)
    if miss in ("real_mask", "lone_spectrum", "three_spectra"):
        p = replace(p, channels=0)
    if miss == "odd_no_n":
        p = replace(p, window="slice", offset=0, n=c.choice(("L+K", "L+K-1")), K=max(p.K, 2))
    if pend == "rfft2":
        p = replace(p, layout="last", kdims=max(1, p.kdims), mul=c.choice(("*", "torch.mul")), channels=0,
                    window="slice" if p.window != "none" else "none", offset=0, irfft_n=True, ktranspose=False)
    if pend in ("roll_window", "index_select_window") and p.window not in ("offset", "narrow"):
        p = replace(p, window="offset", offset=1, n=c.choice(("2L", "L+K", "big")))
    if pend in ("inplace_mul", "sum_of_spectra") and p.mul == "einsum":
        p = replace(p, mul="*", channels=0)
    if pend == "ifft_real":
        p = replace(p, irfft_n=True)
    return p


def programs(*, near_misses: bool = True, pending: bool = False):
    """A hypothesis strategy of ``Program``s."""
    from hypothesis import strategies as st

    @st.composite
    def _programs(draw):
        return draw_program(Chooser(draw=draw), near_misses=near_misses, pending=pending)

    return _programs()


def random_program(seed: int, *, near_misses: bool = True, pending: bool = False) -> Program:
    return draw_program(Chooser(rng=random.Random(seed)), near_misses=near_misses, pending=pending)


# ---- shapes and inputs -------------------------------------------------------------------------


def shapes(p: Program) -> dict[str, tuple[int, ...]]:
    b = p.batch
    kb = b[len(b) - p.kdims:] if p.kdims else ()
    if p.layout == "last":
        u = b + (p.L,)
        k = kb + (p.K,)
        if p.channels:
            k = (p.channels,) + k
        D = (b[-1], 1) if p.skip and b else (1,)
        if p.skip and p.skip_unsqueeze:
            D = D[:-1] if len(D) > 1 else ()
    else:
        u = b[:-1] + (p.L, b[-1])
        kb = kb[:-1]
        k = kb + (p.K, b[-1])
        if p.layout == "transpose" and not p.ktranspose:
            k = kb + (b[-1], p.K)
        D = (b[-1],)
        if p.skip and p.skip_unsqueeze:
            D = (b[-1],)  # broadcasts as is; the program unsqueezes nothing
    out = list(u)
    if p.channels:
        out = [u[0], p.channels] + list(u[1:])
    if p.miss == "contracting_einsum":
        del out[len(b) - 1]
    shp = {"u": tuple(u), "k": tuple(k), "D": tuple(D), "g": tuple(out)}
    if p.miss == "real_mask":
        shp["mask"] = (p.nval // 2 + 1,) if p.layout != "blh" else (p.nval // 2 + 1, 1)
    return shp


def _axis(p: Program) -> int:
    return -2 if p.layout == "blh" else -1


def make_inputs(p: Program, seed: int = 0) -> tuple[list[str], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    shp = shapes(p)
    names = ["u", "k"] + (["D"] if p.skip else []) + (["g"] if p.gate else []) + (["mask"] if "mask" in shp else [])
    args = []
    for name in names:
        t = torch.randn(shp[name], generator=gen)
        if name == "u" and p.fp16:
            t = t.half()
        args.append(t.requires_grad_(True))
    return names, args


# ---- rendering ---------------------------------------------------------------------------------


def _norm(mode) -> str:
    return "" if mode is None else f', norm="{mode}"'


def _scale(expr: str, p: Program, where: str) -> str:
    for w, form in p.scales:
        if w == where:
            expr = f"({expr}) {form}"
    return expr


def render(p: Program, name: str = "program") -> str:
    """The program as Python source: a function ``name(u, k[, D][, g][, mask])``."""
    _check_valid(p)
    names = ["u", "k"] + (["D"] if p.skip else []) + (["g"] if p.gate else []) + (["mask"] if p.miss == "real_mask" else [])
    ax = _axis(p)
    lines = [f"def {name}({', '.join(names)}):"]
    w = lines.append
    x = "u"
    if p.fp16:
        x = {"to": "u.to(torch.float32)", "float": "u.float()", "to_dtype_k": "u.to(dtype=k.dtype)"}[p.cast]
        w(f"    x = {x}")
        x = "x"
    kk = "k"
    if p.layout == "transpose":
        w(f"    x = {x}.transpose(-1, -2)")
        x = "x"
        if p.ktranspose:
            w("    kt = k.transpose(-1, -2)")
            kk = "kt"
    w(f"    L = {x}.shape[{ax}]")
    w(f"    K = {kk}.shape[{ax}]")
    w("    n = " + {"2L": "2 * L", "L+K": "L + K", "L+K-1": "L + K - 1", "big": "2 * (L + K)", "L": "L"}[p.n])
    dim = ", dim=-2" if p.layout == "blh" else ""
    nu, nk, ni = (_norm(m) for m in p.norms)

    # forward transforms
    if p.pending == "rfft2":
        w(f"    U = torch.fft.rfft2({x}, s=({x}.shape[-2], n){nu})")
        w(f"    Kf = torch.fft.rfft2({kk}, s=({x}.shape[-2], n){nk})")
    elif p.pending in ("full_fft", "ifft_real"):
        w(f"    U = torch.fft.fft({x}, n=n{dim}{nu})")
        if p.pending == "full_fft":
            w(f"    U = U{_bins_slice(p, 'n // 2 + 1')}")
        w(f"    Kf = torch.fft.fft({kk}, n=n{dim}{nk})")
        if p.pending == "full_fft":
            w(f"    Kf = Kf{_bins_slice(p, 'n // 2 + 1')}")
    else:
        w(f"    U = torch.fft.rfft({x}, n=n{dim}{nu})")
        if p.miss == "different_n":
            w(f"    Kf = torch.fft.rfft({kk}, n=n + 2{dim}{nk}){_bins_slice(p, 'n // 2 + 1')}")
        elif p.miss not in ("real_mask", "lone_spectrum"):
            w(f"    Kf = torch.fft.rfft({kk}, n=n{dim}{nk})")
    if _has_scale(p, "input"):
        w(f"    U = {_scale('U', p, 'input')}")
    if p.miss not in ("real_mask", "lone_spectrum"):
        if _has_scale(p, "kernel"):
            w(f"    Kf = {_scale('Kf', p, 'kernel')}")
        if p.conj:
            w("    Kf = Kf.conj()")
    if p.miss == "nonlinear":
        w("    U = torch.complex(F.relu(U.real), U.imag)")
    if p.miss == "real_mask":
        w("    Kf = mask")
    if p.miss == "lone_spectrum":
        w("    Kf = 0.5")

    # the product
    if p.miss == "contracting_einsum":
        us = _letters(len(p.batch)) + "z"
        ks = us[len(p.batch) - p.kdims:]
        out = us[: len(p.batch) - 1] + "z"
        w(f'    Y = torch.einsum("{us},{ks}->{out}", U, Kf)')
    elif p.pending == "inplace_mul":
        w("    U *= Kf" if p.mul != "torch.mul" else "    U.mul_(Kf)")
        w("    Y = U")
    elif p.pending == "sum_of_spectra":
        w("    Y = U * (0.25 * Kf) + U * (0.75 * Kf)")
    elif p.mul == "einsum" and p.miss not in ("real_mask", "lone_spectrum"):
        w(f"    Y = torch.einsum(\"{_einsum(p)}\", U, Kf)")
    elif p.mul == "torch.mul":
        w("    Y = torch.mul(U, Kf)")
    elif p.mul == "*rev":
        w("    Y = Kf * U")
    else:
        w("    Y = U * Kf")
    if p.miss == "three_spectra":
        w("    Y = Y * U")
    if p.miss == "cumsum":
        w(f"    Y = torch.cumsum(Y, dim={ax})")
    if _has_scale(p, "product"):
        w(f"    Y = {_scale('Y', p, 'product')}")

    # the inverse
    nn_ = ", n=n" if p.irfft_n else ""
    if p.pending == "rfft2":
        w(f"    y = torch.fft.irfft2(Y, s=({x}.shape[-2], n){ni})")
    elif p.pending == "ifft_real":
        w(f"    y = torch.fft.ifft(Y{nn_}{dim}{ni}).real")
    else:
        w(f"    y = torch.fft.irfft(Y{nn_}{dim}{ni})")

    # the window
    a = p.offset
    if p.pending == "roll_window":
        w(f"    y = torch.roll(y, -{a}, dims={ax}){_win(p, '0', 'L')}")
    elif p.pending == "index_select_window":
        w(f"    y = y.index_select({ax}, torch.arange({a}, {a} + L, device=y.device))")
    elif p.window == "slice":
        w(f"    y = y{_win(p, '', 'L')}")
    elif p.window == "offset":
        w(f"    y = y{_win(p, str(a), f'{a} + L')}")
    elif p.window == "narrow":
        w(f"    y = y.narrow({ax}, {a}, L)")
    if _has_scale(p, "output"):
        w(f"    y = {_scale('y', p, 'output')}")
    if p.layout == "transpose":
        w("    y = y.transpose(-1, -2)")
    if p.skip:
        d = "D.unsqueeze(-1)" if p.skip_unsqueeze and p.layout == "last" else "D"
        w(f"    y = y + u * {d}")
    if p.gate:
        w("    y = y * g")
    if p.fp16 or p.cast_back:
        w("    y = y.to(u.dtype)")
    w("    return y")
    return "\n".join(lines) + "\n"


def _has_scale(p: Program, where: str) -> bool:
    return any(w == where for w, _ in p.scales)


def _letters(k: int) -> str:
    return "abcdefgh"[:k]


def _einsum(p: Program) -> str:
    nb = len(p.batch)
    if p.channels:
        return "bhz,chz->bchz"
    if p.layout in ("last", "transpose"):  # the transposed program convolves its last axis
        us = _letters(nb) + "z"
        ks = us[nb - p.kdims:]
        return f"{us},{ks}->{us}"
    b = _letters(nb)
    us = b[:-1] + "z" + b[-1]
    ks = b[nb - p.kdims: -1] + "z" + b[-1]
    return f"{us},{ks}->{us}"


def _win(p: Program, start: str, stop: str) -> str:
    if p.layout == "blh":
        return f"[..., {start}:{stop}, :]"
    return f"[..., {start}:{stop}]"


def _bins_slice(p: Program, stop: str) -> str:
    return _win(p, "", stop)


# ---- building and checking ---------------------------------------------------------------------

_GLOBALS = {"torch": torch, "F": F}


def build(p: Program, name: str = "program") -> tuple[Callable, str, str]:
    """Exec the program's source into a fresh namespace; returns (function, source, filename)."""
    src = render(p, name)
    digest = hashlib.sha1(repr(p).encode()).hexdigest()[:12]
    filename = f"/convfuse-generated/program_{digest}.py"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    namespace = dict(_GLOBALS)
    exec(compile(src, filename, "exec"), namespace)
    return namespace[name], src, filename


@dataclass
class Mismatch:
    kind: str  # "numerics" | "rewrite" | "reason" | "source" | "error"
    detail: str
    program: Program
    source: str = ""
    features: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"[{self.kind}] {self.detail}"


def _rel_err(got: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    scale = expected.detach().abs().max().double().clamp_min(1e-30).item()
    err = (got.detach().double() - expected.detach().double()).abs().max().item()
    return err, scale


FP32_EPS = torch.finfo(torch.float32).eps


def fused_calls(compiled) -> int:
    """Calls of any convfuse operator (fft_conv, and fft_convnd for multi-axis convolutions)."""
    return sum(isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "convfuse"
               for gm in compiled.graphs for node in gm.graph.nodes)


def _compare(bad, what: str, got: torch.Tensor, expected: torch.Tensor, ref, rtol: float) -> None:
    """``got`` within ``rtol`` of the scale of ``expected``; ``ref()`` is the fp64 value, asked for lazily.

    Two refinements, both judged against the fp64 evaluation of the same program:
    - where the exact result is (nearly) zero (a window outside a correlation's support, a gradient
      that vanishes), the scale of ``expected`` is its own rounding noise; the scale used is then at
      least eager's own error / fp32 eps, the magnitude of the terms that cancelled;
    - fp16 programs: eager rounds to fp16 more often than the fused op does (it sums the skip term's
      and the convolution's fp16 gradients of u, which can cancel), so a compiled value no farther
      from fp64 than eager's (plus the bound) is accepted.
    """
    err, scale = _rel_err(got, expected)
    if err <= rtol * scale:
        return
    r = ref()
    err_c, _ = _rel_err(got, r)
    err_e, _ = _rel_err(expected, r)
    natural = max(scale, err_e / FP32_EPS)
    if err <= rtol * natural:
        return
    if expected.dtype == torch.float16 and err_c <= err_e + rtol * scale:
        return
    bad("numerics", f"{what}: max error {err:.3e} > {rtol:g} * {scale:.3e} (from fp64: {err_c:.3e}, "
                    f"eager's: {err_e:.3e})")


def check(p: Program, seed: int = 0) -> list[Mismatch]:
    """Compile ``p`` with convfuse and compare with eager and with the oracle."""
    from conftest import Compiled  # tests/ is on sys.path for pytest and for bench/differential.py

    torch._dynamo.reset()
    fn, src, filename = build(p)
    names, args = make_inputs(p, seed)
    out: list[Mismatch] = []

    def bad(kind, detail):
        out.append(Mismatch(kind, detail, p, src, p.features()))

    eager_args = [a.detach().clone().requires_grad_(True) for a in args]
    comp_args = [a.detach().clone().requires_grad_(True) for a in args]
    expected = fn(*eager_args)
    compiled = Compiled(fn, dynamic=p.dynamic)
    try:
        got = compiled(*comp_args)
    except Exception as exc:  # a crash of the compiled program is a mismatch too
        bad("error", f"compiled call raised {type(exc).__name__}: {str(exc)[:400]}")
        return out
    if got.shape != expected.shape or got.dtype != expected.dtype:
        bad("numerics", f"output {tuple(got.shape)} {got.dtype} != eager {tuple(expected.shape)} {expected.dtype}")
        return out
    g = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed + 1)).to(expected.dtype)
    # fp16 programs: eager rounds to fp16 more often than the fused op does (e.g. it sums the skip
    # term's and the convolution's fp16 gradients of u, which can cancel), so a difference from eager
    # larger than the bound is accepted when the compiled value is no farther from an fp64
    # evaluation of the same program than eager's value is (plus the bound).
    cache: dict = {}

    def reference():  # the program in fp64 (inputs upcast), with gradients, computed once if needed
        if not cache:
            ref_args = [a.detach().double().requires_grad_(True) for a in args]
            r = fn(*ref_args)
            cache["out"] = r.detach()
            cache["grads"] = torch.autograd.grad(r, ref_args, g.double(), allow_unused=True)
        return cache
    _compare(bad, "output", got, expected, lambda: reference()["out"], p.rtol)
    try:
        ge = torch.autograd.grad(expected, eager_args, g, allow_unused=True)
        gc = torch.autograd.grad(got, comp_args, g, allow_unused=True)
    except Exception as exc:
        bad("error", f"backward raised {type(exc).__name__}: {str(exc)[:400]}")
        gc = ge = ()
    for i, (nm, a, b) in enumerate(zip(names, gc, ge)):
        if (a is None) != (b is None):
            bad("numerics", f"grad {nm}: None on one side only")
            continue
        if a is None:
            continue
        _compare(bad, f"grad {nm}", a, b, lambda i=i: reference()["grads"][i], p.rtol)

    report = compiled.report
    sites = report.sites if report is not None else []
    calls = fused_calls(compiled)
    statuses = [s.status for s in sites]
    if p.is_convolution:
        if calls != 1 or statuses != ["rewritten"]:
            reasons = "; ".join(s.reason for s in sites if s.reason)
            bad("rewrite", f"a convolution: expected 1 rewritten site, got op_calls={calls} statuses={statuses}"
                           + (f" reasons: {reasons}" if reasons else ""))
        elif compiled.fft_calls() != 0:
            bad("rewrite", f"rewritten, but {compiled.fft_calls()} FFT calls are left in the graph")
    else:
        if calls != 0 or not sites or any(s.status != "skipped" for s in sites):
            bad("rewrite", f"not a convolution ({p.miss}): expected no rewrite, got op_calls={calls} "
                           f"statuses={statuses}")
    for s in sites:
        if s.status == "skipped" and not s.reason.strip():
            bad("reason", f"skipped site {s.node} ({s.pattern}) has an empty reason")
        if s.status == "rewritten" and not (s.pattern and s.kernel and s.spec is not None):
            bad("reason", f"rewritten site {s.node} lacks a family, kernel or spec: {s.line()}")
    # the report's source line must point at the inverse transform in the generated file
    lines = src.splitlines()
    for s in sites:
        path, _, line = s.source.rpartition(":")
        text = lines[int(line) - 1] if path == filename and line.isdigit() and 0 < int(line) <= len(lines) else ""
        if "fft" not in text:
            bad("source", f"site {s.node} reports source {s.source!r}, not a transform line of {filename}")
    if p.dynamic:
        # the same compiled program at other lengths (same order of K against L, same parities):
        # a proof that held only for the first sizes would show here, without a recompile
        q = replace(p, L=p.L + 2, K=p.K + 2)
        if q.valid():
            _, args2 = make_inputs(q, seed + 2)
            args2 = [a.detach() for a in args2]
            with torch.no_grad():
                expected2 = fn(*args2)
                try:
                    got2 = compiled(*args2)
                except Exception as exc:
                    bad("error", f"second call (L={q.L}, K={q.K}) raised {type(exc).__name__}: {str(exc)[:300]}")
                    return out
            if got2.shape != expected2.shape:
                bad("numerics", f"second call (L={q.L}, K={q.K}): shape {tuple(got2.shape)} != {tuple(expected2.shape)}")
            else:
                def reference2():
                    with torch.no_grad():
                        return fn(*[a.double() for a in args2])

                _compare(bad, f"second call (L={q.L}, K={q.K}) output", got2, expected2, reference2, p.rtol)
    return out


def reproducer(m: Mismatch, seed: int = 0) -> str:
    """A self-contained text block for the matcher engineer."""
    names, args = make_inputs(m.program, seed)
    shapes_ = ", ".join(f"{nm}: {tuple(a.shape)} {str(a.dtype).replace('torch.', '')}" for nm, a in zip(names, args))
    return (
        f"# {m.describe()}\n# features: {' '.join(m.features)}\n# inputs (torch.randn, seed {seed}): {shapes_}\n"
        f"# dynamic={m.program.dynamic}\n# {m.program!r}\n{m.source}"
    )


def as_dict(p: Program) -> dict[str, Any]:
    return asdict(p)
