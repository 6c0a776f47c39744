"""FFT-convolution spellings from published models, and near misses that are not convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hyena_fftconv(u, k, D):
    # Hyena / safari: kernel spectrum / n, irfft norm="forward", skip u * D, cast back.
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]
    out = y + u * D.unsqueeze(-1)
    return out.to(dtype=u.dtype)


def hyena_gated(u, k, D, gate):
    return hyena_fftconv(u, k, D) * gate


def s4_fftconv(u, k):
    # S4 FFTConv: default norms, no explicit scale, n = L + K, einsum multiply.
    L, K = u.size(-1), k.size(-1)
    k_f = torch.fft.rfft(k, n=L + K)
    u_f = torch.fft.rfft(u, n=L + K)
    y_f = torch.einsum("bhl,hl->bhl", u_f, k_f)
    return torch.fft.irfft(y_f, n=L + K)[..., :L]


def s4_channels(u, k):
    # S4 with C output channels: 'bhl,chl->bchl', n = 2L.
    L = u.size(-1)
    u_f = torch.fft.rfft(u, n=2 * L)
    k_f = torch.fft.rfft(k, n=2 * L)
    y = torch.fft.irfft(torch.einsum("bhl,chl->bchl", u_f, k_f), n=2 * L)[..., :L]
    return y


def s4_mul(u, k):
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)
    return y[..., :L]


def channels_last_conv(x, k):
    # (B, L, H) with the convolution along dim=-2.
    L = x.shape[-2]
    X = torch.fft.rfft(x, n=2 * L, dim=-2)
    Kf = torch.fft.rfft(k, n=2 * L, dim=-2)
    return torch.fft.irfft(X * Kf, n=2 * L, dim=-2)[:, :L, :]


def circular_conv(u, k):
    return torch.fft.irfft(torch.fft.rfft(u) * torch.fft.rfft(k), n=u.shape[-1])


def ortho_conv(u, k):
    L = u.shape[-1]
    U = torch.fft.rfft(u, n=2 * L, norm="ortho")
    Kf = torch.fft.rfft(k, n=2 * L, norm="ortho")
    return torch.fft.irfft(U * Kf, n=2 * L, norm="ortho")[..., :L] * 3.0


# ---- near misses: look like FFT convolutions, are not ---------------------------------------


def real_mask_filter(u, mask):
    # A frequency-domain filter: the spectrum times a real tensor that is no signal's transform.
    L = u.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * mask, n=2 * L)[..., :L]


def three_spectra(u, k):
    L = u.shape[-1]
    U, Kf = torch.fft.rfft(u, n=2 * L), torch.fft.rfft(k, n=2 * L)
    return torch.fft.irfft(U * Kf * U, n=2 * L)[..., :L]


def mismatched_sizes(u, k):
    L = u.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L + 2)[..., : L + 1], n=2 * L)


def kernel_smoothing(k):
    # Smoothing a kernel in frequency: an irfft of one spectrum.
    L = k.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(k) * 0.5, n=L)


def nonlinear_spectral(u, k):
    # A spectral MLP: a nonlinearity between the transforms.
    L = u.shape[-1]
    U = torch.fft.rfft(u, n=2 * L)
    U = torch.complex(F.relu(U.real), U.imag)
    return torch.fft.irfft(U * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]


def cumulative_over_frequency(u, k):
    L = u.shape[-1]
    P = torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L)
    return torch.fft.irfft(torch.cumsum(P, dim=-1), n=2 * L)[..., :L]


def odd_length_without_n(u, k):
    # irfft without n returns 2*(bins-1) = L-1 samples for odd L: not the forward size.
    return torch.fft.irfft(torch.fft.rfft(u) * torch.fft.rfft(k))


def contracting_einsum(u, k):
    # sums over frequency (a contraction over channels, 'bhl,hl->bl', is a channel-mixing
    # convolution and rewritten: tests/test_mixing.py)
    L = u.shape[-1]
    y = torch.einsum("bhl,hl->bh", torch.fft.rfft(u, n=2 * L), torch.fft.rfft(k, n=2 * L))
    return torch.fft.irfft(y.unsqueeze(-1).expand(-1, -1, L + 1), n=2 * L)[..., :L]


# ---- wider families ------------------------------------------------------------------------


def one_sided_half_of_fft(u, k, gate):
    # A gated long conv taking the one-sided half of a full complex fft of its real input.
    L = u.shape[-1]
    n = 2 * L
    U = torch.fft.fft(u, n=n)[..., : n // 2 + 1]
    y = torch.fft.irfft(U * torch.fft.rfft(k, n=n), n=n)[..., :L]
    return y * gate


def full_spectra_real_part(u, k):
    L = u.shape[-1]
    return torch.fft.ifft(torch.fft.fft(u, n=2 * L) * torch.fft.fft(k, n=2 * L)).real[..., :L]


def in_place_product(u, k):
    L = u.shape[-1]
    U = torch.fft.rfft(u, n=2 * L)
    U *= torch.fft.rfft(k, n=2 * L)
    return torch.fft.irfft(U, n=2 * L)[..., :L]


def in_place_method_product(u, k):
    L = u.shape[-1]
    U = torch.fft.rfft(u, n=2 * L)
    U.mul_(torch.fft.rfft(k, n=2 * L))
    return torch.fft.irfft(U, n=2 * L)[..., :L]


def ema_correlation(u, k):
    # An EMA/decay written as a correlation with a re-indexed output (roll, then a window).
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L).conj(), n=2 * L)
    return torch.roll(y, shifts=L - 1, dims=-1)[..., :L]


def arange_window(u, k):
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)
    return y.index_select(-1, torch.arange(L // 2, L // 2 + L))


def padded_input_offset(u, k):
    # Non-causal: pad the input on the left and take an offset window (a centred kernel).
    L, K = u.shape[-1], k.shape[-1]
    up = F.pad(u, (K // 2, 0))
    n = L + K
    y = torch.fft.irfft(torch.fft.rfft(up, n=2 * n) * torch.fft.rfft(k, n=2 * n), n=2 * n)
    return y[..., K // 2 + K // 2 : K // 2 + K // 2 + L]


def bidirectional_sum_of_spectra(u, k_fwd, k_bwd):
    # Bidirectional: K_fwd + conj(K_bwd), a causal and an anti-causal kernel in one.
    L = u.shape[-1]
    n = 2 * L
    Kf = torch.fft.rfft(k_fwd, n=n) + torch.fft.rfft(k_bwd, n=n).conj()
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * Kf, n=n)[..., :L]


def bidirectional_pad_flip(u, k_fwd, k_bwd, D):
    # M2-style: a 2L kernel built from pad + flip, skip term, and gates.
    L = u.shape[-1]
    k = F.pad(k_fwd, (0, L)) + F.pad(k_bwd.flip(-1), (L, 0))
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., L - 1 : 2 * L - 1]
    return y + u * D.unsqueeze(-1)


def s4_einsum_skip(u, k, D):
    # S4 with channels: the skip term as an einsum too.
    L = u.size(-1)
    y = torch.fft.irfft(torch.einsum("bhl,chl->bchl", torch.fft.rfft(u, n=2 * L), torch.fft.rfft(k, n=2 * L)),
                        n=2 * L)[..., :L]
    return y + torch.einsum("bhl,ch->bchl", u, D)


def pre_gated(x, v, k, D):
    # H3/Hyena: the conv input is a product (gate before the conv) also used by the skip.
    u = x * v
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L) / (2 * L), n=2 * L, norm="forward")
    return y[..., :L] + u * D.unsqueeze(-1)


def mutated_between(u, k):
    # Near miss: u is written in place after its transform; a fused op would read the new u.
    L = u.shape[-1]
    U = torch.fft.rfft(u, n=2 * L)
    u.mul_(2)
    return torch.fft.irfft(U * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]


class SpectrumParameterConv(torch.nn.Module):
    """A kernel given directly as its spectrum: a complex parameter (view_as_complex of a real one)."""

    def __init__(self, H=4, L=32):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(H, L + 1, 2) * 0.1)  # one-sided bins of n = 2L

    def forward(self, u):
        L = u.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.view_as_complex(self.w), n=2 * L)
        return y[..., :L]


def conv2d_ortho(x, k):
    # A 2-D circular convolution over (H, W) of a channels-last map, norm="ortho" on all three.
    H, W = x.shape[1], x.shape[2]
    X = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
    Kf = torch.fft.rfft2(k, dim=(0, 1), norm="ortho")
    return torch.fft.irfft2(X * Kf, s=(H, W), dim=(1, 2), norm="ortho")


def conv2d_magnitude_filter(x, k):
    # Near miss: the kernel spectrum's magnitude (a nonlinearity) is no transform of a signal.
    X = torch.fft.rfft2(x, dim=(1, 2))
    Kf = torch.fft.rfft2(k, dim=(0, 1)).abs()
    return torch.fft.irfft2(X * Kf, s=(x.shape[1], x.shape[2]), dim=(1, 2))


def distributed_products(u, k1, k2):
    # U * K1 - U * (0.5 K2): one input, a summed kernel, written as a sum of products.
    L = u.shape[-1]
    U = torch.fft.rfft(u, n=2 * L)
    Y = U * torch.fft.rfft(k1, n=2 * L) - 2 * (U * (0.5 * torch.fft.rfft(k2, n=2 * L)))
    return torch.fft.irfft(Y, n=2 * L)[..., :L]


def nested_scaled_sum(u, k1, k2, k3):
    # (2 (K1 + K2)) + K3: factors on an inner sum apply to each of its terms.
    L = u.shape[-1]
    Kf = 2 * (torch.fft.rfft(k1, n=2 * L) + torch.fft.rfft(k2, n=2 * L)) + torch.fft.rfft(k3, n=2 * L)
    return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * Kf, n=2 * L)[..., :L]


def in_place_product_after_scale(u, k):
    L = u.shape[-1]
    U = torch.fft.rfft(u, n=2 * L) / 3.0
    U.mul_(torch.fft.rfft(k, n=2 * L))
    return torch.fft.irfft(U, n=2 * L)[..., :L]
