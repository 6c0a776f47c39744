"""Checking a ``Program``: compile it with convfuse (the rest of the graph eager), compare outputs and
gradients with eager (and, where they differ, with fp64), and compare what was rewritten with the
oracle (``Program.is_convolution``, ``Program.expected_skip``). ``reproducer`` is the text block a
mismatch is reported with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from programs_record import Program
from programs_source import build, make_inputs

@dataclass
class Mismatch:
    kind: str  # "numerics" | "rewrite" | "reason" | "source" | "error"
    detail: str
    program: Program
    source: str = ""
    features: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"[{self.kind}] {self.detail}"


def _rel_err(got: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    wide = torch.complex128 if expected.is_complex() else torch.float64  # .double() would drop imaginary parts
    scale = expected.detach().abs().max().double().clamp_min(1e-30).item()
    err = (got.detach().to(wide) - expected.detach().to(wide)).abs().max().item()
    return err, scale


FUSED_OPS = {torch.ops.convfuse.fft_conv.default, torch.ops.convfuse.fft_convnd.default,
             torch.ops.convfuse.fft_conv_mix.default, torch.ops.convfuse.fft_spectral_mix.default}
FP32_EPS = torch.finfo(torch.float32).eps


def fused_calls(compiled) -> int:
    """Calls of the fused operators (fft_conv, fft_convnd for multi-axis convolutions, the mixing
    ones); not the saved copies beside them."""
    return sum(node.target in FUSED_OPS for gm in compiled.graphs for node in gm.graph.nodes)


def compare(bad, what: str, got: torch.Tensor, expected: torch.Tensor, ref, rtol: float) -> None:
    """``got`` within ``rtol`` of the scale of ``expected``; ``ref()`` is the fp64 value, asked for lazily.

    Two refinements, both judged against the fp64 evaluation of the same program:
    - where the exact result is (nearly) zero (a window outside a correlation's support, a gradient
      that vanishes), the scale of ``expected`` is its own rounding noise; the scale used is then at
      least eager's own error / fp32 eps, the magnitude of the terms that cancelled;
    - fp16 programs: eager rounds to fp16 more often than the fused op does (it sums the skip term's
      and the convolution's fp16 gradients of u, which can cancel), so a compiled value no farther
      from fp64 than eager's (plus the bound) is accepted.
    """
    err, scale = _rel_err(got, expected)
    if err <= rtol * scale:
        return
    r = ref()
    err_c, _ = _rel_err(got, r)
    err_e, _ = _rel_err(expected, r)
    natural = max(scale, err_e / FP32_EPS)
    if err <= rtol * natural:
        return
    if expected.dtype == torch.float16 and err_c <= err_e + rtol * scale:
        return
    bad("numerics", f"{what}: max error {err:.3e} > {rtol:g} * {scale:.3e} (from fp64: {err_c:.3e}, "
                    f"eager's: {err_e:.3e})")


def check(p: Program, seed: int = 0) -> list[Mismatch]:
    """Compile ``p`` with convfuse and compare with eager and with the oracle."""
    from conftest import Compiled  # tests/ is on sys.path for pytest and for bench/differential.py

    torch._dynamo.reset()
    fn, src, filename = build(p)
    names, args = make_inputs(p, seed)
    out: list[Mismatch] = []

    def bad(kind, detail):
        out.append(Mismatch(kind, detail, p, src, p.features()))

    eager_args = [a.detach().clone().requires_grad_(True) for a in args]
    comp_args = [a.detach().clone().requires_grad_(True) for a in args]
    expected = fn(*eager_args)
    compiled = Compiled(fn, dynamic=p.dynamic)
    try:
        got = compiled(*comp_args)
    except Exception as exc:  # a crash of the compiled program is a mismatch too
        bad("error", f"compiled call raised {type(exc).__name__}: {str(exc)[:400]}")
        return out
    if got.shape != expected.shape or got.dtype != expected.dtype:
        bad("numerics", f"output {tuple(got.shape)} {got.dtype} != eager {tuple(expected.shape)} {expected.dtype}")
        return out
    g = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed + 1)).to(expected.dtype)
    # fp16 programs: eager rounds to fp16 more often than the fused op does (e.g. it sums the skip
    # term's and the convolution's fp16 gradients of u, which can cancel), so a difference from eager
    # larger than the bound is accepted when the compiled value is no farther from an fp64
    # evaluation of the same program than eager's value is (plus the bound).
    cache: dict = {}

    def reference():  # the program in fp64 (inputs upcast), with gradients, computed once if needed
        if not cache:
            ref_args = [a.detach().double().requires_grad_(True) for a in args]
            r = fn(*ref_args)
            cache["out"] = r.detach()
            cache["grads"] = torch.autograd.grad(r, ref_args, g.double(), allow_unused=True)
        return cache
    compare(bad, "output", got, expected, lambda: reference()["out"], p.rtol)
    try:
        ge = torch.autograd.grad(expected, eager_args, g, allow_unused=True)
        gc = torch.autograd.grad(got, comp_args, g, allow_unused=True)
    except Exception as exc:
        bad("error", f"backward raised {type(exc).__name__}: {str(exc)[:400]}")
        gc = ge = ()
    for i, (nm, a, b) in enumerate(zip(names, gc, ge)):
        if (a is None) != (b is None):
            bad("numerics", f"grad {nm}: None on one side only")
            continue
        if a is None:
            continue
        compare(bad, f"grad {nm}", a, b, lambda i=i: reference()["grads"][i], p.rtol)

    report = compiled.report
    sites = report.sites if report is not None else []
    calls = fused_calls(compiled)
    statuses = [s.status for s in sites]
    if p.expected_skip:
        reasons = "; ".join(s.reason for s in sites if s.reason)
        if calls != 0 or statuses != ["skipped"] or p.expected_skip not in reasons:
            bad("rewrite", f"a convolution the matcher cannot prove: expected 1 site skipped with a reason "
                           f"containing {p.expected_skip!r}, got op_calls={calls} statuses={statuses}"
                           + (f" reasons: {reasons}" if reasons else ""))
    elif p.is_convolution:
        if calls != 1 or statuses != ["rewritten"]:
            reasons = "; ".join(s.reason for s in sites if s.reason)
            bad("rewrite", f"a convolution: expected 1 rewritten site, got op_calls={calls} statuses={statuses}"
                           + (f" reasons: {reasons}" if reasons else ""))
        elif compiled.fft_calls() != 0:
            bad("rewrite", f"rewritten, but {compiled.fft_calls()} FFT calls are left in the graph")
    elif p.miss == "contracting_einsum":
        pass  # a contraction over channels: the channel-mixing matcher rewrites it where it proves one
        # (tests/programs_mixing.py holds that oracle); the numerics above must hold either way
    else:
        if calls != 0 or not sites or any(s.status != "skipped" for s in sites):
            bad("rewrite", f"not a convolution ({p.miss}): expected no rewrite, got op_calls={calls} "
                           f"statuses={statuses}")
    for s in sites:
        if s.status == "skipped" and not s.reason.strip():
            bad("reason", f"skipped site {s.node} ({s.pattern}) has an empty reason")
        if s.status == "rewritten" and not (s.pattern and s.kernel and s.spec is not None):
            bad("reason", f"rewritten site {s.node} lacks a family, kernel or spec: {s.line()}")
    # the report's source line must point at the inverse transform in the generated file
    lines = src.splitlines()
    for s in sites:
        path, _, line = s.source.rpartition(":")
        text = lines[int(line) - 1] if path == filename and line.isdigit() and 0 < int(line) <= len(lines) else ""
        if "fft" not in text:
            bad("source", f"site {s.node} reports source {s.source!r}, not a transform line of {filename}")
    if p.dynamic:
        # the same compiled program at other lengths (same order of K against L, same parities):
        # a proof that held only for the first sizes would show here, without a recompile
        q = replace(p, L=p.L + 2, K=p.K + 2)
        if q.valid():
            _, args2 = make_inputs(q, seed + 2)
            args2 = [a.detach() for a in args2]
            with torch.no_grad():
                expected2 = fn(*args2)
                try:
                    got2 = compiled(*args2)
                except Exception as exc:
                    bad("error", f"second call (L={q.L}, K={q.K}) raised {type(exc).__name__}: {str(exc)[:300]}")
                    return out
            if got2.shape != expected2.shape:
                bad("numerics", f"second call (L={q.L}, K={q.K}): shape {tuple(got2.shape)} != {tuple(expected2.shape)}")
            else:
                def reference2():
                    with torch.no_grad():
                        return fn(*[a.double() for a in args2])

                compare(bad, f"second call (L={q.L}, K={q.K}) output", got2, expected2, reference2, p.rtol)
    return out


def reproducer(m: Mismatch, seed: int = 0) -> str:
    """A self-contained text block for the matcher engineer."""
    names, args = make_inputs(m.program, seed)
    shapes_ = ", ".join(f"{nm}: {tuple(a.shape)} {str(a.dtype).replace('torch.', '')}" for nm, a in zip(names, args))
    return (
        f"# {m.describe()}\n# features: {' '.join(m.features)}\n# inputs (torch.randn, seed {seed}): {shapes_}\n"
        f"# dynamic={m.program.dynamic}\n# {m.program!r}\n{m.source}"
    )


def as_dict(p: Program) -> dict[str, Any]:
    return asdict(p)
