"""Partial-kernel speed: a long FFT convolution whose kernel is truncated by a policy.

Default shape (issue 6): B=1, H=64, L=131072, kernel parameter of length L, policy
PartialKernel(length=1024).  Variants, timed interleaved (one call of each per round) and
reported as medians:

  eager exact        the FFT convolution in plain torch (n = 2L)
  eager partial      its definition in plain torch: the same FFT convolution of k[..., :1024]
  conv1d partial     torch's depthwise conv1d with the 1024 taps (a direct-convolution baseline)
  convfuse exact     torch.compile(backend="convfuse"), Exact
  convfuse partial   torch.compile(backend="convfuse", options={"policy": "partial:length=1024"})
  convfuse freq      options={"policy": FrequencySparse(keep=--keep)} (default 0.25): the operator masks
                     the spectrum; on CPU it multiplies only the kept bins, both transforms stay dense

Forward only, under no_grad (inference), fp32, on CPU unless --device says otherwise.
    python bench/policies.py [--L 131072 --H 64 --B 1 --taps 1024 --rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import convfuse


def fftconv(u, k, D):
    L = u.shape[-1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]
    return y + u * D.unsqueeze(-1)


class LongConv(torch.nn.Module):
    def __init__(self, H, L):
        super().__init__()
        t = torch.arange(L, dtype=torch.float32)
        self.k = torch.nn.Parameter(torch.randn(H, L) * torch.exp(-t / 256) / 16)
        self.D = torch.nn.Parameter(torch.randn(H))

    def forward(self, u):
        return fftconv(u, self.k, self.D)


def direct_partial(u, k, D, taps):
    # causal depthwise convolution with the first taps of k (conv1d is a correlation: flip)
    H = u.shape[-2]
    w = k[..., :taps].flip(-1).unsqueeze(1)
    y = F.conv1d(F.pad(u, (taps - 1, 0)), w, groups=H)
    return y + u * D.unsqueeze(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--L", type=int, default=131072)
    ap.add_argument("--taps", type=int, default=1024)
    ap.add_argument("--keep", type=float, default=0.25, help="FrequencySparse(keep=...) for the freq variant")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--inner", default="eager", help="what compiles the rest of the graph (eager, inductor)")
    ap.add_argument("--json", help="write the medians here")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = LongConv(args.H, args.L).to(args.device)
    u = torch.randn(args.B, args.H, args.L, device=args.device)
    policy = convfuse.PartialKernel(length=args.taps)
    exact_c = torch.compile(model, backend="convfuse", options={"inner": args.inner})
    partial_c = torch.compile(model, backend="convfuse", options={"inner": args.inner, "policy": policy})
    freq_c = torch.compile(model, backend="convfuse",
                           options={"inner": args.inner, "policy": convfuse.FrequencySparse(keep=args.keep)})

    variants = {
        "eager exact": lambda: model(u),
        "eager partial": lambda: fftconv(u, model.k[..., : args.taps], model.D),
        "conv1d partial": lambda: direct_partial(u, model.k, model.D, args.taps),
        "convfuse exact": lambda: exact_c(u),
        "convfuse partial": lambda: partial_c(u),
        "convfuse freq": lambda: freq_c(u),
    }
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        reference = fftconv(u, model.k[..., : args.taps], model.D)
        with convfuse.report.collecting() as report:
            out = partial_c(u)  # compiles; warms the kernel-spectrum cache
        exact_c(u)
        with convfuse.report.collecting() as freq_report:
            freq_c(u)
        for fn in variants.values():
            fn()
            fn()
        err = float((out - reference).abs().max() / reference.abs().max())
        for _ in range(args.rounds):
            for name, fn in variants.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["eager exact"]
    site = report.sites[0] if report.sites else None
    print(f"partial-kernel convolution, B={args.B} H={args.H} L={args.L} taps={args.taps}, "
          f"{args.device}, {torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    if site is not None:
        print(f"site: {site.line()}")
    print(f"convfuse partial vs its definition in eager: max rel diff {err:.2e}")
    if freq_report.sites:
        print(f"freq site: {freq_report.sites[0].line()}")
    print(f"{'variant':<18} {'median ms':>10} {'vs eager exact':>15}")
    for name, t in med.items():
        print(f"{name:<18} {t * 1e3:>10.2f} {base / t:>14.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": vars(args), "median_s": med, "speedup_vs_eager_exact": {k: base / v for k, v in med.items()},
                       "max_rel_diff": err}, f, indent=2)


if __name__ == "__main__":
    main()
