"""Soundness, writes: nothing that may write what a site reads, between its transforms and its
result, is ever fused over; unrelated writes and known-pure ops in between are.

Each program is compared with eager (outputs and gradients where they exist); a refused site
must name the op that wrote.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import FFT_CONV, Compiled, assert_matches_eager

L, N = 16, 32


def _conv_with(between):
    """irfft(rfft(u) * rfft(k)) with ``between(u, k, U, K)`` run after both transforms."""

    def f(u, k):
        U, K = torch.fft.rfft(u, n=N), torch.fft.rfft(k, n=N)
        between(u, k, U, K)
        return torch.fft.irfft(U * K, n=N)[..., :L]

    return f


_OTHER = torch.zeros(3)  # a global: Dynamo lifts it as another graph input
_elu, _relu6, _hardtanh = nn.ELU(inplace=True), nn.ReLU6(inplace=True), nn.Hardtanh(inplace=True)
_silu, _leaky = nn.SiLU(inplace=True), nn.LeakyReLU(0.2, True)

WRITERS = {
    "leaky_relu positional inplace": lambda u, k, U, K: F.leaky_relu(u, 0.1, True),
    "relu keyword inplace": lambda u, k, U, K: F.relu(k, inplace=True),
    "nn.ELU(inplace=True)": lambda u, k, U, K: _elu(u),
    "nn.ReLU6(inplace=True)": lambda u, k, U, K: _relu6(u),
    "nn.Hardtanh(inplace=True)": lambda u, k, U, K: _hardtanh(k),
    "nn.SiLU(inplace=True)": lambda u, k, U, K: _silu(u),
    "nn.LeakyReLU(0.2, True)": lambda u, k, U, K: _leaky(u),
    "_foreach_mul_": lambda u, k, U, K: torch._foreach_mul_([u, k], 2.0),
    "aten.add_.Tensor": lambda u, k, U, K: torch.ops.aten.add_.Tensor(u, 1.0),
    "torch.relu_": lambda u, k, U, K: torch.relu_(k),
    "setitem through a view": lambda u, k, U, K: u.view(-1).__setitem__(0, 5.0),
    "slice assignment": lambda u, k, U, K: k.__setitem__((Ellipsis, slice(0, 3)), 0.0),
    "out= of another op": lambda u, k, U, K: torch.add(k, 1.0, out=k),
    "copy_ into a transpose": lambda u, k, U, K: u.transpose(-1, -2).copy_(u.transpose(-1, -2) * 2),
    "a write to another input": lambda u, k, U, K: torch.ones(1).add_(0) if False else _OTHER.mul_(1.0),
    "spectrum scaled in place": lambda u, k, U, K: U.mul_(2.0),
    "spectrum zeroed in place": lambda u, k, U, K: K.__setitem__((Ellipsis, slice(4, None)), 0),
    "masked_fill_ on the spectrum": lambda u, k, U, K: K.masked_fill_(K.real > 0, 0),
    "iadd of the input": lambda u, k, U, K: u.__iadd__(1.0),
    "write through .data": lambda u, k, U, K: k.data.mul_(3.0),
    "write through detach()": lambda u, k, U, K: u.detach().add_(1.0),
    "clamp_ of the kernel": lambda u, k, U, K: k.clamp_(-0.1, 0.1),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_write_between_the_transforms_and_the_result_refuses_the_site(name):
    f = _conv_with(WRITERS[name])
    u, k = torch.randn(2, 4, L), torch.randn(4, L)
    c = Compiled(f)
    got, want = c(u.clone(), k.clone()), f(u.clone(), k.clone())
    torch.testing.assert_close(got, want)
    site = c.report.sites[0]
    assert not site.rewritten and c.op_calls() == 0, site
    assert "in place" in site.reason and "left to eager" in site.reason


def test_the_refusal_names_the_op_and_the_tensor():
    f = _conv_with(lambda u, k, U, K: F.leaky_relu(u, 0.1, True))
    c = Compiled(f)
    c(torch.randn(2, 4, L), torch.randn(4, L))
    reason = c.report.sites[0].reason
    assert "F.leaky_relu" in reason and "l_u_" in reason


UNRELATED = {
    "a write to a tensor made in the graph": lambda u, k, U, K, other: (other * 2).add_(1.0),
    "an inplace activation of a tensor made in the graph": lambda u, k, U, K, other: F.relu(other + 1, inplace=True),
    "pure ops in between": lambda u, k, U, K, other: (F.gelu(u) + torch.sin(k).sum(), u.float().mean()),
    "a view of the input, read only": lambda u, k, U, K, other: u.view(-1)[:3] * 2,
}


@pytest.mark.parametrize("name", list(UNRELATED))
def test_writes_elsewhere_and_pure_ops_in_between_do_not_stop_the_rewrite(name):
    between = UNRELATED[name]

    def f(u, k, other):
        U, K = torch.fft.rfft(u, n=N), torch.fft.rfft(k, n=N)
        between(u, k, U, K, other)
        return torch.fft.irfft(U * K, n=N)[..., :L] + other.sum()

    u, k, other = torch.randn(2, 4, L), torch.randn(4, L), torch.randn(3)
    c = Compiled(f)
    torch.testing.assert_close(c(u, k, other.clone()), f(u, k, other.clone()))
    assert c.report.sites[0].rewritten and c.op_calls() == 1, c.report.sites[0].reason


def test_an_inverse_that_reads_the_spectrum_before_a_later_in_place_product_is_not_that_product():
    def f(u, k):
        U, K = torch.fft.rfft(u, n=N), torch.fft.rfft(k, n=N)
        y = torch.fft.irfft(U, n=N)  # U alone: no convolution
        U.mul_(K)
        return y + U.real.sum()

    u, k = torch.randn(2, 4, L), torch.randn(4, L)
    c = Compiled(f)
    torch.testing.assert_close(c(u, k), f(u, k))
    assert c.op_calls() == 0


def test_an_in_place_product_read_after_it_is_still_a_convolution():
    def f(u, k):
        U, K = torch.fft.rfft(u, n=N), torch.fft.rfft(k, n=N)
        U.mul_(K)
        return torch.fft.irfft(U, n=N)[..., :L]

    c = assert_matches_eager(f, (torch.randn(2, 4, L), torch.randn(4, L)), grads=False)
    assert c.op_calls() == 1


def test_a_two_axis_product_written_before_its_inverse_refuses():
    def f(x, k):
        Y = torch.fft.rfft2(x) * torch.fft.rfft2(k)
        Y[..., 4:, :] = 0
        return torch.fft.irfft2(Y, s=x.shape[-2:])

    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 8, 8)
    c = Compiled(f)
    torch.testing.assert_close(c(x, k), f(x, k))
    site = c.report.sites[0]
    assert not site.rewritten and "in place" in site.reason


def test_a_two_axis_input_written_in_between_refuses():
    def f(x, k):
        X, K = torch.fft.rfft2(x), torch.fft.rfft2(k)
        F.relu(x, True)
        return torch.fft.irfft2(X * K, s=x.shape[-2:])

    x, k = torch.randn(2, 3, 8, 8), torch.randn(3, 8, 8)
    c = Compiled(f)
    torch.testing.assert_close(c(x.clone(), k), f(x.clone(), k))
    assert not c.report.sites[0].rewritten


@torch.library.custom_op("convfuse_test::scale_in_place", mutates_args=("x",))
def _scale_in_place(x: torch.Tensor, s: float) -> None:
    x.mul_(s)


@_scale_in_place.register_fake
def _(x, s):
    return None


def test_a_custom_op_that_declares_a_write_refuses_by_its_schema():
    f = _conv_with(lambda u, k, U, K: _scale_in_place(k, 3.0))
    u, k = torch.randn(2, 4, L), torch.randn(4, L)
    c = Compiled(f)
    torch.testing.assert_close(c(u.clone(), k.clone()), f(u.clone(), k.clone()))
    assert not c.report.sites[0].rewritten


@torch._dynamo.allow_in_graph
def _opaque(x):
    return x * 1.0


def test_an_op_whose_effects_are_unknown_refuses_the_site():
    f = _conv_with(lambda u, k, U, K: _opaque(u))
    u, k = torch.randn(2, 4, L), torch.randn(4, L)
    c = Compiled(f)
    torch.testing.assert_close(c(u, k), f(u, k))
    site = c.report.sites[0]
    assert not site.rewritten and "not known to be free of writes" in site.reason


def test_the_rewritten_graph_still_calls_the_operator_for_a_pure_program():
    c = assert_matches_eager(_conv_with(lambda *a: None), (torch.randn(2, 4, L, requires_grad=True),
                                                           torch.randn(4, L, requires_grad=True)))
    assert any(node.target is FFT_CONV for gm in c.graphs for node in gm.graph.nodes)


def test_inputs_that_share_memory_without_sharing_a_storage():
    # torch.from_numpy(k.numpy()) is k's memory under another storage object.
    def f(u, k, other):
        U, K = torch.fft.rfft(u, n=N), torch.fft.rfft(k, n=N)
        other.mul_(3.0)
        return torch.fft.irfft(U * K, n=N)[..., :L]

    def make():
        torch.manual_seed(3)
        k = torch.randn(4, L)
        return torch.randn(2, 4, L), k, torch.from_numpy(k.numpy())

    want = f(*make())
    c = Compiled(f)
    torch.testing.assert_close(c(*make()), want)
    assert not c.report.sites[0].rewritten


@pytest.mark.parametrize("op", ["sort", "topk", "cummax", "aminmax", "frexp"])
def test_a_tuple_out_that_overwrites_the_kernel_refuses(op):
    calls = {
        "sort": lambda k, o: torch.sort(o, out=(k, torch.empty(k.shape, dtype=torch.long))),
        "topk": lambda k, o: torch.topk(o, L, out=(k, torch.empty(k.shape, dtype=torch.long))),
        "cummax": lambda k, o: torch.cummax(o, -1, out=(k, torch.empty(k.shape, dtype=torch.long))),
        "aminmax": lambda k, o: torch.aminmax(o, dim=-1, keepdim=True, out=(k[:, :1], k[:, 1:2])),
        "frexp": lambda k, o: torch.frexp(o, out=(k, torch.empty(k.shape, dtype=torch.int32))),
    }
    f = _conv_with(lambda u, k, U, K: calls[op](k, k * -1.0))
    u, k = torch.randn(2, 4, L), torch.randn(4, L)
    c = Compiled(f)
    torch.testing.assert_close(c(u.clone(), k.clone()), f(u.clone(), k.clone()))
    assert not c.report.sites[0].rewritten


@pytest.mark.parametrize("call", ["batch_norm", "native_batch_norm", "instance_norm"])
def test_running_statistics_written_by_a_norm_refuse(call):
    def between(u, k, U, K):
        stats = k[:, 0]  # the running mean is a view of the kernel
        x = torch.randn(2, 4, 3)
        if call == "batch_norm":
            torch.batch_norm(x, None, None, stats, torch.ones(4), True, 0.5, 1e-5, False)
        elif call == "native_batch_norm":
            torch.native_batch_norm(x, None, None, stats, torch.ones(4), True, 0.5, 1e-5)
        else:
            torch.instance_norm(x, None, None, stats, torch.ones(4), True, 0.5, 1e-5, False)

    f = _conv_with(between)
    u, k = torch.randn(2, 4, L), torch.randn(4, L)
    c = Compiled(f)
    torch.manual_seed(0)
    got = c(u.clone(), k.clone())
    torch.manual_seed(0)
    torch.testing.assert_close(got, f(u.clone(), k.clone()))
    assert not c.report.sites[0].rewritten
