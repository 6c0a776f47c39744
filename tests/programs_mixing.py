"""Random channel-mixing programs (issue 14 item 4): FFT conv1d/conv2d layers written with
einsum in several letter orders, norms, windows, bias and conj, and FNO spectral layers with one
or two corner blocks; each convolution must be rewritten into one mixing operator and match
eager (outputs, the input's and every parameter's gradient), each near miss (a nonlinearity
between the spectra, a contraction over frequency, a kernel at another FFT size, overlapping
blocks) must be left alone with a reason.  Drawn through ``programs_draw.Chooser``: under
hypothesis in tests/test_mixing.py, by seed in ``bench/differential.py --mixing``.
"""

from __future__ import annotations

import torch

from conftest import Compiled, op_calls

MIX = torch.ops.convfuse.fft_conv_mix.default
MODES = torch.ops.convfuse.fft_spectral_mix.default


NORMS = [(None, None), ("ortho", "ortho"), ("forward", "forward"), ("backward", "forward")]
# 'bgcf,gcf->bgf': the kernel has no output-channel index, the input's batch index takes that
# role (the operator's roles swapped)
SWAPPED = "bgcf,gcf->bgf"
CONV_EQUATIONS = {1: ["bcf,ocf->bof", "bcf,cof->bof", "cbf,ocf->obf", "bgcf,gocf->bgof", SWAPPED],
                  2: ["bcxy,ocxy->boxy", "bcxy,coxy->boxy"]}
GROUPS = 2  # the size of a group index ('g')
CONV_MISSES = ["", "", "", "nonlinear", "sums_frequency", "kernel_other_n"]
MODE_MISSES = ["", "", "", "nonlinear", "overlap"]


class RandomConv(torch.nn.Module):
    def __init__(self, d, Ci, Co, K, n, equation, conj, norms, window, bias, miss):
        super().__init__()
        shape = {"o": Co, "c": Ci, "g": GROUPS}
        # fp64 throughout: a window in the zero tail of a linear convolution is all rounding noise,
        # which fp32 would make a tolerance question (the fixed tests cover fp32)
        weight_letters = equation.split("->")[0].split(",")[1][:-d]
        self.weight = torch.nn.Parameter(torch.randn(*[shape[x] for x in weight_letters], *K, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.randn(Co, dtype=torch.float64)) if bias else None
        self.d, self.n, self.equation, self.conj, self.norms, self.window, self.miss = (d, n, equation, conj, norms,
                                                                                       window, miss)

    def forward(self, x):
        d, n = self.d, self.n
        dims = tuple(range(-d, 0))
        X = torch.fft.rfftn(x, s=n, dim=dims, norm=self.norms[0])
        kn = n if self.miss != "kernel_other_n" else [s + 2 for s in n]
        W = torch.fft.rfftn(self.weight, s=kn, dim=dims)
        if self.miss == "kernel_other_n":
            W = W[..., : n[-1] // 2 + 1] if d == 1 else W[..., : n[0], : n[-1] // 2 + 1]
        if self.conj == "w":
            W = W.conj()
        elif self.conj == "x":
            X = X.conj()
        if self.miss == "sums_frequency":  # (the letters' sum over frequency)
            lhs, out = self.equation.split("->")
            Y = torch.einsum(f"{lhs}->{out[:-d]}", X, W)
            Y = Y.reshape(*Y.shape, *([1] * d)).expand(*Y.shape, *X.shape[-d:])
        else:
            Y = torch.einsum(self.equation, X, W)
        if self.miss == "nonlinear":
            Y = torch.complex(torch.relu(Y.real), Y.imag)
        y = torch.fft.irfftn(Y, s=n, dim=dims, norm=self.norms[1])
        if self.window is not None:
            y = y[(Ellipsis, *(slice(a, a + length) for a, length in self.window))]
        if self.bias is not None:
            channel = self.equation.split("->")[1].index("o")
            y = y + self.bias.reshape(-1, *([1] * (y.dim() - channel - 1)))
        return y


def _draw_conv(c, miss=None):
    d = c.choice([1, 1, 2])
    B, Ci, Co = c.choice(range(1, 3)), c.choice(range(1, 4)), c.choice(range(1, 4))
    L = [c.choice(range(3, (12 if d == 1 else 6) + 1)) for _ in range(d)]
    K = [c.choice(range(1, length + 3)) for length in L]
    kind = c.choice(["linear", "circular", "big"])
    if kind == "circular":
        K = [min(k, length) for k, length in zip(K, L)]
        n = list(L)
    else:
        n = [length + k - 1 + (length if kind == "big" else 0) for length, k in zip(L, K)]
    equation = c.choice(CONV_EQUATIONS[d])
    window = None
    if c.boolean():
        window = [(c.choice(range(0, ni - li + 1)), li) for ni, li in zip(n, L)]
    miss = c.choice(CONV_MISSES) if miss is None else miss
    conj = c.choice(["", "w", "x"])
    if equation == SWAPPED and conj == "w" and not miss:
        # a conjugate on the spectrum that takes the input's role is the time reversal of the
        # correlation the operator computes: it must be refused
        miss = "conj_input_role"
    bias = c.boolean() and "o" in equation.split("->")[1]
    module = RandomConv(d, Ci, Co, K, n, equation, conj, c.choice(NORMS), window, bias, miss)
    letters = {"b": B, "c": Ci, "g": GROUPS}
    x = torch.randn(*[letters[ch] for ch in equation.split(",")[0][:-d]], *L, dtype=torch.float64)
    return module, x, miss


class RandomModes(torch.nn.Module):
    def __init__(self, d, Ci, Co, modes, corners, norms, miss):
        super().__init__()
        self.d, self.modes, self.corners, self.norms, self.miss = d, modes, corners, norms, miss
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(Ci, Co, *modes, dtype=torch.cdouble) / Ci) for _ in range(corners))

    def forward(self, x):
        d = self.d
        dims = tuple(range(-d, 0))
        x_ft = torch.fft.rfftn(x, dim=dims, norm=self.norms[0])
        out_ft = torch.zeros(*x.shape[:-d - 1], self.weights[0].shape[1], *x_ft.shape[-d:], dtype=torch.cdouble)
        eq = "bix,iox->box" if d == 1 else "bixy,ioxy->boxy"
        m = self.modes
        blocks = [tuple(slice(None, mi) for mi in m)]
        if self.corners == 2:
            blocks.append((slice(-m[0], None), slice(None, m[1])))
        for block, w in zip(blocks, self.weights):
            index = (Ellipsis, *block)
            value = torch.einsum(eq, x_ft[index], w)
            if self.miss == "nonlinear":
                value = value * torch.sigmoid(value.abs())
            out_ft[index] = value
        return torch.fft.irfftn(out_ft, s=x.shape[-d:], dim=dims, norm=self.norms[1])


def _draw_modes(c, miss=None):
    d = c.choice([1, 2])
    B, Ci, Co = c.choice(range(1, 3)), c.choice(range(1, 4)), c.choice(range(1, 4))
    grid = [c.choice(range(4, (16 if d == 1 else 8) + 1)) for _ in range(d)]
    miss = c.choice(MODE_MISSES) if miss is None else miss
    if d == 1 and miss == "overlap":
        miss = ""
    corners = 2 if d == 2 and (miss == "overlap" or c.boolean()) else 1
    bins = [*grid[:-1], grid[-1] // 2 + 1]
    modes = [c.choice(range(1, b + 1)) for b in bins]
    if corners == 2:
        modes[0] = c.choice(range(grid[0] // 2 + 1, grid[0] + 1)) if miss == "overlap" else max(1, min(modes[0],
                                                                                                        grid[0] // 2))
    module = RandomModes(d, Ci, Co, modes, corners, c.choice(NORMS), miss)
    return module, torch.randn(B, Ci, *grid, dtype=torch.float64), miss


def draw_program(c, kind: str, miss: str | None = None):
    """(module, input, near-miss name or "") of ``kind`` "conv" (fft_conv_mix) or "modes" (fft_spectral_mix)."""
    module, x, miss = (_draw_conv if kind == "conv" else _draw_modes)(c, miss)
    return kind, module, x, miss


def _calls(c: Compiled, op) -> int:
    return op_calls(c, op)


def _close(got, expected, what: str) -> list[str]:
    # rtol of the output's scale, with an absolute floor: a window may fall in the zero tail,
    # where the whole result is rounding noise
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return [f"{what}: {tuple(got.shape)} {got.dtype} against eager's {tuple(expected.shape)} {expected.dtype}"]
    wide = torch.complex128 if expected.is_complex() else torch.float64  # .double() would drop imaginary parts
    err = (got.detach().to(wide) - expected.detach().to(wide)).abs().max().item()
    scale = expected.detach().abs().max().item()
    return [] if err <= 1e-9 * scale + 1e-12 else [f"{what}: max error {err:.3e} against a scale of {scale:.3e}"]


def check(program) -> list[str]:
    """What is wrong with how convfuse compiled ``program`` (empty: nothing)."""
    kind, module, x, miss = program
    op = MIX if kind == "conv" else MODES
    torch._dynamo.reset()  # many programs in one process: no frame cache across them
    c = Compiled(module)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = module(xe), c(xc)
    problems = _close(got, expected, "output")
    g = torch.randn_like(expected)
    params = list(module.parameters())
    ge = torch.autograd.grad(expected, [xe, *params], g, allow_unused=True)
    gc = torch.autograd.grad(got, [xc, *params], g, allow_unused=True)
    for name, a, b in zip(["d input"] + [f"d {n}" for n, _ in module.named_parameters()], gc, ge):
        if (a is None) != (b is None):
            problems.append(f"{name}: None on one side only")
        elif a is not None:
            problems += _close(a, b, name)
    sites = c.report.sites if c.report else []
    if miss:
        if _calls(c, op):
            problems.append(f"near miss {miss!r} was rewritten")
        if not any(not s.rewritten and s.reason for s in sites):
            problems.append(f"near miss {miss!r} has no skipped site with a reason")
    elif not (sites and sites[0].rewritten and _calls(c, op) == 1 and c.fft_calls() == 0):
        problems.append(f"not rewritten: {sites[0].reason if sites else 'no site'}")
    return problems
