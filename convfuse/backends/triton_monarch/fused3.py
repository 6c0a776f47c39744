"""Plans and the launcher of the three-level fused kernel (kernels3.py): 4K..32K in one launch.

``FACTORS3`` follows FlashFFTConv's factorizations: N1 = 32 where it can, so skipping the zero
input half (and the discarded output half) halves the first and last contractions to N1/2 = 16,
the smallest tl.dot a GPU takes.  4096 = 16^3 skips them too: its halves of 8 rows run with the
real and imaginary planes stacked into the dot's K (first stage) or M (last) dimension
(plan.stacked_skip; ``Plan3.can_skip_half`` stays the plain-dot rule the backward reads), except
for the output half below sm90 (see ``resolve``).  ``resolve`` gives the call's plan or why not;
``run`` has the implementation signature; ``select.py`` runs it where launch.py would run the
outer passes.  ``tests/backends/test_triton_fused3.py`` checks it under the interpreter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from convfuse.backends.common import compute_dtype, output_shape
from convfuse.backends.triton_monarch.plan import (
    _dft, check_dot_shape, device_smem, dot_dtype_for, kernel_spectrum, stacked_skip,
)
from convfuse.spec import ConvParams, is_linear

FACTORS3: dict[int, tuple[int, int, int]] = {
    4096: (16, 16, 16), 8192: (32, 16, 16), 16384: (32, 32, 16), 32768: (32, 32, 32),
}
# Warps per plan, from the sm90 compile (bench/results/triton-sm90-resources.md): 4K at 8 warps
# holds its tiles in 190 registers without spills (fp16/bf16); 8K at 8 warps spills 16 B; 16K and
# 32K spill less at 16 warps (128 registers each) than at 8.  Not measured on a GPU yet.
WARPS3: dict[int, int] = {4096: 8, 8192: 8, 16384: 16, 32768: 16}
# Shared memory per block at those warps, as the sm90 compiler reported it, for half (fp16/bf16)
# and fp32 (tf32x3) dots.  A plan is refused where the device has less (consumer GPUs: ~99 KB,
# so 16K in fp32 and 32K run the outer passes there; H100: 227 KB); 32K fp32 is estimated.
SMEM3: dict[tuple[int, str], int] = {
    (4096, "half"): 17408, (4096, "fp32"): 32768, (8192, "half"): 34816, (8192, "fp32"): 69632,
    (16384, "half"): 67584, (16384, "fp32"): 131072, (32768, "half"): 135168, (32768, "fp32"): 270336,
}


@dataclass(frozen=True)
class Plan3:
    n: int
    radices: tuple[int, int, int]
    compute_dtype: torch.dtype
    dot_dtype: torch.dtype
    f1: Tensor
    f2: Tensor
    f3: Tensor
    tw1: Tensor  # (2, N1, N2*N3) W_n^(k1 j')
    t2: Tensor  # (2, N2, N3) W_M^(k2 j3)

    @property
    def can_skip_half(self) -> bool:
        return self.radices[0] // 2 >= 16

    @property
    def input_precision(self) -> str:
        return "ieee" if self.dot_dtype != torch.float32 else "tf32x3"


@functools.lru_cache(maxsize=32)
def plan3(n: int, compute: torch.dtype, dot: torch.dtype, device: torch.device) -> Plan3:
    n1, n2, n3 = FACTORS3[n]
    m = n2 * n3
    for shape in ((n1, m, n1), (n2, n1 * n3, n2), (n2 * n1, n3, n3)):
        check_dot_shape(*shape)
    mat = lambda r: _dft(r, r, r).to(device=device, dtype=dot).contiguous()  # noqa: E731
    return Plan3(n, (n1, n2, n3), compute, dot, mat(n1), mat(n2), mat(n3),
                 tw1=_dft(n1, m, n).to(device=device, dtype=compute).contiguous(),
                 t2=_dft(n2, n3, m).to(device=device, dtype=compute).contiguous())


@dataclass(frozen=True)
class Call3:
    plan: Plan3
    m: int
    half_in: bool
    half_out: bool


def resolve(u: Tensor, k: Tensor, D, pre_gate, post_gate, p: ConvParams) -> Call3 | str:
    if p.sparse_spectrum:
        return "a frequency-sparse spectrum runs the two-level plans"
    dtype = compute_dtype(u, k, D, pre_gate, post_gate)
    if dtype != torch.float32:
        return f"compute dtype {dtype}: the three-level kernel is built for fp32 compute"
    Lue = min(u.shape[-1] if pre_gate is None else max(u.shape[-1], pre_gate.shape[-1]), p.n)
    K = min(k.shape[-1], p.n)
    m = p.n
    if p.n not in FACTORS3:
        if not is_linear(p.n, Lue, K, p.start, p.length) or p.conj_kernel:
            return f"n={p.n} is not a three-level size and the call is not a linear convolution to pad"
        need = max(Lue + K - 1, p.start + p.length)
        m = next((s for s in sorted(FACTORS3) if s >= need), None)
        if m is None or m > p.n and not is_linear(m, Lue, K, p.start, p.length):
            return f"no three-level size for n={p.n}"
    dot = dot_dtype_for(dtype, u.dtype, p.out_dtype or dtype)
    if dot == torch.bfloat16 and u.device.type == "cpu":
        dot = torch.float32  # the interpreter's bf16 tl.dot is wrong
    device = u.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    need = SMEM3[(m, "fp32" if dot == torch.float32 else "half")]
    if need > device_smem(device):
        return (f"n={m}: the three-level kernel needs ~{need // 1024} KB of shared memory, the device has "
                f"{device_smem(device) // 1024} KB")
    plan = plan3(m, dtype, dot, device)
    n1 = plan.radices[0]
    half = plan.can_skip_half or stacked_skip(n1)
    half_in, half_out = half and Lue <= m // 2, half and p.start + p.length <= m // 2
    if stacked_skip(n1) and device.type == "cuda" and torch.cuda.get_device_capability(device) < (9, 0):
        # sm80's ptxas puts the 4K kernel with the stacked last stage at 32 registers and 5.8 KB of
        # spills (1.5 KB with the full stage; bench/results/triton-sm90-resources.md): compute the
        # discarded half there
        half_out = False
    # the halved stages as the kernel runs them (kernels_common._first_stage, _last_stage)
    check_dot_shape(n1, m // n1, n1 // 2 if half_in and not stacked_skip(n1) else n1)
    check_dot_shape(n1 // 2 if half_out and not stacked_skip(n1) else n1, m // n1, n1)
    return Call3(plan, m, half_in, half_out)


def run(u: Tensor, k: Tensor, D: Tensor | None, pre_gate: Tensor | None, post_gate: Tensor | None,
        p: ConvParams) -> Tensor:
    from convfuse.backends.triton_monarch import kernels3
    from convfuse.backends.triton_monarch.launch import _int32_axis, _interpret_enabled, _pairs, _rows, _spectrum_rows

    r = resolve(u, k, D, pre_gate, post_gate, p)
    if isinstance(r, str):
        raise ValueError(f"convfuse: three-level kernel: {r}")
    plan = r.plan
    shape = output_shape(u, k, pre_gate, p.length)
    batch = tuple(shape[:-1])
    out = torch.empty(shape, dtype=p.out_dtype or plan.compute_dtype, device=u.device)
    if out.numel() == 0:
        return out
    Lue = u.shape[-1] if pre_gate is None else max(u.shape[-1], pre_gate.shape[-1])
    if D is not None and Lue != p.length:
        raise ValueError(f"convfuse.fft_conv: a skip term needs the output length ({p.length}) "
                         f"to equal the input length ({Lue})")
    u, pre_gate, D, post_gate = (_int32_axis(t, max(r.m, p.n)) for t in (u, pre_gate, D, post_gate))
    spec = kernel_spectrum(k, p.n, r.m, p.conj_kernel, p.total_scale, plan.compute_dtype, plan.radices)
    per_row = spec.shape[-4:].numel()
    k_rows = (batch, tuple(spec.shape[:-4]) + (per_row,), tuple(spec.stride()[:-4]) + (1,), u.device)
    k_off, _ = _spectrum_rows(*k_rows)
    pairs = _pairs(*k_rows)
    u_off, u_s = _rows(u, batch)
    pre_off, pre_s = _rows(pre_gate, batch) if pre_gate is not None else (u_off, 0)
    d_off, d_s = _rows(D, batch) if D is not None else (u_off, 0)
    post_off, post_s = _rows(post_gate, batch) if post_gate is not None else (u_off, 0)
    interpret = u.device.type == "cpu" or _interpret_enabled()
    n1, n2, n3 = plan.radices
    kernels3.MONARCH_CONV3[interpret][(pairs.shape[0],)](
        pairs, u, u_off, u_s, pre_gate if pre_gate is not None else u, pre_off, pre_s, spec, k_off,
        D if D is not None else u, d_off, d_s, post_gate if post_gate is not None else u, post_off, post_s,
        out, plan.f1, plan.f2, plan.f3, plan.tw1, plan.t2, min(Lue, p.n), Lue, p.start, p.length,
        N1=n1, N2=n2, N3=n3, HALF_IN=r.half_in, HALF_OUT=r.half_out,
        HAS_PRE=pre_gate is not None, HAS_D=D is not None, HAS_POST=post_gate is not None,
        PREC=plan.input_precision, num_warps=WARPS3[r.m])
    return out
