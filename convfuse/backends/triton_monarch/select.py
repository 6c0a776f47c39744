"""Which Triton plan a call runs: the three-level fused kernel for 4K..32K, else launch.py's plans.

``launch.resolve`` picks the two-level fused kernel (n <= 2048), overlap-save frames for short
kernels, the frequency-sparse column skips, or the outer passes through GPU memory (n >= 4096).
Where it would run the outer passes at a size the three-level kernel covers (fused3.FACTORS3,
``THREE_LEVEL_SIZES``), the call runs that one kernel instead: no complex fp32 buffer between
three launches.  ``resolve``, ``explain`` and ``run`` have launch.py's signatures, and ``run`` is
what ``kernel="triton"`` runs (triton_monarch.IMPLEMENTATION).  A three-level launch the device
cannot fit (Triton's OutOfResources) is remembered per (size, dot dtype, device) and runs the
outer passes from then on.
"""

from __future__ import annotations

from torch import Tensor

from convfuse.backends.triton_monarch import fused3, launch
from convfuse.backends.triton_monarch.plan import CallPlan, OuterPlan
from convfuse.spec import ConvParams

# Sizes at which the three-level kernel replaces the outer passes.  4K and 8K compile for sm90
# without spills (8K: 16 B); 16K and 32K spill 1.7 KB and more per thread into local memory
# (bench/results/triton-sm90-resources.md): bench/gpu_check.py times both paths there.
THREE_LEVEL_SIZES = set(fused3.FACTORS3)
_REFUSED: set[tuple] = set()


def resolve(u: Tensor, k: Tensor, D, pre_gate, post_gate, p: ConvParams):
    r = launch.resolve(u, k, D, pre_gate, post_gate, p)
    if (not isinstance(r, CallPlan) or not isinstance(r.plan, OuterPlan) or r.frames is not None or r.bins
            or r.m not in THREE_LEVEL_SIZES):
        return r
    r3 = fused3.resolve(u, k, D, pre_gate, post_gate, p)
    if isinstance(r3, str) or (r3.m, r3.plan.dot_dtype, u.device) in _REFUSED:
        return r
    return r3


def explain(u, k, D=None, pre_gate=None, post_gate=None, p: ConvParams | None = None) -> str:
    r = resolve(u, k, D, pre_gate, post_gate, p)
    if not isinstance(r, fused3.Call3):
        return launch.explain(u, k, D, pre_gate, post_gate, p)
    skips = [s for s, on in (("causal input", r.half_in), ("causal output", r.half_out)) if on]
    return (f"triton monarch n={r.m} = {'x'.join(map(str, r.plan.radices))} in one kernel"
            + (f" (padded from {p.n})" if r.m != p.n else "")
            + f", dots in {str(r.plan.dot_dtype).removeprefix('torch.')}"
            + (f", skips {' and '.join(skips)}" if skips else ""))


def run(u: Tensor, k: Tensor, D: Tensor | None, pre_gate: Tensor | None, post_gate: Tensor | None,
        p: ConvParams) -> Tensor:
    launch._check_device(u.device)
    r = resolve(u, k, D, pre_gate, post_gate, p)
    if not isinstance(r, fused3.Call3):
        return launch.run(u, k, D, pre_gate, post_gate, p)
    try:
        out = fused3.run(u, k, D, pre_gate, post_gate, p)
    except Exception as e:  # noqa: BLE001  (only the compiler's resource check is caught)
        from triton.runtime.errors import OutOfResources

        if not isinstance(e, OutOfResources):
            raise
        _REFUSED.add((r.m, r.plan.dot_dtype, u.device))
        return launch.run(u, k, D, pre_gate, post_gate, p)
    launch.LAUNCHES[f"n={r.m} {'x'.join(map(str, r.plan.radices))} "
                    f"{str(r.plan.dot_dtype).removeprefix('torch.')} one kernel"] += 1
    return out


__all__ = ["THREE_LEVEL_SIZES", "explain", "resolve", "run"]
