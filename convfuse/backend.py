"""The torch.compile backend: ``torch.compile(model, backend="convfuse")``.

Dynamo hands us its FX graph (torch-level calls, before autograd: DESIGN.md says why
that is the level to rewrite at); we find every FFT site, prove which are
convolutions, replace those with the fused operator, report every site, and let
Inductor (or the inner compiler asked for) compile the rest.
"""

from __future__ import annotations

import logging

import torch
from torch.fx import GraphModule

from convfuse.backends.dispatch import KernelUnavailable, choose_kernel
from convfuse.options import BackendOptions
from convfuse.passes import Match, find_fft_sites, match_or_refuse, rewrite_site
from convfuse.passes.sizes import example_value
from convfuse.report import REWRITTEN, SKIPPED, RewriteReport, SiteReport, publish, user_source

log = logging.getLogger("convfuse")


def convfuse_backend(gm: GraphModule, example_inputs, *, mode=None, options=None):
    opts = BackendOptions.parse(options, mode)
    sites = find_fft_sites(gm.graph)
    report = rewrite_sites(gm, sites, opts)
    publish(report)
    return compile_rest(gm, example_inputs, opts)


def _shapes(m: Match) -> dict[str, list]:
    return {
        name: [str(d) for d in example_value(node).shape]
        for name, node in (("u", m.u.signal), ("k", m.k.signal), ("out", m.tail))
    }


def rewrite_sites(gm: GraphModule, sites, opts: BackendOptions) -> RewriteReport:
    """Match and rewrite each site in turn, on the graph as the previous rewrites left it.

    Two sites can reach for the same node (``a * b`` of two convolutions is a gate for
    each), so a site is matched only once the rewrites before it are done.
    """
    report = RewriteReport(graphs=1)
    for site in sites:
        outcome = match_or_refuse(site)
        source = user_source(site.meta.get("stack_trace"))
        if isinstance(outcome, Match):
            record = _rewrite_one(gm, outcome, opts, source)
        else:
            record = SiteReport(SKIPPED, outcome.family, source, reason=outcome.reason,
                                policy=str(opts.policy), node=site.name)
        log_site(record)
        report.sites.append(record)
    if report.rewritten:
        gm.graph.lint()
        gm.recompile()
        log.debug("convfuse: rewritten graph\n%s", gm.code)
    return report


def _rewrite_one(gm: GraphModule, m: Match, opts: BackendOptions, source: str) -> SiteReport:
    spec, family, shapes = m.spec(), m.family(), _shapes(m)
    device = example_value(m.u.signal).device.type
    try:
        impl = choose_kernel(opts.kernel, device)
    except KernelUnavailable as exc:
        return SiteReport(SKIPPED, family, source, reason=str(exc), spec=spec, policy=str(opts.policy),
                          node=m.inverse.name, shapes=shapes)
    name = m.inverse.name
    rewrite_site(gm, m, opts.kernel)
    return SiteReport(REWRITTEN, family, source, spec=spec, kernel=impl.name, policy=str(opts.policy),
                      node=name, shapes=shapes)


def log_site(record: SiteReport) -> None:
    log.info("convfuse: %s", record.line())


def compile_rest(gm: GraphModule, example_inputs, opts: BackendOptions):
    if opts.inner == "eager":
        return gm.forward
    if opts.inner == "aot_eager":
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend("aot_eager")(gm, example_inputs)
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    patches = {**(list_mode_options(opts.mode) if opts.mode else {}), **opts.inductor}
    return compile_fx(gm, example_inputs, config_patches=patches or None)
