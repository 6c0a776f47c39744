"""Finding, proving and rewriting FFT-convolution sites in Dynamo FX graphs."""

from __future__ import annotations

from torch.fx import Graph, Node

from convfuse.passes import facts
from convfuse.passes.algebra import Refusal, mutates
from convfuse.passes.match import Match, match_site
from convfuse.passes.match_nd import MatchND, match_site_nd
from convfuse.passes.rewrite import rewrite_site

__all__ = ["Match", "MatchND", "Refusal", "find_fft_sites", "match_or_refuse", "match_site", "rewrite_site"]


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
            if mutates(user) and isinstance(user.args[0], Node):
                frontier.append(user.args[0])  # U.mul_(K): K reaches whatever reads U afterwards
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


def match_or_refuse(site: Node) -> Match | MatchND | Refusal:
    if not facts.is_inverse_fft(site):
        return Refusal(
            "a forward transform whose spectrum reaches no inverse transform in this graph "
            "(the inverse may sit behind a graph break: see convfuse report's graph breaks)",
            family="forward-only",
        )
    try:
        if facts.multi_axis_transform_of(site) is not None:
            return match_site_nd(site)
        return match_site(site)
    except Refusal as refusal:
        return refusal
