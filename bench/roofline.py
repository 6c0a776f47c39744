"""A roofline model of every Triton plan beside eager's torch.fft, in FlashFFTConv's setting.

Gated causal convolution, fp16 inputs and output, n = 2L, B = 64, H = 768 on an H100 SXM
(3.35 TB/s HBM, ~990 TFLOP/s dense fp16 tensor cores).  Per output sample:

- HBM bytes.  convfuse: u, the two gates and the output in fp16 (8 B), the kernel spectrum
  (fp32 complex, n values per kernel row) read once per row pair and shared by the B rows of a
  channel through L2 (counted at 8 * n / (L * B) B), and for the outer plans the complex buffer
  between launches, in fp16 for these fp16 calls (launch.outer_buffer_dtype; fp32 before): each
  launch that writes or reads it moves 4 B (fp16) or 8 B (fp32) per complex sample per pair of rows,
  i.e. 4 or 8 B per output sample per access (a pair's n samples over its 2 L outputs).  The
  columns "fp32-buffer B/sample" and "saved B/sample" give the traffic the fp32 buffer had.  Eager: the
  kernels torch runs for the same function in fp32 (casts, pre-gate, rfft, product, irfft and a
  copy of its input, slice, skip term, post-gate, cast), about 136 B, plus two more passes of each
  transform through memory above 64K (cuFFT's large sizes run in several passes).
- dot FLOPs: 2 * 4 real dots per complex matmul over every stage the plan runs (causal halves
  skipped: as N1/2-row dots where N1 / 2 >= 16, with the real and imaginary planes stacked into
  one dot dimension at N1 = 16, i.e. 256 and 4096, plan.stacked_skip; the outer plans' passes
  skip where N0 / 2 >= 16), per pair of rows, divided by the pair's 2 L output samples.
- predicted ratio: eager's bytes / BW over max(convfuse bytes / BW, FLOPs / peak): an upper bound
  (no latency, no launch overhead, perfect overlap, tensor cores at their dense peak; the kernels
  compile to mma.sync, which reaches a fraction of it on Hopper).

    python bench/roofline.py            # writes bench/results/roofline.md
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BW = 3.35e12
PEAK = 990e12
B = 64
FLASHFFTCONV = {256: 5.64, 1024: 7.93, 4096: 6.64, 8192: 5.42, 16384: 2.45, 32768: 3.22, 1 << 20: 1.74,
                1 << 21: 1.37, 1 << 22: 1.30}
EAGER_BYTES = 136.0


def eager_bytes(n: int) -> float:
    # two more passes (read + write, 8 B complex per sample of 2L... = 16 B per output sample) per
    # transform beyond 64K, where cuFFT splits a transform into several kernels
    return EAGER_BYTES + (2 * 2 * 16.0 if n > 65536 else 0.0)


def plan_row(n: int) -> dict:
    from convfuse.backends.triton_monarch import fused3, select
    from convfuse.backends.triton_monarch.plan import FACTORS, OUTER, stacked_skip

    L = n // 2
    io = 8.0 + 8.0 * n / (L * B)  # fp16 u, gates, out + the spectrum, shared through L2 by B rows
    if n in FACTORS:
        n1, n2 = FACTORS[n]
        half, stacked = n1 // 2 >= 16 or stacked_skip(n1), stacked_skip(n1)
        rin = rout = n1 // 2 if half else n1
        macs = 4 * n * (rin + 2 * n2 + rout)
        kind, radices, launches, buffer, buffer32 = "fused (one kernel)", f"{n1}x{n2}", 1, 0.0, 0.0
    elif n in select.THREE_LEVEL_SIZES:
        n1, n2, n3 = fused3.FACTORS3[n]
        half, stacked = n1 // 2 >= 16 or stacked_skip(n1), stacked_skip(n1)
        rin = rout = n1 // 2 if half else n1
        macs = 4 * n * (rin + 2 * n2 + 2 * n3 + rout)
        kind, radices, launches, buffer, buffer32 = "three-level (one kernel)", f"{n1}x{n2}x{n3}", 1, 0.0, 0.0
    else:
        n0, n0b, m = OUTER[n]
        i1, i2 = FACTORS[m]
        half, stacked = n0 // 2 >= 16, False
        # outer forward (N0 rows, half the inputs), middle levels, inner fused (complex, no skip), outer inverse
        macs = 4 * n * ((n0 // 2 if half else n0) + (2 * n0b if n0b > 1 else 0) + (i1 + 2 * i2 + i1)
                        + (n0 // 2 if half else n0))
        levels = 2 if n0b > 1 else 1
        launches = 3 + 2 * (levels - 1)
        # the buffer (pairs, 2, N0, m): written by the first launch, read and written by each middle
        # one, read by the last; a complex sample per pair is 4 B in fp16 (8 B in fp32), over the
        # pair's 2L = n output samples: 4 (8) B per output sample per access
        accesses = 2 + 2 * (launches - 2)
        buffer, buffer32 = 4.0 * accesses, 8.0 * accesses
        kind = f"outer ({launches} launches)"
        radices = f"{n0}x{n0b}x{i1}x{i2}" if n0b > 1 else f"{n0}x{i1}x{i2}"
    flops = 2.0 * macs / (2 * L)
    conv_bytes = io + buffer
    t_conv = max(conv_bytes / BW, flops / PEAK)
    ratio = eager_bytes(n) / BW / t_conv
    return {"n": n, "plan": kind, "radices": radices, "causal skip": ("yes (planes stacked: N1/2 = 8)" if stacked else "yes") if half else "no (N0/2 < 16)",
            "HBM B/sample": conv_bytes, "fp32-buffer B/sample": io + buffer32, "saved B/sample": buffer32 - buffer,
            "eager B/sample": eager_bytes(n), "dot FLOP/sample": flops,
            "bound": "memory" if conv_bytes / BW >= flops / PEAK else "compute",
            "predicted vs eager": ratio, "FlashFFTConv H100": FLASHFFTCONV.get(n)}


def main() -> int:
    from convfuse.backends.triton_monarch.plan import PLAN_SIZES

    rows = [plan_row(n) for n in PLAN_SIZES]
    cols = list(rows[0])
    lines = [__doc__.split("\n\n")[0].replace('"""', ""), "",
             "Model and assumptions: `bench/roofline.py` (its docstring). Measured numbers replace these once "
             "`bench/gpu_check.sh` has run on a GPU (`bench/results/gpu-<device>.jsonl`).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = ["-" if v is None else f"{v:.2f}x" if k in ("predicted vs eager", "FlashFFTConv H100") else
                 f"{v:.1f}" if isinstance(v, float) else str(v) for k, v in r.items()]
        lines.append("| " + " | ".join(cells) + " |")
    out = ROOT / "bench" / "results" / "roofline.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
