"""A ``Program`` as Python: its input shapes and tensors, its source (``render``), and ``build``, which
execs the source into a fresh namespace under a unique file name registered in ``linecache`` (so
tracebacks, Dynamo's stack traces and the report's source line point at the generated line).
"""

from __future__ import annotations

import hashlib
import linecache
from typing import Callable

import torch
import torch.nn.functional as F

from programs_record import LAYOUT_OPS, OUT_LAYOUT_OPS, Program, check_valid

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
    check_valid(p)
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
    if p.family == "rfft2":
        w(f"    U = torch.fft.rfft2({x}, s=({x}.shape[-2], n){nu})")
        w(f"    Kf = torch.fft.rfft2({kk}, s=({x}.shape[-2], n){nk})")
    elif p.family in ("full_fft", "ifft_real"):
        w(f"    U = torch.fft.fft({x}, n=n{dim}{nu})")
        if p.family == "full_fft":
            w(f"    U = U{_bins_slice(p, 'n // 2 + 1')}")
        w(f"    Kf = torch.fft.fft({kk}, n=n{dim}{nk})")
        if p.family == "full_fft":
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
    for op in p.layout_ops:
        w(f"    {LAYOUT_OPS[op]}")
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
    elif p.family == "inplace_mul":
        w("    U *= Kf" if p.mul != "torch.mul" else "    U.mul_(Kf)")
        w("    Y = U")
    elif p.family == "sum_of_spectra":
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
    if p.family == "rfft2":
        w(f"    y = torch.fft.irfft2(Y, s=({x}.shape[-2], n){ni})")
    elif p.family == "ifft_real":
        w(f"    y = torch.fft.ifft(Y{nn_}{dim}{ni}).real")
    else:
        w(f"    y = torch.fft.irfft(Y{nn_}{dim}{ni})")

    for op in p.out_layout_ops:
        w(f"    {OUT_LAYOUT_OPS[op]}")

    # the window
    a = p.offset
    if p.family == "roll_window":
        w(f"    y = torch.roll(y, -{a}, dims={ax}){_win(p, '0', 'L')}")
    elif p.family == "index_select_window":
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


# ---- building ----------------------------------------------------------------------------------

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
