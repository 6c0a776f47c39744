"""A small Hyena language model whose long convolutions convfuse runs as one fused operator.

    python examples/hyena.py            # compile with convfuse on CPU, print the report and speed

The Hyena operator (Poli et al., 2023, "Hyena Hierarchy") projects the input into a
value and gates, filters the value with a long implicit filter (an MLP over
positional features, modulated by a decaying window) through an FFT convolution,
and gates the result.  ``fftconv`` below is written the way the published code
writes it: the kernel spectrum scaled by 1/n, irfft with norm="forward", a skip
term u * D, and a cast back to the input's dtype.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fftconv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    # u: (B, H, L), k: (H, L), D: (H,) -> (B, H, L); causal: FFT size 2L, first L samples
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]
    out = y + u * D.unsqueeze(-1)
    return out.to(dtype=u.dtype)


class PositionalFeatures(nn.Module):
    """Time and sinusoidal features of each position, the implicit filter's input."""

    def __init__(self, emb_dim: int, max_len: int):
        super().__init__()
        t = torch.linspace(0, 1, max_len)[:, None]  # (L, 1)
        bands = (emb_dim - 1) // 2
        freqs = torch.linspace(1e-4, bands - 1, bands)[None]  # (1, bands)
        angle = 2 * math.pi * torch.arange(max_len)[:, None] * freqs / max_len
        self.register_buffer("z", torch.cat([t, torch.cos(angle), torch.sin(angle)], dim=-1))  # (L, emb)

    def forward(self, L: int) -> torch.Tensor:
        return self.z[:L]


class ImplicitFilter(nn.Module):
    """k = MLP(positional features) * exp(-decay * t): a long filter with few parameters."""

    def __init__(self, d_model: int, max_len: int, emb_dim: int = 9, hidden: int = 32):
        super().__init__()
        self.pos = PositionalFeatures(emb_dim, max_len)
        self.mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, d_model))
        self.register_buffer("decay", torch.linspace(0.3, 1.5, d_model).log().neg().exp() * 4)
        self.register_buffer("t", torch.linspace(0, 1, max_len)[None])  # (1, L)

    def forward(self, L: int) -> torch.Tensor:
        k = self.mlp(self.pos(L)).transpose(0, 1)  # (H, L)
        return k * torch.exp(-self.decay[:, None] * self.t[:, :L])


class HyenaOperator(nn.Module):
    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.short_conv = nn.Conv1d(3 * d_model, 3 * d_model, 3, padding=2, groups=3 * d_model)
        self.filter = ImplicitFilter(d_model, max_len)
        self.D = nn.Parameter(torch.randn(d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        z = self.in_proj(x).transpose(1, 2)  # (B, 3H, L)
        z = self.short_conv(z)[..., :L]
        x0, x1, v = z.chunk(3, dim=1)
        y = fftconv(v * x1, self.filter(L), self.D)
        return self.out_proj((y * x0).transpose(1, 2))


class HyenaLM(nn.Module):
    def __init__(self, vocab: int = 256, d_model: int = 64, n_layers: int = 2, max_len: int = 4096):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(HyenaOperator(d_model, max_len) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for norm, layer in zip(self.norms, self.layers):
            x = x + layer(norm(x))
        return self.head(x)


def example(batch: int = 4, seqlen: int = 1024, d_model: int = 64, n_layers: int = 2, seed: int = 0):
    """(model, example_inputs): the target `convfuse report examples/hyena.py:example` reads."""
    torch.manual_seed(seed)
    model = HyenaLM(d_model=d_model, n_layers=n_layers, max_len=max(seqlen, 4096)).eval()
    tokens = torch.randint(0, 256, (batch, seqlen))
    return model, (tokens,)


def median_ms(fns: dict, args, repeats: int) -> dict[str, float]:
    """Median wall time of each function, runs interleaved so machine noise hits all alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(*args)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)

    import convfuse

    model, inputs = example(args.batch, args.seqlen)
    print(convfuse.explain(model, *inputs))

    compiled = torch.compile(model, backend="convfuse")
    with torch.no_grad():
        expected, got = model(*inputs), compiled(*inputs)  # the second call compiles
        err = ((got - expected).abs().max() / expected.abs().max()).item()
        print(f"max relative difference from eager: {err:.2e}")
        t = median_ms({"eager": model, "convfuse": compiled}, inputs, args.repeats)
    print(f"forward, B={args.batch} L={args.seqlen}: eager {t['eager']:.1f} ms, convfuse {t['convfuse']:.1f} ms "
          f"({t['eager'] / t['convfuse']:.2f}x)")

    # The model's other layers (projections, the short depthwise conv, layer norms) are most of
    # its time at this size; the convolution convfuse fuses, alone, at one layer's shapes:
    H = model.layers[0].D.numel()
    conv_args = (torch.randn(args.batch, H, args.seqlen), torch.randn(H, args.seqlen), torch.randn(H))
    fused = torch.compile(fftconv, backend="convfuse")
    with torch.no_grad():
        fused(*conv_args)
        c = median_ms({"eager": fftconv, "convfuse": fused}, conv_args, 4 * args.repeats)  # ms each: cheap
    print(f"one fftconv alone, ({args.batch}, {H}, {args.seqlen}): eager {c['eager']:.2f} ms, "
          f"convfuse {c['convfuse']:.2f} ms ({c['eager'] / c['convfuse']:.2f}x)")
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
