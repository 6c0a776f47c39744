"""0-d and broadcast-shaped gates and skips (issue 12, item 5): every implementation takes them as
eager broadcasting (and type promotion) does, through the operator, directly, and compiled."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from conftest import Compiled, assert_matches_eager
from convfuse import config
from convfuse.backends.cpu import fft_conv_cpu
from convfuse.backends.reference import fft_conv_reference
from convfuse.spec import ConvParams

op = torch.ops.convfuse.fft_conv
F64 = torch.float64


def eager(u, k, D, pre, post, n, length, out_dtype):
    """The operator's definition spelled in torch.fft with eager's own broadcasting and promotion
    (start 0, scale 1)."""
    ue = u if pre is None else u * pre
    y = torch.fft.irfft(torch.fft.rfft(ue, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :length]
    if D is not None:
        y = y + ue * D
    if post is not None:
        y = y * post
    return y.to(out_dtype)


# (D, pre_gate, post_gate) shapes for u (2, 4, 16), k (4, 16); None: no operand
OPERANDS = {
    "pre-0d": (None, (), None),
    "post-0d": (None, None, ()),
    "D-0d": ((), None, None),
    "all-0d": ((), (), ()),
    "pre-(1,)": (None, (1,), None),
    "pre-(4,1)-post-(16,)": (None, (4, 1), (16,)),
    "D-(4,1)-pre-(1,1,16)-post-0d": ((4, 1), (1, 1, 16), ()),
    "pre-(3,2,4,16)": (None, (3, 2, 4, 16), None),  # a gate with more dims widens the batch
    "pre-0d-post-(2,4,1)": (None, (), (2, 4, 1)),
}


def _operands(shapes, dtype=F64, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [None if s is None else torch.randn(s, dtype=dtype, generator=gen).requires_grad_(requires_grad)
            for s in shapes]


@pytest.mark.parametrize("kernel", ["reference", "cpu"])
@pytest.mark.parametrize("name", list(OPERANDS))
def test_the_operator_takes_0d_and_broadcast_operands_as_eager_does(kernel, name):
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(2, 4, 16, dtype=F64, generator=gen, requires_grad=True)
    k = torch.randn(4, 16, dtype=F64, generator=gen, requires_grad=True)
    D, pre, post = _operands(OPERANDS[name], requires_grad=True)
    got = op(u, k, D, pre, post, 32, 0, 16, 1.0, 0.0, False, F64, kernel)
    want = eager(u, k, D, pre, post, 32, 16, F64)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    leaves = [t for t in (u, k, D, pre, post) if t is not None]
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(want, leaves, g)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("algo", ["fft", "direct", "ols"])
def test_the_cpu_implementation_called_directly_takes_0d_operands(algo):
    gen = torch.Generator().manual_seed(2)
    u, k = torch.randn(2, 4, 64, dtype=F64, generator=gen), torch.randn(4, 9, dtype=F64, generator=gen)
    D, pre, post = (torch.tensor(v, dtype=F64) for v in (0.5, 2.0, -1.5))
    p = ConvParams(128, 0, 64, out_dtype=F64)
    with config.patch(cpu_algo=algo):
        got = fft_conv_cpu(u, k, D, pre, post, p)
    torch.testing.assert_close(got, eager(u, k, D, pre, post, 128, 64, F64), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fft_conv_reference(u, k, D, pre, post, p), got, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel", ["reference", "cpu"])
def test_a_0d_fp64_gate_does_not_promote_an_fp32_call(kernel):
    # eager: fp32 * 0-d fp64 is fp32, computed in fp32 with the scalar cast to it
    gen = torch.Generator().manual_seed(3)
    u, k = torch.randn(2, 4, 16, generator=gen), torch.randn(4, 16, generator=gen)
    g = torch.tensor(0.1, dtype=F64)
    want = eager(u, k, g, g, g, 32, 16, torch.float32)
    assert want.dtype == torch.float32
    got = op(u, k, g, g, g, 32, 0, 16, 1.0, 0.0, False, torch.float32, kernel)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # a gate of shape (1,) does promote, as in eager: the call computes in fp64
    g1 = g.reshape(1)
    want64 = eager(u.double(), k.double(), None, g1, None, 32, 16, F64)
    got64 = op(u, k, None, g1, None, 32, 0, 16, 1.0, 0.0, False, F64, kernel)
    torch.testing.assert_close(got64, want64, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["pre-0d", "post-0d", "D-0d", "all-0d", "pre-0d-post-(2,4,1)"])
def test_opcheck_with_0d_operands(name):
    u, k = torch.randn(2, 4, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    D, pre, post = _operands(OPERANDS[name], dtype=torch.float32, requires_grad=True)
    opcheck(op, (u, k, D, pre, post, 32, 0, 16, 1.0, 0.0, False, torch.float32, "cpu"))


def test_the_triton_plans_take_0d_operands():
    pytest.importorskip("triton")
    from convfuse.backends import triton_monarch as tm

    gen = torch.Generator().manual_seed(4)
    u, k = torch.randn(1, 2, 128, generator=gen), torch.randn(2, 128, generator=gen)
    D, pre, post = (torch.tensor(v) for v in (0.5, 2.0, -1.5))
    p = ConvParams(256, 0, 128, out_dtype=torch.float32)
    with config.patch(triton_interpret=True):
        assert not isinstance(tm.launch.resolve(u, k, D, pre, post, p), str)  # a plan, not a fallback
        got = tm.run(u, k, D, pre, post, p)
    torch.testing.assert_close(got, eager(u, k, D, pre, post, 256, 128, torch.float32), rtol=1e-4, atol=1e-4)


def _pre(u, k, g):
    return torch.fft.irfft(torch.fft.rfft(u * g) * torch.fft.rfft(k), n=u.shape[-1])


def _hyena_scalars(u, k, g):
    L = u.shape[-1]
    ue = u * g
    y = torch.fft.irfft(torch.fft.rfft(ue, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
    return (y + ue * g) * g


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("fn", [_pre, _hyena_scalars], ids=["pre-gate", "skip-and-gates"])
def test_a_compiled_program_with_a_scalar_tensor_gate(fn, dynamic):
    u, k = torch.randn(2, 4, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    g = torch.tensor(2.0, requires_grad=True)
    compiled = assert_matches_eager(fn, (u, k, g), dynamic=dynamic)
    assert compiled.op_calls() == 1 and compiled.fft_calls() == 0
    assert [s.status for s in compiled.report.sites] == ["rewritten"]


def test_a_compiled_program_with_a_scalar_gate_runs_every_cpu_algorithm():
    u, k, g = torch.randn(2, 4, 64), torch.randn(4, 64), torch.tensor(2.0)
    for algo in ("fft", "direct", "ols"):
        with config.patch(cpu_algo=algo):
            torch._dynamo.reset()
            compiled = Compiled(_hyena_scalars)
            torch.testing.assert_close(compiled(u, k, g), _hyena_scalars(u, k, g), rtol=1e-4, atol=1e-4)
            assert compiled.op_calls() == 1
