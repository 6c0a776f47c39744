"""Finding, proving and rewriting FFT-convolution sites in Dynamo FX graphs."""

from __future__ import annotations

import logging

from torch.fx import Graph, Node

from convfuse.passes import facts
from convfuse.passes.algebra import Refusal
from convfuse.passes.effects import WRITES, effect
from convfuse.passes.match import Match, match_site
from convfuse.passes.rewrite import rewrite_site

log = logging.getLogger("convfuse")

__all__ = ["internal_error", "still_valid", "Match", "Refusal", "find_fft_sites", "match_or_refuse", "match_site", "rewrite_site"]


def _reaches_inverse(node: Node, limit: int = 64) -> bool:
    seen, frontier = set(), [node]
    while frontier and len(seen) < limit:
        current = frontier.pop()
        for user in current.users:
            if user in seen:
                continue
            if facts.is_inverse_fft(user):
                return True
            seen.add(user)
            frontier.append(user)
            written = effect(user)
            if written.kind == WRITES:  # U.mul_(K): K reaches whatever reads U afterwards
                frontier.extend(w for w in written.written if isinstance(w, Node))
    return False


def find_fft_sites(graph: Graph) -> list[Node]:
    """Every inverse transform, and every forward transform that reaches none (a site on its own)."""
    sites = []
    for node in graph.nodes:
        if facts.is_inverse_fft(node):
            sites.append(node)
        elif facts.is_fft(node) and not _reaches_inverse(node):
            sites.append(node)
    return sites


def match_or_refuse(site: Node) -> Match | Refusal:
    if not facts.is_inverse_fft(site):
        return Refusal(
            "a forward transform whose spectrum reaches no inverse transform in this graph "
            "(the inverse may sit behind a graph break: see convfuse report's graph breaks)",
            family="forward-only",
        )
    try:
        return match_site(site)
    except Refusal as refusal:
        return refusal
    except Exception as exc:  # noqa: BLE001  the net: an unexpected error leaves the site to eager
        return internal_error("matching", site, exc)


def still_valid(m: Match | None) -> bool:
    """Whether a match made earlier still describes the graph: none of its nodes, nor anything it
    reads, was erased or replaced by the rewrites since (a Match is a record of node identities)."""
    from convfuse.passes.match import operator_reads
    from convfuse.passes.mixing import MixMatch, mixing_reads

    if not isinstance(m, (Match, MixMatch)):
        return False
    graph = m.tail.graph
    for node in [*m.nodes, *(operator_reads(m) if isinstance(m, Match) else mixing_reads(m))]:
        if isinstance(node, Node) and (getattr(node, "_erased", False) or node.graph is not graph):
            return False
    return bool(m.tail.users)


def internal_error(step: str, site: Node, exc: BaseException) -> Refusal:
    """The refusal (and warning) for an unexpected exception while ``step`` a site."""
    what = f"{type(exc).__name__}: {exc}"
    log.warning("convfuse: an internal error while %s `%s` left it to eager: %s", step, site.name, what,
                exc_info=log.isEnabledFor(logging.DEBUG))
    return Refusal(f"convfuse hit an internal error while {step} this site ({what}); it is left to eager "
                   "(please report it)", family="internal-error")
