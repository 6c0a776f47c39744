"""Forward-mode AD through dual tensors (torch.autograd.forward_ad) on every operator.

The kernels below autograd compute values (the C++ ones from raw pointers: the small-call
table, the kept multi-axis descriptors, the pruned transform), so a dual argument would lose its
tangent silently; ops_autograd.register runs such a call on the operator's plain torch
definition instead.  Each case compares the tangent with the one torch's own ops give for the
program eager runs (nothing imported from the implementations), for every path a call can take."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import convfuse  # noqa: F401  registers the operators

OP = torch.ops.convfuse


def tangent_of(fn, primals, tangents):
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) if t is not None else p for p, t in zip(primals, tangents)]
        out = fn(*duals)
        primal, tangent = fwAD.unpack_dual(out)
    return primal, tangent


def close(got, want, tol=2e-5):
    assert got is not None, "the tangent was dropped"
    assert ((got - want).abs().max() / want.abs().max()).item() < tol


def causal(u, k, L, bins=0):
    n = 2 * L
    K = torch.fft.rfft(k, n=n)
    if bins:
        K = torch.cat([K[..., :bins], torch.zeros_like(K[..., bins:])], dim=-1)
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * K, n=n)[..., :L]


# (B, H, L, bins, kernel): the C++ small-call table, the Python tiles, the pruned transform
# (n = 16384, 512 bins), the reference
CASES_1D = [(1, 4, 64, 0, "cpu"), (4, 64, 1024, 0, "cpu"), (1, 2, 8192, 512, "cpu"), (2, 3, 64, 0, "reference")]


@pytest.mark.parametrize("case", CASES_1D, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-bins{c[3]}-{c[4]}")
@pytest.mark.parametrize("dual", ["u", "k", "both"])
def test_fft_conv_carries_the_tangent(case, dual):
    B, H, L, bins, kernel = case
    gen = torch.Generator().manual_seed(L + bins)
    u, k = torch.randn(B, H, L, generator=gen), torch.randn(H, L, generator=gen)
    tu = torch.randn(u.shape, generator=gen) if dual in ("u", "both") else None
    tk = torch.randn(k.shape, generator=gen) if dual in ("k", "both") else None

    def fused(u, k):
        return OP.fft_conv(u, k, None, None, None, 2 * L, 0, L, 1.0, 0.0, False, torch.float32, kernel, False, bins)

    y, ty = tangent_of(fused, (u, k), (tu, tk))
    want_y, want_t = tangent_of(lambda u, k: causal(u, k, L, bins), (u, k), (tu, tk))
    close(y, want_y)
    close(ty, want_t)


def test_fft_conv_with_gates_and_skip_carries_the_tangent():
    gen = torch.Generator().manual_seed(1)
    L = 128
    u, pre, post = (torch.randn(2, 4, L, generator=gen) for _ in range(3))
    k, D = torch.randn(4, L, generator=gen), torch.randn(4, 1, generator=gen)
    tangents = [torch.randn(t.shape, generator=gen) for t in (u, k, D, pre, post)]

    def fused(u, k, D, pre, post):
        return OP.fft_conv(u, k, D, pre, post, 2 * L, 0, L, 1.0, 0.0, False, torch.float32, "cpu")

    def eager(u, k, D, pre, post):
        ue = u * pre
        return (causal(ue, k, L) + ue * D) * post

    args = (u, k, D, pre, post)
    close(tangent_of(fused, args, tangents)[1], tangent_of(eager, args, tangents)[1])


@pytest.mark.parametrize("window", ["whole-period", "windowed"])
@pytest.mark.parametrize("spectrum", [True, False], ids=["spectrum", "kernel"])
def test_fft_convnd_carries_the_tangent(window, spectrum):
    """The whole-period spectrum call runs on kept descriptors in C++ where they are loaded."""
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(2, 8, 8, 3, generator=gen).movedim(-1, 1)  # channels-last (B, C, H, W) view
    k = (torch.randn(3, 8, 5, dtype=torch.complex64, generator=gen) if spectrum
         else torch.randn(3, 8, 8, generator=gen))
    start, length = ([0, 0], [8, 8]) if window == "whole-period" else ([1, 2], [6, 5])
    tu, tk = torch.randn(u.shape, generator=gen), torch.randn(k.shape, dtype=k.dtype, generator=gen)

    def fused(u, k):
        return OP.fft_convnd(u, k, [8, 8], start, length, 1.0, 0.0, False, torch.float32, False, spectrum)

    def eager(u, k):
        K = k if spectrum else torch.fft.rfftn(k, s=[8, 8], dim=(-2, -1))
        c = torch.fft.irfftn(torch.fft.rfftn(u, s=[8, 8], dim=(-2, -1)) * K, s=[8, 8], dim=(-2, -1))
        c = torch.roll(c, (-start[0], -start[1]), dims=(-2, -1))
        return c[..., :length[0], :length[1]]

    for tangents in ((tu, None), (None, tk), (tu, tk)):
        close(tangent_of(fused, (u, k), tangents)[1], tangent_of(eager, (u, k), tangents)[1])


def test_fft_conv_mix_carries_the_tangent():
    gen = torch.Generator().manual_seed(3)
    L, H = 64, 4
    x, w = torch.randn(2, H, L, generator=gen), torch.randn(H, H, L, generator=gen)
    tx, tw = torch.randn(x.shape, generator=gen), torch.randn(w.shape, generator=gen)

    def fused(x, w):
        return OP.fft_conv_mix(x, w, None, [2 * L], [0], [L], 1.0, 0.0, False, 1, torch.float32)

    def eager(x, w):  # y[o] = sum_i x[i] (*) w[o, i]
        X, W = torch.fft.rfft(x, n=2 * L), torch.fft.rfft(w, n=2 * L)
        return torch.fft.irfft(torch.einsum("bif,oif->bof", X, W), n=2 * L)[..., :L]

    for tangents in ((tx, None), (None, tw), (tx, tw)):
        close(tangent_of(fused, (x, w), tangents)[1], tangent_of(eager, (x, w), tangents)[1])


def test_an_operator_without_a_definition_refuses_a_dual_argument():
    """fft_conv_grad (a backward's operator) has no plain definition to fall back on: a dual
    argument raises, it is never silently dropped."""
    g, ue, k = torch.randn(1, 2, 16), torch.randn(1, 2, 16), torch.randn(2, 16)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="forward-mode AD"):
        OP.fft_conv_grad(fwAD.make_dual(g, torch.randn_like(g)), ue, k, 32, 0, 1.0, 0.0, False, "cpu", True, True)


def test_fft_spectral_mix_carries_the_tangent():
    """The spectral mix keeps custom_op's own Autograd kernel (its weights are a tensor list):
    the same routing sits in front of it (a Fourier neural operator's truncated-mode layer)."""
    gen = torch.Generator().manual_seed(4)
    L, Ci, Co, m = 32, 3, 2, 6
    u = torch.randn(2, Ci, L, generator=gen)
    w = torch.randn(Ci, Co, m, dtype=torch.complex64, generator=gen)
    tu = torch.randn(u.shape, generator=gen)
    tw = torch.randn(w.shape, dtype=w.dtype, generator=gen)

    def fused(u, w):
        return OP.fft_spectral_mix(u, [w], [0], [L], 1.0, 0.0, torch.float32)

    def eager(u, w):  # the FNO layer: the lowest m modes mixed over channels, the rest zero
        X = torch.fft.rfft(u, n=L)
        Y = torch.zeros(2, Co, L // 2 + 1, dtype=X.dtype)
        Y[..., :m] = torch.einsum("bix,iox->box", X[..., :m], w)
        return torch.fft.irfft(Y, n=L)

    for tangents in ((tu, None), (None, tw), (tu, tw)):
        close(tangent_of(fused, (u, w), tangents)[1], tangent_of(eager, (u, w), tangents)[1])
