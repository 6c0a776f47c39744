"""The invariants every match passes before any rewrite, whatever its rank or family.

A rewrite replaces a site's nodes with one operator call placed where the site's result was.
That is the same program only if, between the site's first node and its result:

- nothing may write a tensor the site reads or produces, through any alias (``effects``
  decides what each node may write from what is known, and storage of the fake values decides
  whether a write reaches the site; every graph input counts as one memory, since inputs can
  share memory without sharing a storage object);
- nothing changes the grad mode, inference mode or autocast state (a site spanning a
  ``with torch.no_grad():`` boundary computes its parts in two modes, one operator in one);
- every node is known: a node whose effects are unknown refuses the site.

``check_site`` raises ``Refusal`` naming the node and the obstacle.
"""

from __future__ import annotations

from typing import Iterable

from torch.fx import Node

from convfuse.passes.effects import MODE, UNKNOWN, WRITES, aliases, effect, mode_region, op_name, storages
from convfuse.passes.refusal import Refusal


def check_site(nodes: Iterable[Node], tail: Node, reads: Iterable) -> None:
    """Refuse unless nothing between the first of ``nodes`` and ``tail`` can change what the site
    computes; ``reads`` are the values the fused operator will read at ``tail``."""
    own = set(nodes)
    graph_nodes = list(tail.graph.nodes)
    position = {node: i for i, node in enumerate(graph_nodes)}
    first, last = min(position[node] for node in own), position[tail]
    site_storages = storages([*own, *[r for r in reads if r is not None]])
    # Graph inputs can share memory without sharing a storage object (torch.from_numpy of
    # another input's .numpy(), frombuffer, DLPack): a write to one is a write to all of them.
    inputs = storages([node for node in graph_nodes if node.op in ("placeholder", "get_attr")])
    if site_storages & inputs:
        site_storages = site_storages | inputs
    for node in graph_nodes[first:last]:
        if node in own:
            continue
        _check_between(node, site_storages)


def _check_between(node: Node, site_storages: set) -> None:
    found = effect(node)
    if found.kind == MODE:
        region = mode_region(node) or op_name(node)
        raise Refusal(
            f"the site spans a {region} boundary (`{node.name}`): its parts run in different modes, which one "
            "operator cannot reproduce, so the site is left to eager",
            family="mode-boundary",
        )
    if found.kind == UNKNOWN:
        raise Refusal(
            f"`{node.name}` ({op_name(node)}) runs between the site's transforms and its result and is not known "
            "to be free of writes, so the site is left to eager",
            family="unknown-op-inside",
        )
    if found.kind == WRITES:
        for value in found.written:
            if aliases(value, site_storages):
                name = getattr(value, "name", None) or ", ".join(getattr(v, "name", "?") for v in value)
                raise Refusal(
                    f"`{node.name}` ({op_name(node)}) writes `{name}` in place between the site's transforms and "
                    "its result, and that tensor shares memory with what the site reads: the fused operator would "
                    "read other values, so the site is left to eager",
                    family="writes-in-place",
                )
