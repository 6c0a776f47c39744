"""The record of a random FFT-convolution program: the choices, ``Program``, its validity, the oracle.

A ``Program`` is a plain record of choices (layout, rank, lengths, FFT size, norm modes, where a
scale sits, casts, conj, window, skip, gate, multiply spelling, family, dynamic shapes, and at most
one "near miss" mutation that makes it something other than a convolution). Drawing one is in
``programs_draw``, writing it as Python in ``programs_source``, checking it in ``programs_check``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

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

# Other spellings of a convolution (``Program.family``; "" is rfft -> product -> irfft along one axis).
FAMILIES = (
    "full_fft",  # one-sided half sliced from a full complex fft of a real signal
    "ifft_real",  # full ffts on both sides and an ifft(...).real inverse
    "roll_window",  # torch.roll then a window
    "index_select_window",  # index_select with an arange
    "inplace_mul",  # U *= Kf
    "sum_of_spectra",  # U * K1 + U * K2 (one convolution with k1 + k2)
    "rfft2",  # 2-D rfft2 / irfft2 over the last two axes
)
# Layout ops on the spectra before the product (``Program.layout_ops``): each leaves the frequency
# axis whole, so the program is still the same convolution; "merge" flattens the kernel spectrum
# and reshapes it back (the same values, but through a reshape across frequency): refused.
LAYOUT_OPS = {
    "k_unsqueeze": "Kf = Kf.unsqueeze(0)",
    "k_none": "Kf = Kf[None]",
    "k_contiguous": "Kf = Kf.contiguous()",
    "k_clone": "Kf = Kf.clone()",
    "k_expand": "Kf = Kf.expand(1, *([-1] * Kf.dim()))",
    "k_round_trip": "Kf = Kf.unsqueeze(0).squeeze(0)",
    "k_transpose_id": "Kf = Kf.transpose(0, 0)",
    "u_contiguous": "U = U.contiguous()",
    "u_round_trip": "U = U.unsqueeze(0).squeeze(0)",
    "u_movedim_id": "U = U.movedim(0, 0)",
    "merge": "Kf = Kf.reshape(-1).reshape(Kf.shape)",
}
RANK_CHANGING = ("k_unsqueeze", "k_none", "k_expand")
# Layout ops on the inverse's result before the window (``Program.out_layout_ops``): the window,
# scales and cast after them are still the operator's; "y_merge" reshapes across the time axis
# and back, which ends what the operator absorbs (the program is still rewritten, its window
# left to the graph).
OUT_LAYOUT_OPS = {
    "y_round_trip": "y = y.unsqueeze(0).squeeze(0)",
    "y_none": "y = y[None]",
    "y_contiguous": "y = y.contiguous()",
    "y_moved_back": "y = y.movedim(-1, 0).movedim(0, -1)",
    "y_transpose_id": "y = y.transpose(0, 0)",
    "y_merge": "y = y.reshape(-1).reshape(y.shape)",
}


def kernel_rows(p) -> int:
    """Rows of the program's kernel (its dims other than the convolved one)."""
    rows = 1
    for b in p.batch[len(p.batch) - p.kdims:] if p.kdims else ():
        rows *= b
    return rows

# Families the matcher does not recognise yet: drawn only with pending=True (bench --all). A family
# moves from here to FAMILIES once `bench/differential.py --all --family NAME -n 300` finds no mismatch.
# ``Program.pending`` also holds back single combinations of a supported family that are known to fail.
PENDING: tuple[str, ...] = ()


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
    family: str = ""  # one of FAMILIES or PENDING ("": the plain spelling)
    layout_ops: tuple = ()  # LAYOUT_OPS applied to the spectra before the product ("merge" must refuse)
    out_layout_ops: tuple = ()  # OUT_LAYOUT_OPS applied to the result before the window

    # -- the oracle ------------------------------------------------------------------------------

    @property
    def is_convolution(self) -> bool:
        return not self.miss

    @property
    def pending(self) -> str:
        """Why this program is drawn only with pending=True (bench --all), "" when every run draws it."""
        if self.family in PENDING:
            return f"the matcher does not support the {self.family} family yet"
        return ""

    @property
    def expected_skip(self) -> str:
        """For a convolution the matcher must leave alone: a fragment of the reason it must give ("" if none).

        A 2-D program with dynamic shapes whose spectrum is divided by the size n of one axis: the
        matcher proves scales against constants and the whole 2-D FFT size (H * n), and H is
        symbolic unless it is 1 (Dynamo specialises sizes 0 and 1). A scale after the inverse is
        part of the epilogue and is proved there.
        """
        if (self.is_convolution and self.family == "rfft2" and self.dynamic and self.batch[-1] != 1
                and any(form == "/ n" and where != "output" for where, form in self.scales)):
            return "is scaled by the symbolic size"
        if self.is_convolution and "merge" in self.layout_ops:
            return "reshape"  # reshape(-1) of a kernel spectrum with rows mixes them with the bins
        return ""

    @property
    def nval(self) -> int:
        L, K = self.L, self.K
        return {"2L": 2 * L, "L+K": L + K, "L+K-1": L + K - 1, "big": 2 * (L + K), "L": L}[self.n]

    @property
    def rtol(self) -> float:
        # fp32: 1e-4 of the output's scale. fp16 outputs are rounded to 11 bits: two ulps of the
        # largest value (2 * 2**-10 relative) plus the fp32 error; see also programs_check.compare's fp64 check.
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
        if self.family:
            out.append(f"family={self.family}")
        out += [f"layout_op={op}" for op in self.layout_ops]
        out += [f"out_layout_op={op}" for op in self.out_layout_ops]
        return out

    def simpler(self) -> list["Program"]:
        """Programs with one feature turned off (for shrinking a mismatch outside hypothesis)."""
        base = Program()
        out = []
        for f in fields(self):
            if f.name in ("layout", "batch", "L", "K", "n", "miss", "family", "window"):
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
        if self.window in ("offset", "narrow") and not self.family:
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
            check_valid(self)
        except ValueError:
            return False
        return True


def check_valid(p: Program) -> None:
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
    if p.family in ("ifft_real",):
        need(p.irfft_n, "ifft n")
    if p.family == "rfft2":
        need(p.layout == "last" and len(p.batch) >= 1 and p.kdims >= 1 and p.mul != "einsum" and not p.channels
             and p.window in ("none", "slice") and p.irfft_n, "rfft2")
    if p.family in ("roll_window", "index_select_window"):
        need(p.window in ("offset", "narrow"), "roll needs an offset window")
    if p.family in ("inplace_mul", "sum_of_spectra"):
        need(p.mul != "einsum", "mul spelling")

