"""The library transforms on kept MKL descriptors (convfuse/csrc/mkl_fft.h, cpu_algos.rfft/irfft):
bitwise torch.fft's results on every layout, torch.fft's own op wherever a value is not all that
is wanted (autograd, forward AD, fake tensors), safe across threads and a full descriptor table."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convfuse import config
from convfuse.backends import cpu_algos, cpu_native

pytestmark = pytest.mark.skipif(
    not (cpu_native.loaded() and torch.ops.convfuse._mkl_descriptors()),
    reason=f"kept MKL descriptors need the native CPU kernels and MKL's DFTI: {cpu_native.status()}",
)

R = lambda x, n: torch.ops.convfuse._rfft(x, n)  # noqa: E731
I = lambda X, n: torch.ops.convfuse._irfft(X, n)  # noqa: E731


def _layouts(x: torch.Tensor):
    yield "contiguous", x
    yield "strided", torch.cat([x, x], dim=-1)[..., ::2]
    if x.dim() >= 2:
        yield "transposed", x.transpose(-1, -2).contiguous().transpose(-1, -2)
        yield "expanded", x[..., :1, :].expand(x.shape)
        yield "rows sliced", torch.cat([x, x], dim=-2)[..., 1::2, :]
    if x.dim() >= 3:
        yield "batch permuted", x.transpose(0, 1).contiguous().transpose(0, 1)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=3),
    L=st.integers(1, 300),
    n=st.integers(2, 600),
    double=st.booleans(),
)
def test_bitwise_torch_fft_on_every_layout(batch, L, n, double):
    dtype = torch.float64 if double else torch.float32
    x = torch.randn(*batch, L, dtype=dtype)
    for name, xv in _layouts(x):
        before = xv.clone()
        got, want = R(xv, n), torch.fft.rfft(xv, n=n)
        assert got.shape == want.shape and got.dtype == want.dtype, name
        assert torch.equal(got, want), (name, (got - want).abs().max())
        assert torch.equal(xv, before), name  # the input is read only
    X = torch.fft.rfft(x, n=n)
    for m in {n // 2 + 1, max(1, n // 4), n // 2 + 4}:  # full, short (zero-padded), long (cut)
        Xm = torch.randn(*X.shape[:-1], m, dtype=X.dtype)
        for name, Xv in (("contiguous", Xm), ("strided", torch.cat([Xm, Xm], -1)[..., ::2])):
            before = Xv.clone()
            assert torch.equal(I(Xv, n), torch.fft.irfft(Xv, n=n)), (name, m, n)
            assert torch.equal(Xv, before), name


def test_large_and_odd_sizes_match():
    for n in (16384, 65536, 8190, 2 * 3**5 * 7, 4099):
        x = torch.randn(3, n // 2 + 5)
        assert torch.equal(R(x, n), torch.fft.rfft(x, n=n)), n
        X = torch.fft.rfft(x, n=n)
        assert torch.equal(I(X, n), torch.fft.irfft(X, n=n)), n


def test_gradients_and_tangents_go_through_torch_fft():
    x = torch.randn(4, 64, dtype=torch.float64, requires_grad=True)
    y = R(x, 128)
    assert y.grad_fn is not None  # torch.fft's own differentiable op
    torch.autograd.gradcheck(lambda t: torch.view_as_real(R(t, 128)), (x,))
    X = torch.randn(4, 65, dtype=torch.complex128, requires_grad=True)
    torch.autograd.gradcheck(lambda t: I(t, 128), (X,))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        t = torch.randn(4, 64, dtype=torch.float64)
        out = fwAD.unpack_dual(R(fwAD.make_dual(x.detach(), t), 128))
        torch.testing.assert_close(out.tangent, torch.fft.rfft(t, n=128))
    with torch.no_grad():
        assert R(x, 128).grad_fn is None


def test_fake_meta_and_conjugate_inputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = R(torch.randn(2, 10), 16)
        assert y.shape == (2, 9) and y.dtype == torch.complex64
    assert R(torch.randn(2, 10, device="meta"), 16).shape == (2, 9)
    X = torch.randn(3, 9, dtype=torch.complex64)
    assert torch.equal(I(X.conj(), 16), torch.fft.irfft(X.conj(), n=16))
    assert torch.equal(R(torch.randn(2, 3, 0), 8), torch.fft.rfft(torch.randn(2, 3, 0), n=8))


def test_threads_and_a_full_descriptor_table():
    xs = {n: torch.randn(5, n) for n in range(8, 8 + 2 * 90, 2)}  # more sizes than a thread keeps
    want = {n: torch.fft.rfft(x) for n, x in xs.items()}
    errors = []

    def work():
        for _ in range(2):
            for n, x in xs.items():
                if not torch.equal(R(x, n), want[n]) or not torch.equal(I(want[n], n), torch.fft.irfft(want[n], n=n)):
                    errors.append(n)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_native_cpu_off_uses_torch_fft():
    assert cpu_algos.kept_descriptors()
    with config.patch(native_cpu=False):
        assert not cpu_algos.kept_descriptors() and cpu_algos.lone_row_size(16384)
    # a lone row is transformed alone on kept descriptors (no zero row beside it)
    assert not cpu_algos.lone_row_size(16384)
