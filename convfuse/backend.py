"""The torch.compile backend: ``torch.compile(model, backend="convfuse")``.

Dynamo hands us its FX graph (torch-level calls, before autograd: DESIGN.md says why
that is the level to rewrite at); we find every FFT site, prove which are
convolutions, replace those with the fused operator, report every site, and let
Inductor (or the inner compiler asked for) compile the rest.
"""

from __future__ import annotations

import logging
import math
import operator

import torch
from torch.fx import GraphModule

from convfuse import config
from convfuse.backends.cpu import cpu_kernel_name
from convfuse.backends.cpu_cost import nd_no_gain_reason, no_gain_reason
from convfuse.backends.dispatch import KernelUnavailable, choose_kernel
from convfuse.options import BackendOptions
from convfuse.passes import Match, Refusal, find_fft_sites, internal_error, match_or_refuse, rewrite_site, still_valid
from convfuse.passes.mixing import MixMatch
from convfuse.passes.mixing import no_gain_reason as mixing_no_gain
from convfuse.passes.saved_inputs import copy_reachable_operands
from convfuse.passes.policy import SitePlan, choose_policies, policy_rewrite_args, resolve_late, spectrum_bins
from convfuse.policies import Exact, PartialKernel
from convfuse.passes.sizes import example_value
from convfuse.report import REWRITTEN, SKIPPED, RewriteReport, SiteReport, publish, user_source

log = logging.getLogger("convfuse")


def convfuse_backend(gm: GraphModule, example_inputs, *, mode=None, options=None):
    opts = BackendOptions.parse(options, mode)
    sites = find_fft_sites(gm.graph)
    plans = choose_policies(gm, sites, opts, example_inputs)
    report = rewrite_sites(gm, sites, opts, plans)
    copy_saved_operands(gm, report)
    publish(report)
    return compile_rest(gm, example_inputs, opts)


def _shapes(m: Match) -> dict[str, list]:
    return {
        name: [str(d) for d in example_value(node).shape]
        for name, node in (("u", m.u.signal), ("k", m.k.signal or m.k.spectrum or m.k.terms[0].signal), ("out", m.tail))
    }


def rewrite_sites(gm: GraphModule, sites, opts: BackendOptions, plans: dict | None = None) -> RewriteReport:
    """Match and rewrite each site in turn, on the graph as the previous rewrites left it.

    Two sites can reach for the same node (``a * b`` of two convolutions is a gate for
    each), so a site is matched only once the rewrites before it are done.  ``plans``
    (from ``choose_policies``) say which sites are in scope and with which policy.
    """
    report = RewriteReport(graphs=1)
    for site in sites:
        plan = (plans or {}).get(site) or SitePlan(asked=opts.policy)
        try:
            record = rewrite_one_site(gm, site, opts, plan)
        except Exception as exc:  # noqa: BLE001  the net: rewrite_site leaves the graph as it was
            refusal = internal_error("rewriting", site, exc)
            record = SiteReport(SKIPPED, refusal.family, user_source(site.meta.get("stack_trace")),
                                reason=refusal.reason, policy=str(plan.asked), node=site.name)
        log_site(record)
        report.sites.append(record)
    if report.rewritten:
        gm.graph.lint()
        gm.recompile()
        log.debug("convfuse: rewritten graph\n%s", gm.code)
    return report


def copy_saved_operands(gm: GraphModule, report: RewriteReport) -> None:
    """Route the operands the caller can change before backward through saved copies
    (passes/saved_inputs.py); each site's record lists the ones it copies."""
    if not report.rewritten:
        return
    copied = copy_reachable_operands(gm)
    for record in report.rewritten:
        record.saved_copies = copied.get(record.node, [])
        if record.saved_copies:
            log.info("convfuse: %s at %s saves copies of %s for backward (memory the caller can change before "
                     "backward: graph inputs, parameters, outputs, or written in the graph)", record.pattern,
                     record.source, ", ".join(record.saved_copies))


def rewrite_one_site(gm: GraphModule, site, opts: BackendOptions, plan: SitePlan) -> SiteReport:
    # Matched once: the policy step's match, unless an earlier rewrite touched its nodes.
    outcome = plan.match if still_valid(plan.match) else match_or_refuse(site)
    source = user_source(site.meta.get("stack_trace"))
    if isinstance(outcome, Refusal):
        return SiteReport(SKIPPED, outcome.family, source, reason=outcome.reason, policy=str(plan.asked),
                          node=site.name)
    if plan.in_scope and plan.applied is None and not plan.reason:
        resolve_late(plan, outcome)  # not resolved before rewriting (no plans, or matched only now)
    if plan.applied is None or not plan.in_scope:
        return SiteReport(SKIPPED, outcome.family(), source, reason=plan.reason, spec=outcome.spec(),
                          policy=str(plan.asked), policy_note=plan.note, node=site.name, shapes=_shapes(outcome))
    return _rewrite_one(gm, outcome, opts, source, plan)


def _rewrite_one(gm: GraphModule, m: Match, opts: BackendOptions, source: str, plan: SitePlan) -> SiteReport:
    spec = m.spec()
    family, shapes = m.family(spec), _shapes(m)
    device = example_value(m.u.signal).device.type
    try:
        impl = choose_kernel(opts.kernel, device)
    except KernelUnavailable as exc:
        return SiteReport(SKIPPED, family, source, reason=str(exc), spec=spec, policy=str(plan.asked),
                          node=m.inverse.name, shapes=shapes)
    name = m.inverse.name
    applied = plan.applied
    no_gain = _no_gain(m, spec, opts, impl.name, applied)
    if no_gain:
        return SiteReport(SKIPPED, family, source, reason=no_gain, spec=spec, policy=str(plan.asked),
                          policy_note=plan.note, node=name, shapes=shapes)
    rewrite_site(gm, m, opts.kernel, **policy_rewrite_args(applied))
    exact = isinstance(applied, Exact)
    kernel_name = _kernel_description(impl.name, m, spec, applied)
    return SiteReport(REWRITTEN, family, source, spec=spec, kernel=kernel_name, policy=str(plan.asked),
                      policy_applied=str(applied), rel_error=0.0 if exact else plan.rel_error,
                      flops_saved=plan.flops_saved if not exact else 0.0,
                      bytes_saved=plan.bytes_saved if not exact else 0.0, policy_note=plan.note,
                      node=name, shapes=shapes)


def _no_gain(m, spec, opts: BackendOptions, impl_name: str, policy) -> str | None:
    """The reason a site stays eager code because the CPU cost model predicts the fused operator
    no faster there (``cpu_cost.no_gain_reason``), or None.  Only ``kernel="auto"`` on CPU, one
    axis, exact, static shapes; ``kernel="cpu"`` always rewrites."""
    if opts.kernel != "auto" or impl_name != "cpu" or not isinstance(policy, Exact):
        return None
    if not opts.settings.cpu_no_gain_refusal:
        return None
    if isinstance(m, MixMatch):
        return mixing_no_gain(m)
    if m.multi_axis:
        out = example_value(m.result).shape
        sizes = [s.value for s in m.sizes]
        if not all(isinstance(v, int) for v in (*out, *sizes)):
            return None  # symbolic sizes: never refused
        window = math.prod(out[a] for a in m.axes)
        return nd_no_gain_reason(math.prod(out) // max(1, window) * math.prod(sizes))
    u_shape = example_value(m.u.signal).shape
    sizes = (spec.n, spec.L, spec.K, spec.start, spec.length)
    rows = _static_rows(m, spec)
    if not rows or not all(isinstance(v, int) for v in (*sizes, *u_shape)):
        return None  # symbolic sizes: decided per call, never refused
    k_node = m.k.signal or m.k.spectrum
    kernel_rows = rows  # a kernel summed from terms: at most one per output row
    if k_node is not None:
        k_shape = example_value(k_node).shape
        if all(isinstance(d, int) for d in k_shape) and k_shape and len(k_shape) >= -spec.axis:
            kernel_rows = math.prod(k_shape) // max(1, k_shape[spec.axis])
    ops = 2 * int(spec.skip) + int(spec.pre_gate) + int(spec.post_gate)
    return no_gain_reason(*sizes, rows, kernel_rows, spec.constant_kernel, ops)


def _static_rows(m, spec) -> int:
    """The output rows of a one-axis site (the product of its output's other dimensions), or 0
    where a size is symbolic."""
    value = example_value(m.result)
    out_shape = getattr(value, "shape", None)
    if not out_shape or not all(isinstance(d, int) for d in out_shape):
        return 0  # no example value (a node the rewrite made), a 0-d result or symbolic sizes
    axis = spec.axis % len(out_shape)
    return math.prod(d for i, d in enumerate(out_shape) if i != axis)


def _kernel_description(name: str, m, spec, policy) -> str:
    """What runs: for the CPU path with static sizes, the algorithm its cost model picks for the
    kernel the policy leaves (a partial kernel is a short one)."""
    if isinstance(m, MixMatch):
        return f"{name}: {m.kernel_name()}"  # a channel-mixing operator (its implementation per device)
    if m.multi_axis:
        # fft_convnd: the tiled CPU path (cpu_nd.py) on CPU; torch.fft (the reference) elsewhere
        return "cpu-fft-nd" if name == "cpu" and config.nd_cpu else "torch.fft-nd"
    K = spec.K
    if isinstance(policy, PartialKernel) and isinstance(policy.length, int) and isinstance(K, int):
        K = min(K, policy.length)
    sizes = (spec.n, spec.L, K, spec.start, spec.length)
    if name != "cpu" or not all(isinstance(v, int) for v in sizes):
        return name if name != "cpu" else "cpu (algorithm chosen per call)"
    # "cpu-direct", "cpu-fft", "cpu-overlap-save" ("cpu-fft(n=8192)" for a rounded size): the
    # other sizes are in the spec and shapes
    return cpu_kernel_name(*sizes, bins=spectrum_bins(policy), rows=_static_rows(m, spec))


def log_site(record: SiteReport) -> None:
    log.info("convfuse: %s", record.line())


# What Inductor cannot improve: a graph of convfuse operators and views of their operands and
# results.  Inductor's wrappers (AOTAutograd's runtime, the compiled module's call) cost ~10 us a
# call on the 2-core machine (bench/cpu_programs.py: (1, 8, 16) 72.6 us through Inductor, 61.2 us
# without), a quarter of a small convolution; such a graph runs as captured, as backend="eager"
# runs any Dynamo graph (the operators carry their own autograd).
_VIEW_METHODS = frozenset({"view", "reshape", "unsqueeze", "squeeze", "transpose", "permute", "expand", "flatten",
                           "unflatten", "t", "view_as", "expand_as", "movedim", "moveaxis", "swapaxes", "swapdims",
                           "narrow"})
_VIEW_FUNCTIONS = frozenset({torch.reshape, torch.unsqueeze, torch.squeeze, torch.transpose, torch.permute,
                             torch.flatten, torch.t, torch.movedim, torch.moveaxis, torch.swapaxes, torch.swapdims,
                             torch.narrow, torch.view_as_complex, torch.view_as_real})


def _basic_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts)


def _nothing_for_inductor(gm: GraphModule) -> bool:
    ops = 0
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) and target.namespace == "convfuse":
            ops += 1
        elif node.op == "call_method" and target in _VIEW_METHODS:
            continue
        elif node.op == "call_function" and target in _VIEW_FUNCTIONS:
            continue
        elif node.op == "call_function" and target is operator.getitem and _basic_index(node.args[1]):
            continue
        else:
            return False
    return ops > 0


def compile_rest(gm: GraphModule, example_inputs, opts: BackendOptions):
    if opts.inner == "eager":
        return gm.forward
    if opts.inner == "inductor" and not opts.mode and not opts.inductor and _nothing_for_inductor(gm):
        log.info("convfuse: the rest of the graph is views of the fused operators' operands: run as captured")
        return gm.forward
    if opts.inner == "aot_eager":
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend("aot_eager")(gm, example_inputs)
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    patches = {**(list_mode_options(opts.mode) if opts.mode else {}), **opts.inductor}
    return compile_fx(gm, example_inputs, config_patches=patches or None)
