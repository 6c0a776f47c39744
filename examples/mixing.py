"""Channel-mixing FFT convolutions, written the way published code writes them (our own code in
their style): an FFT conv1d layer for long audio filters, an FFT conv2d layer for large-kernel
vision, and Fourier-neural-operator spectral layers in 1-D and 2-D (neuraloperator's
SpectralConv: complex weights on the lowest modes, einsum into a zero spectrum, corner blocks).

    python examples/mixing.py        # compiles each with convfuse, checks it against eager, prints the report
    convfuse report examples/mixing.py:fno_2d --check     # one of them through the CLI
"""

from __future__ import annotations

import torch
from torch import nn


class FFTConv1d(nn.Module):
    """conv1d(x, weight, bias, padding='same') computed by FFT: C_in -> C_out, long taps.

    torch's conv1d is a cross-correlation: the weight's spectrum is conjugated."""

    def __init__(self, c_in: int, c_out: int, taps: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, taps) / (c_in * taps) ** 0.5)
        self.bias = nn.Parameter(torch.randn(c_out) * 0.1)

    def forward(self, x):  # (B, C_in, L) -> (B, C_out, L)
        L, K = x.shape[-1], self.weight.shape[-1]
        n = L + K - 1
        x_f = torch.fft.rfft(x, n=n)
        w_f = torch.fft.rfft(self.weight, n=n).conj()
        y = torch.fft.irfft(torch.einsum("bcf,ocf->bof", x_f, w_f), n=n)
        # correlation lag t lives at t mod n: 'same' takes lags -(K-1)//2 .. -(K-1)//2 + L - 1
        y = torch.roll(y, (K - 1) // 2, dims=-1)[..., :L]
        return y + self.bias[:, None]


class FFTConv2d(nn.Module):
    """A large-kernel 2-D convolution (C_in -> C_out) by FFT, 'same' output, with bias."""

    def __init__(self, c_in: int, c_out: int, taps: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, taps, taps) / (c_in * taps * taps) ** 0.5)
        self.bias = nn.Parameter(torch.randn(c_out) * 0.1)

    def forward(self, x):  # (B, C_in, H, W) -> (B, C_out, H, W)
        H, W = x.shape[-2:]
        K = self.weight.shape[-1]
        s = (H + K - 1, W + K - 1)
        x_f = torch.fft.rfft2(x, s=s)
        w_f = torch.fft.rfft2(self.weight, s=s)
        y = torch.fft.irfft2(torch.einsum("bchw,ochw->bohw", x_f, w_f), s=s)
        p = (K - 1) // 2
        return y[..., p:p + H, p:p + W] + self.bias[:, None, None]


class SpectralConv1d(nn.Module):
    """FNO-1D spectral layer: the lowest ``modes`` of the input spectrum mixed by complex weights."""

    def __init__(self, c_in: int, c_out: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1 / (c_in * c_out)
        self.weights = nn.Parameter(scale * torch.rand(c_in, c_out, modes, dtype=torch.cfloat))

    def forward(self, x):  # (B, C_in, L) -> (B, C_out, L)
        x_ft = torch.fft.rfft(x)
        out_ft = torch.zeros(x.shape[0], self.weights.shape[1], x.size(-1) // 2 + 1, dtype=torch.cfloat,
                             device=x.device)
        out_ft[:, :, :self.modes] = torch.einsum("bix,iox->box", x_ft[:, :, :self.modes], self.weights)
        return torch.fft.irfft(out_ft, n=x.size(-1))


class SpectralConv2d(nn.Module):
    """FNO-2D spectral layer: two corner blocks of modes (positive and negative first-axis frequencies)."""

    def __init__(self, c_in: int, c_out: int, modes1: int, modes2: int):
        super().__init__()
        self.modes1, self.modes2 = modes1, modes2
        scale = 1 / (c_in * c_out)
        self.weights1 = nn.Parameter(scale * torch.rand(c_in, c_out, modes1, modes2, dtype=torch.cfloat))
        self.weights2 = nn.Parameter(scale * torch.rand(c_in, c_out, modes1, modes2, dtype=torch.cfloat))

    @staticmethod
    def compl_mul2d(a, b):
        return torch.einsum("bixy,ioxy->boxy", a, b)

    def forward(self, x):  # (B, C_in, H, W) -> (B, C_out, H, W)
        m1, m2 = self.modes1, self.modes2
        x_ft = torch.fft.rfft2(x)
        out_ft = torch.zeros(x.shape[0], self.weights1.shape[1], x.size(-2), x.size(-1) // 2 + 1,
                             dtype=torch.cfloat, device=x.device)
        out_ft[:, :, :m1, :m2] = self.compl_mul2d(x_ft[:, :, :m1, :m2], self.weights1)
        out_ft[:, :, -m1:, :m2] = self.compl_mul2d(x_ft[:, :, -m1:, :m2], self.weights2)
        return torch.fft.irfft2(out_ft, s=(x.size(-2), x.size(-1)))


class FNOBlock2d(nn.Module):
    """One FNO block: spectral layer + pointwise linear path + GELU (the spectral layer is the site)."""

    def __init__(self, width: int, modes1: int, modes2: int):
        super().__init__()
        self.spectral = SpectralConv2d(width, width, modes1, modes2)
        self.pointwise = nn.Conv2d(width, width, 1)

    def forward(self, x):
        return nn.functional.gelu(self.spectral(x) + self.pointwise(x))


def examples() -> dict[str, tuple[nn.Module, tuple]]:
    """Name -> (module, example input): the smallest sizes at which convfuse rewrites these on a
    CPU by default (below ~1M transformed samples per call the site stays eager: "no gain at
    this size"), and fast to run."""
    torch.manual_seed(0)
    return {
        "fft-conv1d": (FFTConv1d(16, 16, 129), (torch.randn(4, 16, 4096),)),
        "fft-conv2d": (FFTConv2d(8, 8, 9), (torch.randn(2, 8, 100, 100),)),
        "fno-1d": (SpectralConv1d(32, 32, 16), (torch.randn(8, 32, 2048),)),
        "fno-2d": (FNOBlock2d(32, 12, 12), (torch.randn(4, 32, 64, 64),)),
    }


def fft_conv1d():
    """``convfuse report examples/mixing.py:fft_conv1d``: (model, example inputs)."""
    return examples()["fft-conv1d"]


def fft_conv2d():
    return examples()["fft-conv2d"]


def fno_1d():
    return examples()["fno-1d"]


def fno_2d():
    return examples()["fno-2d"]


def main() -> None:
    import convfuse

    for name, (module, args) in examples().items():
        report = convfuse.explain(module, *args)
        compiled = torch.compile(module, backend="convfuse")
        err = (compiled(*args) - module(*args)).abs().max().item()
        print(f"{name}: max |compiled - eager| = {err:.2e}")
        print(report)


if __name__ == "__main__":
    main()
