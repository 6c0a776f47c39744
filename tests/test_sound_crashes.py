"""Soundness, crashes: programs eager runs never crash inside torch.compile; an unexpected error
while matching or rewriting one site leaves that site to eager with a reason and a warning."""

from __future__ import annotations

import logging

import pytest
import torch

import convfuse.passes as passes
from conftest import FFT_CONV, Compiled, assert_close_rel
from convfuse.passes import rewrite as rewrite_module
from convfuse.passes.sizes import proven


def causal(u, k, dim=-1):
    L = u.shape[dim]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n, dim=dim) * torch.fft.rfft(k, n=n, dim=dim), n=n, dim=dim)
    return y.narrow(dim, 0, L)


def test_a_transform_axis_passed_as_an_argument_under_dynamic_shapes():
    c = Compiled(causal, dynamic=True)
    for L in (16, 24):
        u, k = torch.randn(2, 3, L), torch.randn(1, 3, L)
        for dim in (-1, 2):
            torch.testing.assert_close(c(u, k, dim), causal(u, k, dim))


def valid_mode(u, k):
    L, K = u.shape[-1], k.shape[-1]
    n = max(L, K) + min(L, K) - 1
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., min(L, K) - 1 : max(L, K)]


def same_mode(u, k):
    L, K = u.shape[-1], k.shape[-1]
    n = max(L + K - 1, 2 * L)
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., (K - 1) // 2 : (K - 1) // 2 + L]


@pytest.mark.parametrize("fn", [valid_mode, same_mode])
def test_sizes_written_with_max_and_min_of_lengths(fn):
    c = Compiled(fn)  # Dynamo turns the lengths dynamic by itself on the second length
    for L, K in ((40, 9), (56, 9), (72, 13)):
        u, k = torch.randn(2, 3, L), torch.randn(3, K)
        assert_close_rel(c(u, k), fn(u, k), 1e-5)


def test_the_prover_handles_max_and_min_without_raising():
    import sympy
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    s0 = env.create_unbacked_symint()
    torch._check(s0 >= 2)
    n = torch.sym_max(s0, 5) + torch.sym_min(s0, 3)
    assert proven(n >= s0) in (True, False)  # any answer, never an exception
    assert not proven(sympy.Symbol("x") > 0)


def test_an_inverse_with_out_is_left_to_eager_with_the_reason():
    def f(u, k, buf):
        torch.fft.irfft(torch.fft.rfft(u, n=32) * torch.fft.rfft(k, n=32), n=32, out=buf)
        return buf[..., :16] * 2

    u, k = torch.randn(2, 3, 16), torch.randn(3, 16)
    c = Compiled(f)
    torch.testing.assert_close(c(u, k, torch.empty(2, 3, 32)), f(u, k, torch.empty(2, 3, 32)))
    site = c.report.sites[0]
    assert not site.rewritten and "out=" in site.reason


def test_a_zero_dimensional_gate():
    def f(u, k, g):
        n = 2 * u.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u * g, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]] * g

    u, k, g = torch.randn(2, 3, 16), torch.randn(3, 16), torch.tensor(1.5)
    c = Compiled(f)
    assert_close_rel(c(u, k, g), f(u, k, g), 1e-5)


def _explode(*args, **kwargs):
    raise RuntimeError("boom in the matcher")


def test_the_net_leaves_a_site_whose_matching_raises_to_eager(monkeypatch, caplog):
    monkeypatch.setattr(passes, "match_site", _explode)
    u, k = torch.randn(2, 3, 16), torch.randn(3, 16)
    c = Compiled(causal)
    with caplog.at_level(logging.WARNING, logger="convfuse"):
        got = c(u, k)
    torch.testing.assert_close(got, causal(u, k))
    site = c.report.sites[0]
    assert not site.rewritten and site.pattern == "internal-error"
    assert "RuntimeError: boom in the matcher" in site.reason
    assert any("internal error" in r.getMessage() for r in caplog.records)


def test_the_net_restores_the_graph_when_a_rewrite_fails_half_way(monkeypatch, caplog):
    real_insert = rewrite_module._insert

    def insert_then_fail(gm, m, *args):
        real_insert(gm, m, *args)  # the operator call and its views are in the graph now
        raise ValueError("boom after inserting")

    monkeypatch.setattr(rewrite_module, "_insert", insert_then_fail)
    u, k = torch.randn(2, 3, 16, requires_grad=True), torch.randn(3, 16)
    c = Compiled(causal)
    with caplog.at_level(logging.WARNING, logger="convfuse"):
        got = c(u, k)
    assert_close_rel(got, causal(u, k), 1e-6)
    site = c.report.sites[0]
    assert not site.rewritten and "ValueError: boom after inserting" in site.reason
    assert not any(node.target is FFT_CONV for gm in c.graphs for node in gm.graph.nodes)
    assert any("internal error" in r.getMessage() for r in caplog.records)


def test_the_net_covers_one_site_and_not_the_next(monkeypatch):
    calls = []
    real = passes.match_site

    def first_fails(site):
        calls.append(site)
        if len(calls) == 1:
            raise KeyError("first")
        return real(site)

    monkeypatch.setattr(passes, "match_site", first_fails)

    def two(u, k):
        return causal(u, k) + causal(u * 2, k)

    u, k = torch.randn(2, 3, 16), torch.randn(3, 16)
    c = Compiled(two)
    assert_close_rel(c(u, k), two(u, k), 1e-5)
    statuses = sorted(s.rewritten for s in c.report.sites)
    assert statuses == [False, True]


class GlobalFilter(torch.nn.Module):
    def __init__(self, H=8):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, H, H // 2 + 1, 2))

    def forward(self, x):
        X = torch.fft.rfft2(x, dim=(-2, -1), norm="ortho")
        return torch.fft.irfft2(X * torch.view_as_complex(self.w), s=x.shape[-2:], dim=(-2, -1), norm="ortho")


def test_gfnet_sizes_taken_from_the_shape_under_dynamic_shapes():
    model = GlobalFilter()
    c = Compiled(model, dynamic=True)
    for B in (2, 5):
        x = torch.randn(B, 3, 8, 8)
        with torch.no_grad():
            assert_close_rel(c(x), model(x), 1e-5)
    assert c.report.sites[0].rewritten, c.report.sites[0].reason


def test_a_spectrum_divided_by_zero_is_left_to_eager():
    def f(u, k):
        return torch.fft.irfft(torch.fft.rfft(u, n=32) * torch.fft.rfft(k, n=32) / 0, n=32)

    u, k = torch.randn(2, 3, 16), torch.randn(3, 16)
    c = Compiled(f)
    torch.testing.assert_close(c(u, k), f(u, k), equal_nan=True)
    assert not c.report.sites[0].rewritten
