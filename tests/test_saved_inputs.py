"""Operands changed in place between a compiled forward and its backward.

Eager's FFT program saves the spectra it computed, never its inputs, so eager's gradients are
those of the values at call time whatever the caller does to the inputs afterwards.  The fused
operators save their operands; before passes/saved_inputs.py, a write to an input between
forward and backward gave a wrong k gradient through Inductor (a saved view of a graph input,
rebuilt by ``reinterpret_tensor``, has no version check) and raised autograd's "modified by an
inplace operation" under aot_eager, eager and a graph run as captured, where eager ran.

Each case writes one operand (graph inputs, parameters through ``.data``, ``copy_``, optimizer
steps with and without version-counter bumps, a graph output made in the graph) between forward
and backward, on every inner compiler, and compares every gradient with eager's; the copies are
asserted inserted where the caller can reach an operand, and absent where it cannot (operands
made in the graph, no_grad).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convfuse  # noqa: F401
from convfuse.report import collecting
from tests.conftest import Compiled, assert_close_rel

F64 = torch.float64
SAVED_COPY = torch.ops.convfuse.saved_copy.default
FUSED = {torch.ops.convfuse.fft_conv.default, torch.ops.convfuse.fft_convnd.default,
         torch.ops.convfuse.fft_conv_mix.default, torch.ops.convfuse.fft_spectral_mix.default}
INNERS = ["inductor", "aot_eager", "eager"]


def _causal(u, k, n):
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]


class Hyena(nn.Module):
    """(B, L, H) in, the conv on a swapped view, a skip D, gates from the caller."""

    def __init__(self, H=3, L=16):
        super().__init__()
        self.k = nn.Parameter(torch.randn(H, L, dtype=F64))
        self.D = nn.Parameter(torch.randn(H, 1, dtype=F64))

    def forward(self, x, pre, post):
        u = x.swapaxes(1, 2)  # (B, H, L): a non-contiguous view of the caller's tensor
        ue = u * pre
        y = post * (_causal(ue, self.k, 2 * u.shape[-1]) + ue * self.D)
        return y.swapaxes(1, 2)


class GFNet(nn.Module):
    """GFNet's global filter: the parameter is the spectrum, stored as real pairs."""

    def __init__(self, h=4, w=6, c=3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(h, w // 2 + 1, c, 2, dtype=F64))

    def forward(self, x):  # (B, h, w, c)
        X = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
        return torch.fft.irfft2(X * torch.view_as_complex(self.weight), s=x.shape[1:3], dim=(1, 2), norm="ortho")


class Mix(nn.Module):
    """A channel-mixing long convolution (Ci -> Co) with a bias."""

    def __init__(self, ci=3, co=2, K=8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(co, ci, K, dtype=F64))
        self.bias = nn.Parameter(torch.randn(co, dtype=F64))

    def forward(self, x):  # (B, ci, L)
        n = x.shape[-1] + self.weight.shape[-1] - 1
        Y = torch.einsum("bcx,ocx->box", torch.fft.rfft(x, n=n), torch.fft.rfft(self.weight, n=n))
        return torch.fft.irfft(Y, n=n)[..., : x.shape[-1]] + self.bias[:, None]


class Modes(nn.Module):
    """A Fourier neural operator layer: low modes mixed by a complex parameter."""

    def __init__(self, ci=2, co=3, modes=4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(ci, co, modes, dtype=torch.complex128) / ci)
        self.modes = modes

    def forward(self, x):  # (B, ci, L)
        X = torch.fft.rfft(x)
        out = torch.zeros(x.shape[0], self.weight.shape[1], X.shape[-1], dtype=X.dtype)
        out[..., : self.modes] = torch.einsum("bix,iox->box", X[..., : self.modes], self.weight)
        return torch.fft.irfft(out, n=x.shape[-1])


def _case(name, needs=("input", "params")):
    """(module, inputs) for a case, the same values every time; ``needs``: which of the input,
    the gates and the parameters require grad."""
    torch.manual_seed(0)
    m = {"hyena": Hyena, "gfnet": GFNet, "mix": Mix, "modes": Modes}[name]()
    m.requires_grad_("params" in needs)
    shape = {"hyena": (2, 16, 3), "gfnet": (2, 4, 6, 3), "mix": (2, 3, 12), "modes": (2, 2, 10)}[name]
    xs = [torch.randn(shape, dtype=F64, requires_grad="input" in needs)]
    if name == "hyena":
        xs += [torch.randn(3, 16, dtype=F64, requires_grad="pre" in needs),
               torch.randn(2, 3, 16, dtype=F64, requires_grad="post" in needs)]
    return m, xs


# (case, what is written between forward and backward): the write, and which tensors require
# grad.  Each is chosen so eager's own program does not save the written tensor (x * p saves p
# when x needs a gradient, so a gate or parameter written while its partner needs one would make
# eager raise, or with ``.data`` read the new values): eager's answer is then the gradient of the
# values at call time.
INPUT = ("input", "params")
WRITES = {
    "hyena": {
        "input-mul_": (lambda m, xs: xs[0].mul_(3), INPUT),
        "input-data-copy_": (lambda m, xs: xs[0].data.copy_(torch.randn_like(xs[0])), INPUT),
        "pre-gate-mul_": (lambda m, xs: xs[1].mul_(-2), ("params",)),
        "post-gate-add_": (lambda m, xs: xs[2].add_(1), ("post",)),
        "kernel-data-mul_": (lambda m, xs: m.k.data.mul_(2), INPUT),
        "kernel-copy_": (lambda m, xs: m.k.copy_(torch.randn_like(m.k)), INPUT),
        "skip-data-add_": (lambda m, xs: m.D.data.add_(5), ("params",)),
    },
    "gfnet": {  # (a transform at the input's own size saves the input in eager: no input writes here)
        "spectrum-data-mul_": (lambda m, xs: m.weight.data.mul_(2), ("params",)),
    },
    "mix": {
        "input-mul_": (lambda m, xs: xs[0].mul_(3), INPUT),
        "weight-data-add_": (lambda m, xs: m.weight.data.add_(1), INPUT),
        "bias-data-mul_": (lambda m, xs: m.bias.data.mul_(4), INPUT),
    },
    "modes": {
        "weight-data-mul_": (lambda m, xs: m.weight.data.mul_(2j), ("params",)),
    },
}
WRITE_CASES = [(case, write) for case, writes in WRITES.items() for write in writes]


def _grads_after_write(case, write, compile_with=None):
    """Forward, the write (no_grad), backward: the gradients of every leaf, and the compiled."""
    do, needs = WRITES[case][write]
    m, xs = _case(case, needs)
    fn = m if compile_with is None else compile_with(m)
    out = fn(*xs)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        do(m, xs)
    out.backward(g)
    leaves = [t for t in (*m.parameters(), *xs) if t.requires_grad]
    assert leaves and all(t.grad is not None for t in leaves)
    return [t.grad for t in leaves], fn


def _copies(c: Compiled) -> int:
    return sum(node.target is SAVED_COPY for gm in c.graphs for node in gm.graph.nodes)


def _fused(c: Compiled) -> int:
    return sum(node.target in FUSED for gm in c.graphs for node in gm.graph.nodes)


@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize("case,write", WRITE_CASES, ids=[f"{c}-{w}" for c, w in WRITE_CASES])
def test_a_write_between_forward_and_backward_gives_eagers_gradients(case, write, inner):
    torch._dynamo.reset()
    want, _ = _grads_after_write(case, write)
    got, c = _grads_after_write(case, write, lambda m: Compiled(m, inner=inner))
    assert _fused(c) >= 1, c.report
    assert _copies(c) >= 1
    assert any(s.saved_copies for s in c.report.rewritten), str(c.report)
    for a, b in zip(got, want):
        assert_close_rel(a, b, 1e-9)


def test_the_default_backend_through_inductor():
    """The issue's program as a user runs it: ``backend="convfuse"``, Inductor for the rest."""
    def program(u, k):
        x = u.swapaxes(1, 2)
        y = _causal(x, k, 2 * x.shape[-1])
        return y.movedim(1, 2) + 1.0

    def k_grad(fn):
        gen = torch.Generator().manual_seed(0)
        u = torch.randn(2, 64, 4, generator=gen).requires_grad_()
        k = torch.randn(4, 8, generator=gen).requires_grad_()
        ui = u * 1.0
        out = fn(ui, k)
        with torch.no_grad():
            ui.mul_(3)
        out.sum().backward()
        return u.grad, k.grad

    torch._dynamo.reset()
    want = k_grad(program)
    with collecting() as report:
        got = k_grad(torch.compile(program, backend="convfuse"))
    assert report.rewritten and report.rewritten[0].saved_copies == ["u", "k"], str(report)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_graph_run_as_captured():
    """Nothing but views around the operator: the graph runs as Dynamo captured it (no AOT), the
    copy with it."""
    def program(x, k):
        return _causal(x, k, 2 * x.shape[-1])

    def grads(fn):
        torch.manual_seed(0)
        x = torch.randn(2, 3, 16, dtype=F64, requires_grad=True)
        k = torch.randn(3, 16, dtype=F64, requires_grad=True)
        out = fn(x, k)
        with torch.no_grad():
            x.mul_(2)
            k.data.add_(1)
        out.sum().backward()
        return x.grad, k.grad

    torch._dynamo.reset()
    want = grads(program)
    c = Compiled(program, inner="inductor")
    got = grads(c)
    assert _copies(c) == 2 and not any(n.op == "call_function" and n.target is torch.fft.rfft
                                       for gm in c.graphs for n in gm.graph.nodes)
    for a, b in zip(got, want):
        assert_close_rel(a, b, 1e-9)


def test_an_operand_returned_to_the_caller():
    """An operand made in the graph and also returned: the caller holds it, and may write it."""
    def program(x, k):
        h = x * 2.0
        return _causal(h, k, 2 * h.shape[-1]), h

    def grads(fn):
        torch.manual_seed(0)
        x = torch.randn(2, 3, 16, dtype=F64, requires_grad=True)
        k = torch.randn(3, 16, dtype=F64, requires_grad=True)
        y, h = fn(x, k)
        with torch.no_grad():
            h.mul_(5)
        y.sum().backward()
        return x.grad, k.grad

    for inner in INNERS:
        torch._dynamo.reset()
        want = grads(program)
        c = Compiled(program, inner=inner)
        got = grads(c)
        assert c.report.rewritten[0].saved_copies == ["u", "k"], (inner, str(c.report))
        for a, b in zip(got, want):
            assert_close_rel(a, b, 1e-9)


def test_a_write_inside_the_graph_after_the_convolution():
    """The graph itself writes an operand after the convolution: eager's gradient is that of
    the value the convolution read."""
    def program(x, k):
        h = x * 2.0
        y = _causal(h, k, 2 * h.shape[-1])
        h.mul_(3)
        return y + h

    for inner in INNERS:
        torch._dynamo.reset()
        c = assert_matches_eager_grads(program, inner)
        assert "u" in c.report.rewritten[0].saved_copies, (inner, str(c.report))


def assert_matches_eager_grads(program, inner) -> Compiled:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, dtype=F64, requires_grad=True)
    k = torch.randn(3, 16, dtype=F64, requires_grad=True)
    want = torch.autograd.grad(program(x, k).sum(), (x, k))
    c = Compiled(program, inner=inner)
    got = torch.autograd.grad(c(x, k).sum(), (x, k))
    assert _fused(c) == 1
    for a, b in zip(got, want):
        assert_close_rel(a, b, 1e-9)
    return c


class Conv(nn.Module):
    """A long convolution whose eager program saves no parameter (rfft saves nothing)."""

    def __init__(self, H=3, L=16):
        super().__init__()
        self.k = nn.Parameter(torch.randn(H, L, dtype=F64))
        self.bias = nn.Parameter(torch.randn(H, 1, dtype=F64))

    def forward(self, x):
        return (_causal(x.swapaxes(1, 2), self.k, 2 * x.shape[1]) + self.bias).swapaxes(1, 2)


@pytest.mark.parametrize("optimizer", ["sgd-foreach", "adam-fused", "adamw-for-loop"])
def test_an_optimizer_step_between_forward_and_backward(optimizer):
    """Gradient accumulation written as step-then-backward: the step writes the parameters (fused
    optimizers bump no version counter) after the forward that read them."""
    def run(compiled: bool):
        torch._dynamo.reset()
        torch.manual_seed(0)
        m = Conv()
        xs = [torch.randn(2, 16, 3, dtype=F64, requires_grad=True)]
        fn = torch.compile(m, backend="convfuse", options={"inner": "inductor"}) if compiled else m
        make = {"sgd-foreach": lambda p: torch.optim.SGD(p, lr=0.1, foreach=True),
                "adam-fused": lambda p: torch.optim.Adam(p, lr=0.1, fused=True),
                "adamw-for-loop": lambda p: torch.optim.AdamW(p, lr=0.1, foreach=False)}[optimizer]
        opt = make(list(m.parameters()))
        fn(*xs).square().sum().backward()  # grads to step with
        x = xs[0].detach().requires_grad_()
        out = fn(x)
        opt.step()
        opt.zero_grad()
        out.square().sum().backward()  # x's gradient reads the kernel the step wrote
        return [x.grad, *(p.grad.clone() for p in m.parameters()), *(p.detach().clone() for p in m.parameters())]

    for a, b in zip(run(True), run(False)):
        assert_close_rel(a, b, 1e-9)


def test_no_copy_for_operands_made_in_the_graph():
    """A projection's output and a kernel computed from a parameter are read by the operator
    alone: saved as they are."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 3, dtype=F64)
            self.filt = nn.Parameter(torch.randn(3, 16, dtype=F64))

        def forward(self, x):
            u = self.proj(x).swapaxes(1, 2)
            k = torch.tanh(self.filt) * 0.5
            return _causal(u, k, 32).swapaxes(1, 2).relu()

    torch.manual_seed(0)
    m = Block()
    x = torch.randn(2, 16, 3, dtype=F64, requires_grad=True)
    want = torch.autograd.grad(m(x).sum(), (x, *m.parameters()))
    for inner in INNERS:
        torch._dynamo.reset()
        c = Compiled(m, inner=inner)
        got = torch.autograd.grad(c(x).sum(), (x, *m.parameters()))
        assert _fused(c) == 1 and _copies(c) == 0, (inner, str(c.report))
        assert c.report.rewritten[0].saved_copies == []
        for a, b in zip(got, want):
            assert_close_rel(a, b, 1e-9)


@pytest.mark.parametrize("case", list(WRITES))
def test_no_copy_without_a_gradient(case):
    """Under no_grad nothing is saved: nothing copied."""
    torch._dynamo.reset()
    m, xs = _case(case, ("input", "pre", "post", "params"))
    c = Compiled(m, inner="inductor")
    with torch.no_grad():
        want = m(*xs)
        got = c(*xs)
    assert _fused(c) >= 1 and _copies(c) == 0, str(c.report)
    assert_close_rel(got, want, 1e-9)


def test_double_backward_through_the_copies():
    """The copy's gradient is the identity: a gradient of a gradient passes through it, where the
    operator's own autograd runs (inner eager; a graph run as captured).  Through AOTAutograd a
    second backward is torch.compile's own limit, with or without convfuse (its first gradients
    carry no graph of their inputs)."""
    def program(x, k):
        return _causal(x.swapaxes(1, 2), k, 32)

    torch.manual_seed(0)
    x = torch.randn(2, 16, 3, dtype=F64, requires_grad=True)
    k = torch.randn(3, 16, dtype=F64, requires_grad=True)

    def second(fn):
        gx, gk = torch.autograd.grad(fn(x, k).square().sum(), (x, k), create_graph=True)
        return torch.autograd.grad((gx.square().sum() + gk.sin().sum()), (x, k))

    want = second(program)
    for inner in ("eager", "inductor"):
        torch._dynamo.reset()
        c = Compiled(program, inner=inner)
        got = second(c)
        assert _copies(c) == 2
        for a, b in zip(got, want):
            assert_close_rel(a, b, 1e-9)


def test_the_copy_op_is_a_copy_with_an_identity_gradient():
    x = torch.randn(3, 4, dtype=F64).t().requires_grad_()
    y = SAVED_COPY(x)
    assert y.data_ptr() != x.data_ptr() and y.stride() == x.stride()
    torch.testing.assert_close(y, x)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g)
    torch.library.opcheck(torch.ops.convfuse.saved_copy, (torch.randn(3, 4, requires_grad=True),))


@pytest.mark.parametrize("inner", INNERS)
def test_symbolic_sizes(inner):
    """Sizes the graph reads at run time (dynamic=True) sit beside the operands in the operator's
    arguments: only tensors are copied."""
    def program(x, k):
        return _causal(x.swapaxes(1, 2), k, 2 * x.shape[1]).swapaxes(1, 2) * 2.0

    def grads(fn, L):
        torch.manual_seed(L)
        x = torch.randn(2, L, 3, dtype=F64, requires_grad=True)
        k = torch.randn(3, L, dtype=F64, requires_grad=True)
        out = fn(x, k)
        with torch.no_grad():
            x.mul_(3)
            k.data.mul_(-1)
        out.sum().backward()
        return x.grad, k.grad

    torch._dynamo.reset()
    c = Compiled(program, inner=inner, dynamic=True)
    for L in (16, 24):
        for a, b in zip(grads(c, L), grads(program, L)):
            assert_close_rel(a, b, 1e-9)
    assert c.report.rewritten[0].saved_copies == ["u", "k"], str(c.report)
