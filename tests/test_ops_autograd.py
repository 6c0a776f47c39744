"""The operators' thin Autograd-key kernel (convfuse/ops_autograd.py).

It replaces custom_op's wrapper and, for plain CPU tensors with no grad wanted, calls the CPU
kernel without a redispatch.  What must still hold: everything below autograd that could act on
a call (dispatch modes, tensor subclasses, vmap) still sees the operator; gradients are the
formula's, with or without defaulted arguments; the backward's operator is not differentiable.
"""

from __future__ import annotations

import pytest
import torch

import convfuse  # noqa: F401
from tests.conftest import RecordingMode

OP = torch.ops.convfuse.fft_conv


def _call(u, k, D=None, pre=None, post=None, **kw):
    L = u.shape[-1]
    return OP(u, k, D, pre, post, 2 * L, 0, L, 1.0, 0.0, False, u.dtype, "cpu", **kw)


def _eager(u, k, D=None, pre=None, post=None):
    L = u.shape[-1]
    ue = u if pre is None else u * pre
    y = torch.fft.irfft(torch.fft.rfft(ue, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
    y = y if D is None else y + ue * D
    return y if post is None else y * post


class _Wrapped(torch.Tensor):
    """A tensor subclass that counts the operators dispatched on it."""

    seen: list = []

    @staticmethod
    def __new__(cls, t):
        return torch.Tensor._make_wrapper_subclass(cls, t.shape, dtype=t.dtype, device=t.device)

    def __init__(self, t):
        self.t = t

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(str(func))
        unwrap = lambda a: a.t if isinstance(a, _Wrapped) else a  # noqa: E731
        return func(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in (kwargs or {}).items()})


def _operands(dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 16, generator=g, dtype=dtype)
    k = torch.randn(3, 16, generator=g, dtype=dtype)
    D = torch.randn(3, 1, generator=g, dtype=dtype)
    return [t.requires_grad_(grad) for t in (u, k, D)]


@pytest.mark.parametrize("grad_mode", [True, False])
def test_a_dispatch_mode_still_sees_the_operator(grad_mode):
    u, k, D = _operands()
    expected = _call(u, k, D)
    with torch.set_grad_enabled(grad_mode), RecordingMode() as log:
        got = _call(u, k, D)
    assert "convfuse.fft_conv.default" in map(str, log.ops)
    torch.testing.assert_close(got, expected)


def test_a_tensor_subclass_still_sees_the_operator():
    u, k, D = _operands()
    _Wrapped.seen = []
    with torch.no_grad():
        got = _call(_Wrapped(u), k, D)
    assert "convfuse.fft_conv.default" in _Wrapped.seen
    torch.testing.assert_close(got, _eager(u, k, D), rtol=1e-4, atol=1e-5)


def test_vmap_still_batches_the_operator():
    u, k, D = _operands()
    got = torch.vmap(lambda x: _call(x, k, D))(u)
    torch.testing.assert_close(got, torch.stack([_call(x, k, D) for x in u]))
    torch.testing.assert_close(got, _eager(u, k, D), rtol=1e-4, atol=1e-5)


def test_fake_tensors_get_the_fake_implementation():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        u, k, D = torch.empty(2, 3, 16), torch.empty(3, 16), torch.empty(3, 1)
        y = _call(u, k, D)
    assert type(y).__name__ == "FakeTensor" and y.shape == (2, 3, 16)


@pytest.mark.parametrize("kw", [{}, {"constant_kernel": True}, {"constant_kernel": False, "spectrum_bins": 0}])
def test_gradients_are_the_formulas_whatever_defaults_the_dispatcher_drops(kw):
    g = torch.Generator().manual_seed(1)
    u, k, D, pre, post = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
                          for s in ((2, 3, 8), (3, 8), (3, 1), (2, 3, 8), (3, 8)))
    torch.autograd.gradcheck(lambda *a: _call(*a, **kw), (u, k, D, pre, post))
    ours = torch.autograd.grad(_call(u, k, D, pre, post, **kw).square().sum(), (u, k, D, pre, post))
    ref = torch.autograd.grad(_eager(u, k, D, pre, post).square().sum(), (u, k, D, pre, post))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_a_parameter_kernel_gets_its_gradient():
    u, _, _ = _operands()
    k = torch.nn.Parameter(torch.randn(3, 16))
    _call(u, k).sum().backward()
    k_ref = k.detach().clone().requires_grad_(True)
    _eager(u, k_ref).sum().backward()
    torch.testing.assert_close(k.grad, k_ref.grad, rtol=1e-4, atol=1e-5)


def test_the_backward_operator_refuses_to_be_differentiated():
    g = torch.randn(2, 3, 16, requires_grad=True)
    ue, k = torch.randn(2, 3, 16), torch.randn(3, 16)
    du, _, _ = torch.ops.convfuse.fft_conv_grad(g, ue, k, 32, 0, 1.0, 0.0, False, "cpu", True, False)
    with pytest.raises(RuntimeError, match="fft_conv_grad has no autograd formula"):
        du.sum().backward()


def test_every_operator_with_a_formula_has_the_thin_kernel():
    for name in ("fft_conv", "fft_conv_grad", "fft_convnd", "fft_conv_mix"):
        dump = torch._C._dispatch_dump(f"convfuse::{name}")
        active = [line for line in dump.splitlines() if line.startswith("Autograd[alias]:")]
        assert active and "ops_autograd.py" in active[0], (name, active)
