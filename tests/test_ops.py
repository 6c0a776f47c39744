"""The fused operator on its own: definition, gradients, opcheck, dtypes, every implementation."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.library import opcheck

from convfuse.backends.reference import fft_conv_reference
from convfuse.spec import ConvParams

op = torch.ops.convfuse.fft_conv


def direct_cyclic(u, k, n, start, length, conj):
    """The definition in convfuse.spec, as explicit sums (fp64, tiny sizes only)."""
    u = torch.nn.functional.pad(u[..., :n], (0, max(0, n - u.shape[-1])))
    k = torch.nn.functional.pad(k[..., :n], (0, max(0, n - k.shape[-1])))
    batch = torch.broadcast_shapes(u.shape[:-1], k.shape[:-1])
    u, k = u.expand(*batch, n), k.expand(*batch, n)
    c = torch.zeros(*batch, n, dtype=torch.float64)
    for m in range(n):
        for j in range(n):
            c[..., m] += u[..., j] * (k[..., (j - m) % n] if conj else k[..., (m - j) % n])
    idx = [(start + t) % n for t in range(length)]
    return c[..., idx]


# (n, start, length, Lu, Lk): causal, offset, wrap-around window, truncation (signals longer than n)
GEOMETRIES = [(16, 0, 8, 8, 8), (16, 5, 8, 8, 4), (8, 3, 8, 8, 8), (6, 2, 5, 8, 9), (5, 0, 5, 5, 5)]


@pytest.mark.parametrize("kernel", ["reference", "cpu"])
@pytest.mark.parametrize("conj", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_definition(kernel, conj, geometry):
    n, start, length, Lu, Lk = geometry
    u, k = torch.randn(2, 3, Lu, dtype=torch.float64), torch.randn(3, Lk, dtype=torch.float64)
    got = op(u, k, None, None, None, n, start, length, 0.5, -0.5, conj, torch.float64, kernel)
    torch.testing.assert_close(got, 0.5 * n**-0.5 * direct_cyclic(u, k, n, start, length, conj))


@pytest.mark.parametrize("kernel", ["reference", "cpu"])
@pytest.mark.parametrize("conj,geometry", list(itertools.product([False, True], GEOMETRIES)))
def test_gradcheck_all_inputs(kernel, conj, geometry):
    n, start, length, Lu, Lk = geometry
    f64 = dict(dtype=torch.float64, requires_grad=True)
    u, k = torch.randn(2, 3, Lu, **f64), torch.randn(3, Lk, **f64)
    pre, post = torch.randn(2, 3, Lu, **f64), torch.randn(3, 1, **f64)
    D = torch.randn(3, 1, **f64) if length == Lu else None

    def f(u, k, pre, post, *D):
        return op(u, k, D[0] if D else None, pre, post, n, start, length, 1.5, 0.0, conj, torch.float64, kernel)

    assert torch.autograd.gradcheck(f, (u, k, pre, post) + ((D,) if D is not None else ()))


def masked_kernel(k, n, bins):
    """FrequencySparse's definition in plain torch: the kernel whose spectrum keeps bins [0, bins)."""
    return torch.fft.irfft(torch.fft.rfft(k, n=n)[..., :bins], n=n)


@pytest.mark.parametrize("kernel", ["reference", "cpu"])
@pytest.mark.parametrize("conj", [False, True])
@pytest.mark.parametrize("geometry,bins", [((16, 0, 8, 8, 8), 3), ((8, 3, 8, 8, 8), 1), ((6, 2, 5, 8, 9), 2),
                                           ((16, 5, 8, 8, 4), 9), ((16, 0, 8, 8, 8), 100)])
def test_spectrum_bins_is_the_masked_kernel(kernel, conj, geometry, bins):
    n, start, length, Lu, Lk = geometry
    f64 = dict(dtype=torch.float64, requires_grad=True)
    u, k = torch.randn(2, 3, Lu, **f64), torch.randn(3, Lk, **f64)
    got = op(u, k, None, None, None, n, start, length, 1.5, 0.0, conj, torch.float64, kernel, spectrum_bins=bins)
    want = op(u, masked_kernel(k, n, bins), None, None, None, n, start, length, 1.5, 0.0, conj, torch.float64,
              "reference")
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (u, k), g), torch.autograd.grad(want, (u, k), g)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda u, k: op(u, k, None, None, None, n, start, length, 1.5, 0.0, conj, torch.float64, kernel,
                        spectrum_bins=bins), (u, k))


def test_gradients_only_where_required():
    u = torch.randn(2, 3, 8, requires_grad=True)
    k = torch.randn(3, 8)
    y = op(u, k, None, None, None, 16, 0, 8, 1.0, 0.0, False, torch.float32, "cpu")
    y.sum().backward()
    assert u.grad is not None and k.grad is None


@pytest.mark.parametrize("args", [
    (torch.randn(2, 3, 8), torch.randn(3, 8), torch.randn(3, 1), None, None, 16, 0, 8),
    (torch.randn(2, 3, 8), torch.randn(3, 8), None, torch.randn(2, 3, 8), torch.randn(2, 3, 5), 8, 3, 5),
])
def test_opcheck(args):
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    opcheck(op, args + (1.0, 0.0, False, torch.float32, "cpu"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_fp32(dtype):
    u, k = torch.randn(2, 3, 64).to(dtype), torch.randn(3, 64).to(dtype)
    got = op(u, k, None, None, None, 128, 0, 64, 1.0, 0.0, False, dtype, "cpu")
    exact = fft_conv_reference(u.double(), k.double(), None, None, None, ConvParams(128, 0, 64))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), exact.to(dtype).double(), rtol=0, atol=2 * exact.abs().max().item() * torch.finfo(dtype).eps)


def test_non_contiguous_and_expanded_inputs():
    base = torch.randn(3, 2, 16)
    u = base.transpose(0, 1)  # (2, 3, 16) non-contiguous
    k = torch.randn(1, 16).expand(3, 16)  # expanded
    got = op(u, k, None, None, None, 32, 0, 16, 1.0, 0.0, False, torch.float32, "cpu")
    want = op(u.contiguous(), k.contiguous(), None, None, None, 32, 0, 16, 1.0, 0.0, False, torch.float32, "reference")
    torch.testing.assert_close(got, want)
    assert got.is_contiguous()


@pytest.mark.parametrize("kernel", ["reference", "cpu"])
def test_empty_batch_and_unit_length(kernel):
    empty = op(torch.randn(0, 3, 8), torch.randn(3, 8), None, None, None, 16, 0, 8, 1.0, 0.0, False, torch.float32, kernel)
    assert empty.shape == (0, 3, 8)
    u, k = torch.randn(2, 3, 1), torch.randn(3, 1)
    one = op(u, k, None, None, None, 2, 0, 1, 1.0, 0.0, False, torch.float32, kernel)
    torch.testing.assert_close(one, u * k)


@pytest.mark.parametrize("bad, message", [
    (dict(u=torch.randint(0, 4, (2, 8))), "real floating"),
    (dict(k=torch.randn(8, dtype=torch.complex64)), "real floating"),
    (dict(n=0), "FFT size"),
    (dict(start=16), "window start"),
    (dict(length=17), "window length"),
    (dict(bins=-1), "spectrum_bins"),
    (dict(D=torch.randn(5, 2, 8)), "broadcast"),
    (dict(kernel="nonsense"), "unknown kernel"),
])
def test_bad_arguments_raise_clear_errors(bad, message):
    args = dict(u=torch.randn(2, 8), k=torch.randn(8), D=None, n=16, start=0, length=8, kernel="cpu", bins=0)
    args.update(bad)
    with pytest.raises(Exception, match=message):
        op(args["u"], args["k"], args["D"], None, None, args["n"], args["start"], args["length"], 1.0, 0.0, False,
           torch.float32, args["kernel"], spectrum_bins=args["bins"])
