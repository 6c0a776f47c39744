"""Long-convolution layers written the way their published models write them.

Each layer computes its long convolution as an FFT convolution in its own spelling; convfuse
must find every one, prove it, and run it fused. ``MODELS`` maps a name to a function that
returns ``(model, example_inputs)``: `convfuse report examples/models.py:hyena_dna` works on
each, and tests/test_examples.py compiles them all.

    python examples/models.py        # the report for every model
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.hyena import HyenaLM, fftconv  # noqa: E402


class HyenaDNAConv(nn.Module):
    """HyenaDNA's layout: heads and blocks as extra dims, (B, heads, blocks, H, L), one filter per H."""

    def __init__(self, d: int = 8, L: int = 64):
        super().__init__()
        self.k = nn.Parameter(torch.randn(d, L) / L)
        self.D = nn.Parameter(torch.randn(d))

    def forward(self, u):
        return fftconv(u, self.k, self.D)


class S4DKernel(nn.Module):
    """A diagonal state-space kernel: k[h, l] = sum_n C[h, n] exp(-a[h, n] l dt) cos(w[h, n] l dt)."""

    def __init__(self, d: int, N: int = 8):
        super().__init__()
        self.log_dt = nn.Parameter(torch.linspace(math.log(1e-3), math.log(1e-1), d))
        self.log_a = nn.Parameter(torch.log(0.5 * torch.ones(d, N)))
        self.w = nn.Parameter(math.pi * torch.arange(N).float().repeat(d, 1))
        self.C = nn.Parameter(torch.randn(d, N) / N)

    def forward(self, L: int):
        t = torch.arange(L, device=self.C.device).float() * self.log_dt.exp()[:, None]  # (H, L)
        decay = torch.exp(-self.log_a.exp()[..., None] * t[:, None, :])  # (H, N, L)
        return torch.einsum("hn,hnl->hl", self.C, decay * torch.cos(self.w[..., None] * t[:, None, :]))


class S4DConv(nn.Module):
    """S4's FFTConv: default norms, einsum product, n = L + K (the kernel may be shorter than L)."""

    def __init__(self, d: int = 8, kernel_len: int | None = None):
        super().__init__()
        self.kernel = S4DKernel(d)
        self.kernel_len = kernel_len
        self.D = nn.Parameter(torch.randn(d))

    def forward(self, u):  # (B, H, L)
        L = u.size(-1)
        K = self.kernel_len or L
        k = self.kernel(K)
        n = L + K
        k_f = torch.fft.rfft(k, n=n)
        u_f = torch.fft.rfft(u, n=n)
        y = torch.fft.irfft(torch.einsum("bhl,hl->bhl", u_f, k_f), n=n)[..., :L]
        return F.gelu(y + u * self.D.unsqueeze(-1))


class M2BidirectionalConv(nn.Module):
    """M2-BERT style: a bidirectional (non-causal) kernel of length 2L from pad + flip, with gates."""

    def __init__(self, d: int = 8, L: int = 64):
        super().__init__()
        self.k_fwd = nn.Parameter(torch.randn(d, L) / L)
        self.k_rev = nn.Parameter(torch.randn(d, L) / L)
        self.D = nn.Parameter(torch.randn(d))
        self.proj = nn.Linear(d, 3 * d)

    def forward(self, x):  # (B, L, H)
        L = x.shape[1]
        x1, x2, v = self.proj(x).transpose(1, 2).chunk(3, dim=1)
        u = x1 * v
        k = F.pad(self.k_fwd[:, :L], (0, L)) + F.pad(self.k_rev[:, :L].flip(-1), (L, 0))
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
        y = (y + u * self.D.unsqueeze(-1)) * x2
        return y.transpose(1, 2)


class H3Conv(nn.Module):
    """H3: a shift SSM (a short learned shift kernel) and a diagonal SSM, both FFT convolutions;
    the second carries its 1/n on the input's spectrum."""

    def __init__(self, d: int = 8, shift: int = 4):
        super().__init__()
        self.shift_k = nn.Parameter(torch.randn(d, shift))
        self.diag = S4DKernel(d)
        self.D = nn.Parameter(torch.randn(d))
        self.proj = nn.Linear(d, 3 * d)

    def forward(self, x):  # (B, L, H)
        L = x.shape[1]
        q, k, v = self.proj(x).transpose(1, 2).chunk(3, dim=1)
        n = 2 * L
        shifted = torch.fft.irfft(torch.fft.rfft(k, n=n) * torch.fft.rfft(self.shift_k, n=n), n=n)[..., :L]
        kv = shifted * v
        u_f = torch.fft.rfft(kv, n=n) / n
        y = torch.fft.irfft(u_f * torch.fft.rfft(self.diag(L), n=n), n=n, norm="forward")[..., :L]
        y = y + kv * self.D.unsqueeze(-1)
        return (q * y).transpose(1, 2)


class SGConv(nn.Module):
    """SGConv: a kernel made of upsampled sub-kernels with decaying weights, convolved via FFT."""

    def __init__(self, d: int = 8, L: int = 64, base: int = 8):
        super().__init__()
        scales = max(1, int(math.log2(L / base)) + 1)
        self.subkernels = nn.ParameterList(nn.Parameter(torch.randn(d, base)) for _ in range(scales))
        self.decay = 0.5

    def kernel(self, L: int):
        parts = [F.interpolate(k[None], scale_factor=2**i, mode="linear")[0] * self.decay**i
                 for i, k in enumerate(self.subkernels)]
        return torch.cat(parts, dim=-1)[..., :L]

    def forward(self, u):  # (B, H, L)
        L = u.shape[-1]
        k = self.kernel(L)
        k = k / k.norm(dim=-1, keepdim=True)
        return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]


class ShortKernelLongConv(nn.Module):
    """A long convolution whose kernel (K taps) is much shorter than the sequence: n = L + K."""

    def __init__(self, d: int = 8, taps: int = 16):
        super().__init__()
        self.k = nn.Parameter(torch.randn(d, taps) / taps)

    def forward(self, u):
        L, K = u.shape[-1], self.k.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(u, n=L + K) * torch.fft.rfft(self.k, n=L + K), n=L + K)
        return y[..., :L]


class FullFFTGatedConv(nn.Module):
    """A gated long conv that takes the one-sided half of a full complex fft of its real input."""

    def __init__(self, d: int = 8, L: int = 64):
        super().__init__()
        self.k = nn.Parameter(torch.randn(d, L) / L)
        self.gate = nn.Linear(d, d)

    def forward(self, u):  # (B, H, L)
        L = u.shape[-1]
        n = 2 * L
        U = torch.fft.fft(u, n=n)[..., : n // 2 + 1]
        y = torch.fft.irfft(U * torch.fft.rfft(self.k, n=n), n=n)[..., :L]
        return y * torch.sigmoid(self.gate(u.transpose(1, 2))).transpose(1, 2)


class ChannelsLastConv(nn.Module):
    """Convolution along dim=-2 of a (B, L, H) tensor, the kernel stored as (L, H)."""

    def __init__(self, d: int = 8, L: int = 64):
        super().__init__()
        self.k = nn.Parameter(torch.randn(L, d) / L)

    def forward(self, x):  # (B, L, H)
        L = x.shape[-2]
        X = torch.fft.rfft(x, n=2 * L, dim=-2)
        Kf = torch.fft.rfft(self.k[:L], n=2 * L, dim=-2)
        return torch.fft.irfft(X * Kf, n=2 * L, dim=-2)[:, :L, :]


class EMACorrelation(nn.Module):
    """An exponential moving average y[t] = sum_{s<=t} a (1-a)^(t-s) u[s], written as a correlation
    with the time-reversed kernel and a re-indexed (rolled) output."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.logit = nn.Parameter(torch.randn(d))

    def forward(self, u):  # (B, H, L)
        L = u.shape[-1]
        a = torch.sigmoid(self.logit)[:, None]
        k = a * (1 - a) ** torch.arange(L, device=u.device)  # (H, L)
        k_rev = k.flip(-1)
        c = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k_rev, n=2 * L).conj(), n=2 * L)
        return torch.roll(c, shifts=L - 1, dims=-1)[..., :L]


class GFNetFilter(nn.Module):
    """GFNet's global filter: rfft2 over (H, W) of a channels-last map, times a complex weight, irfft2."""

    def __init__(self, dim: int = 8, h: int = 8, w: int = 8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(h, w // 2 + 1, dim, 2) * 0.02)

    def forward(self, x):  # (B, H, W, C)
        B, H, W, C = x.shape
        X = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
        X = X * torch.view_as_complex(self.weight)
        return torch.fft.irfft2(X, s=(H, W), dim=(1, 2), norm="ortho")


def _randn(*shape):
    return torch.randn(*shape)


def hyena():
    torch.manual_seed(0)
    return HyenaLM(d_model=16, n_layers=2, max_len=128), (torch.randint(0, 256, (2, 64)),)


MODELS = {
    "hyena": hyena,
    "hyena_dna": lambda: (HyenaDNAConv(), (_randn(2, 2, 2, 8, 64),)),
    "s4d": lambda: (S4DConv(), (_randn(2, 8, 64),)),
    "s4d_short_kernel": lambda: (S4DConv(kernel_len=16), (_randn(2, 8, 64),)),
    "m2_bidirectional": lambda: (M2BidirectionalConv(), (_randn(2, 64, 8),)),
    "h3": lambda: (H3Conv(), (_randn(2, 64, 8),)),
    "sgconv": lambda: (SGConv(), (_randn(2, 8, 64),)),
    "short_kernel": lambda: (ShortKernelLongConv(), (_randn(2, 8, 64),)),
    "full_fft_gated": lambda: (FullFFTGatedConv(), (_randn(2, 8, 64),)),
    "channels_last": lambda: (ChannelsLastConv(), (_randn(2, 64, 8),)),
    "ema": lambda: (EMACorrelation(), (_randn(2, 8, 64),)),
    "gfnet": lambda: (GFNetFilter(), (_randn(2, 8, 8, 8),)),
}
# One callable per model for `convfuse report examples/models.py:NAME`.
globals().update(MODELS)


if __name__ == "__main__":
    import convfuse

    for name, make in MODELS.items():
        model, inputs = make()
        print(f"== {name}")
        print(convfuse.explain(model, *inputs))
