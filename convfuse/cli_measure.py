"""What ``convfuse report`` measures besides the rewrite: --check errors, --bench times, graph breaks.

Every function returns plain data (dicts of numbers and strings) that the CLI both
prints and writes to ``--json`` under its own top-level key.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import statistics
import time
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten

SEED = 0


def seeded(model: Callable, inputs: tuple) -> Any:
    """``model(*inputs)`` with the RNG seeded, so random ops (dropout) draw the same numbers each time."""
    torch.manual_seed(SEED)
    return model(*inputs)


def _tolerance(dtype: torch.dtype) -> float:
    if dtype in (torch.float16, torch.bfloat16, torch.complex32):
        return 1e-2
    if dtype in (torch.float64, torch.complex128):
        return 1e-9
    return 1e-4


def compare(expected: Any, got: Any, budget: float | None = 0.0) -> dict[str, Any]:
    """Max abs error and max relative error (abs error / max |expected|, per tensor) over all outputs.

    ``budget``: the relative error a policy allows on top of float rounding (0 for exact
    rewrites); None when the policy has no bound, and then there is no verdict.
    """
    exp_leaves, exp_spec = tree_flatten(expected)
    got_leaves, got_spec = tree_flatten(got)
    if exp_spec != got_spec:
        return {"outputs": 0, "max_abs_error": math.inf, "max_rel_error": math.inf, "tolerance": 0.0,
                "ok": False, "note": "the compiled model returned a differently structured output"}
    max_abs = max_rel = 0.0
    tolerance, outputs = 0.0, 0
    for e, g in zip(exp_leaves, got_leaves):
        if not (isinstance(e, torch.Tensor) and isinstance(g, torch.Tensor)):
            continue
        if not (e.is_floating_point() or e.is_complex()):
            continue
        outputs += 1
        e64, g64 = e.detach().to(torch.complex128 if e.is_complex() else torch.float64), g.detach().to(e.device)
        diff = (g64.to(e64.dtype) - e64).abs()
        abs_err = diff.max().item() if diff.numel() else 0.0
        scale = e64.abs().max().item() if e64.numel() else 0.0
        rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else math.inf)
        if math.isnan(abs_err):
            abs_err = rel_err = math.inf
        max_abs, max_rel = max(max_abs, abs_err), max(max_rel, rel_err)
        tolerance = max(tolerance, _tolerance(e.dtype))
    if budget is None:
        return {"outputs": outputs, "max_abs_error": max_abs, "max_rel_error": max_rel, "tolerance": None,
                "ok": None}
    tolerance = max(tolerance, budget)
    return {"outputs": outputs, "max_abs_error": max_abs, "max_rel_error": max_rel, "tolerance": tolerance,
            "ok": max_rel <= tolerance}


def error_budget(policy: Any) -> float | None:
    """The relative error ``policy`` allows: 0 when exact, its bound for Auto, None when unbounded."""
    if policy is None or getattr(policy, "exact", True):
        return 0.0
    return getattr(policy, "max_rel_error", None)


def check(model: Callable, inputs: tuple, options: dict, dynamic: bool | None) -> dict[str, Any]:
    """Eager vs ``torch.compile(model, backend="convfuse", options=options)``, inference (no_grad).

    Overall: the model's outputs.  Per site: each graph is kept as Dynamo traced it and as
    convfuse rewrote it; both run on the inputs the graph saw, and each fused operator's
    output is compared with the value of the node it replaced.
    """
    torch._dynamo.reset()
    graphs: list[dict[str, Any]] = []
    compiled = _compile_keeping_graphs(model, options, dynamic, graphs)
    with torch.no_grad():
        expected = seeded(model, inputs)
        got = seeded(compiled, inputs)
        sites, failed, unmeasured = [], [], 0
        for index, entry in enumerate(graphs):
            try:
                rows, missing = _site_errors(index, entry)
                sites, unmeasured = sites + rows, unmeasured + missing
            except Exception as exc:  # the per-site view is extra: never lose the overall check to it
                failed.append(f"graph {index}: {type(exc).__name__}: {exc}".splitlines()[0])
    torch._dynamo.reset()
    result = compare(expected, got, error_budget(options.get("policy")))
    result["sites"] = sites
    result["sites_not_measured"] = unmeasured
    if failed:
        result["note"] = "per-site errors not measured for " + "; ".join(failed)
    return result


def _compile_keeping_graphs(model: Callable, options: dict, dynamic: bool | None, graphs: list) -> Callable:
    """``torch.compile(model, backend="convfuse", options=options)``, appending each graph it compiles
    (before and after the rewrite, with the inputs of its first run) to ``graphs``."""
    backend = functools.partial(_keeping_graphs, graphs=graphs, options=dict(options))
    return torch.compile(model, backend=backend, dynamic=dynamic)


def _keeping_graphs(gm: torch.fx.GraphModule, example_inputs: list, *, graphs: list, options: dict):
    """The convfuse backend, keeping each graph before and after its rewrite and the inputs of its first run."""
    from convfuse.backend import convfuse_backend

    entry: dict[str, Any] = {"original": copy.deepcopy(gm), "rewritten": gm, "inputs": None}
    graphs.append(entry)
    run = convfuse_backend(gm, example_inputs, options=options)

    def first_inputs_kept(*args: Any) -> Any:
        if entry["inputs"] is None:
            entry["inputs"] = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]
        return run(*args)

    return first_inputs_kept


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        self.values[n.name] = value
        return value


def _flat_nodes(node: torch.fx.Node) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _replaced_node(out: torch.fx.Node, original: torch.fx.Graph) -> torch.fx.Node | None:
    """The original node that ``out`` (a fused operator's result) stands in for, read off a shared user."""
    by_name = {n.name: n for n in original.nodes}
    for user in out.users:
        before = by_name.get(user.name)
        if before is None or before.target != user.target:
            continue
        now_args, before_args = _flat_nodes(user), _flat_nodes(before)
        if len(now_args) == len(before_args):
            for now, then in zip(now_args, before_args):
                if now is out:
                    return then
    return None


def _upstream(node: torch.fx.Node, within: Callable[[torch.fx.Node], bool] = lambda n: True) -> set[str]:
    """Names of ``node`` and the nodes it reads from, walking back only through nodes ``within`` accepts."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n.name not in seen and within(n):
            seen.add(n.name)
            todo.extend(n.all_input_nodes)
    return seen


@dataclasses.dataclass
class _Site:
    """One rewritten site of a kept graph: the original node and the fused operator that replaced it."""

    graph: int
    inverse: str  # the site's inverse-transform node: SiteReport.node
    replaced: torch.fx.Node  # in the original graph
    removed: list[torch.fx.Node]  # the original nodes the rewrite removed to compute ``replaced``
    alone: bool  # ``removed`` holds this site's nodes only (no unidentified site upstream folded in)
    fused: torch.fx.Node  # the fft_conv call in the rewritten graph
    out: torch.fx.Node  # what stands in for ``replaced`` (``fused``, or its movedim back)


def _paired_sites(graph_index: int, entry: dict[str, Any]) -> tuple[list[_Site], int, _Recorder, _Recorder]:
    """The rewritten sites of one kept graph that can be identified, how many cannot (a site whose
    output feeds only other rewritten sites has no surviving user to identify it by), and both
    graphs run on the inputs the graph first saw."""
    from convfuse.passes import find_fft_sites

    original: torch.fx.GraphModule = entry["original"]
    rewritten: torch.fx.GraphModule = entry["rewritten"]
    before, after = _Recorder(original), _Recorder(rewritten)
    fused = [n for n in rewritten.graph.nodes if n.target is torch.ops.convfuse.fft_conv.default]
    if not fused or entry["inputs"] is None:
        return [], 0, before, after
    before.run(*entry["inputs"])
    after.run(*entry["inputs"])
    inverses = [n.name for n in find_fft_sites(original.graph)]  # graph order
    kept = {n.name for n in rewritten.graph.nodes}
    pairs = []
    for node in fused:
        out = node
        if len(out.users) == 1 and next(iter(out.users)).target is torch.movedim:
            out = next(iter(out.users))  # the view back to the user's layout
        replaced = _replaced_node(out, original.graph)
        if replaced is not None:
            pairs.append((node, out, replaced))
    outputs = {replaced.name for _, _, replaced in pairs}
    sites = []
    for node, out, replaced in pairs:
        # The site's own removed nodes: back from its result, through removed nodes, not into another site's.
        removed = _upstream(replaced, lambda n: n.name not in kept and (n is replaced or n.name not in outputs))
        own = [name for name in inverses if name in removed]  # more than one: an unidentified site folded in
        if not own:
            continue
        ordered = [n for n in original.graph.nodes if n.name in removed]
        sites.append(_Site(graph_index, own[-1], replaced, ordered, len(own) == 1, node, out))
    return sites, len(fused) - len(sites), before, after


def _site_errors(graph_index: int, entry: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Per fused operator of one graph: its output against the replaced node's, same inputs;
    and how many could not be measured alone."""
    sites, unmeasured, before, after = _paired_sites(graph_index, entry)
    errors = []
    for site in sites:
        err = compare(before.values[site.replaced.name], after.values[site.out.name])
        errors.append({"graph": site.graph, "node": site.inverse, "replaced": site.replaced.name,
                       "max_abs_error": err["max_abs_error"], "max_rel_error": err["max_rel_error"]})
    return errors, unmeasured


def _site_programs(site: _Site, original: torch.fx.GraphModule, before: _Recorder,
                   after: _Recorder) -> tuple[Callable, tuple, Callable, tuple]:
    """(eager site, its inputs, fused operator, its arguments): the nodes the rewrite removed, as a
    graph of their own fed by the values the model computed, and the one operator call that replaced them."""
    removed = set(site.removed)
    graph, env, names = torch.fx.Graph(), {}, []

    def value_of(node: torch.fx.Node) -> torch.fx.Node:
        if node not in env:
            env[node] = graph.placeholder(node.name)
            names.append(node.name)
        return env[node]

    for node in site.removed:  # graph order
        for arg in node.all_input_nodes:
            if arg not in removed:
                value_of(arg)
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[site.replaced])
    eager = torch.fx.GraphModule(original, graph)
    eager_args = tuple(before.values[name] for name in names)
    op_args = torch.fx.node.map_arg(site.fused.args, lambda n: after.values[n.name])
    return eager, eager_args, site.fused.target, op_args


def _site_times(graphs: list[dict[str, Any]], repeats: int) -> tuple[list[dict[str, Any]], int]:
    """Median times of each rewritten site: its eager nodes vs the fused operator, interleaved;
    and how many sites could not be timed alone."""
    rows, unmeasured = [], 0
    for index, entry in enumerate(graphs):
        sites, missing, before, after = _paired_sites(index, entry)
        unmeasured += missing + sum(not site.alone for site in sites)
        for site in (site for site in sites if site.alone):
            eager, eager_args, op, op_args = _site_programs(site, entry["original"], before, after)
            times = _interleaved({"eager": lambda: eager(*eager_args), "convfuse": lambda: op(*op_args)},
                                 repeats, eager_args)
            rows.append({"graph": index, "node": site.inverse, "median_ms": times,
                         "speedup": times["eager"] / times["convfuse"] if times["convfuse"] > 0 else math.inf})
    return rows, unmeasured


def _sync(inputs: tuple) -> None:
    if torch.cuda.is_available() and any(isinstance(x, torch.Tensor) and x.is_cuda for x in inputs):
        torch.cuda.synchronize()


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int, inputs: tuple) -> dict[str, float]:
    """Median ms per call of each no-argument function, samples interleaved so noise hits all alike.

    Each sample is one torch.utils.benchmark measurement (``Timer.timeit``: a block of calls
    with the device synchronised after it), of enough calls that a sample of the first function
    lasts about a millisecond.
    """
    from torch.utils.benchmark import Timer

    first = next(iter(fns.values()))
    start = time.perf_counter()
    first()
    _sync(inputs)
    number = max(1, min(100, math.ceil(1e-3 / max(time.perf_counter() - start, 1e-7))))
    threads = torch.get_num_threads()  # Timer would run on one thread otherwise
    timers = {name: Timer("fn()", setup="sync()", globals={"fn": fn, "sync": functools.partial(_sync, inputs)},
                          num_threads=threads)
              for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer.timeit(number).median * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def bench(model: Callable, inputs: tuple, options: dict, dynamic: bool | None, repeats: int,
          ui: Any = None) -> dict[str, Any]:
    """Median forward times (no_grad) of eager, torch.compile's default and convfuse, runs interleaved;
    then each rewritten site alone: its eager nodes vs the fused operator."""
    torch._dynamo.reset()
    graphs: list[dict[str, Any]] = []
    variants: dict[str, Callable] = {
        "eager": model,
        "inductor": torch.compile(model, dynamic=dynamic),
        "convfuse": _compile_keeping_graphs(model, options, dynamic, graphs),
    }
    stage = ui.stage if ui is not None else _no_stage
    with torch.no_grad():
        for name, fn in variants.items():
            with stage(f"warming up {name}" + (" (compiling)" if name != "eager" else "")):
                for _ in range(2):
                    fn(*inputs)
                _sync(inputs)
        with stage(f"timing {repeats} x {len(variants)} interleaved samples"):
            medians = _interleaved({name: functools.partial(fn, *inputs) for name, fn in variants.items()},
                                   repeats, inputs)
        with stage("timing each rewritten site"):
            try:
                (sites, unmeasured), note = _site_times(graphs, repeats), ""
            except Exception as exc:  # the per-site view is extra: never lose the model's times to it
                sites, unmeasured = [], 0
                note = f"per-site times not measured: {type(exc).__name__}: {exc}".splitlines()[0]
    torch._dynamo.reset()
    result = {
        "repeats": repeats,
        "median_ms": medians,
        "speedup_vs_eager": {name: medians["eager"] / ms if ms > 0 else math.inf for name, ms in medians.items()},
        "sites": sites,
        "sites_not_measured": unmeasured,
    }
    if note:
        result["note"] = note
    return result


class _no_stage:
    def __init__(self, _message: str) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def graph_breaks(model: Callable, inputs: tuple) -> dict[str, Any]:
    """``torch._dynamo.explain``'s graph count and break reasons, each with its user source line."""
    torch._dynamo.reset()
    try:
        out = torch._dynamo.explain(model)(*inputs)
    finally:
        torch._dynamo.reset()
    reasons = []
    for reason in out.break_reasons:
        stack = list(getattr(reason, "user_stack", None) or [])
        frame = stack[-1] if stack else None
        source = f"{frame.filename}:{frame.lineno}" if frame is not None else "<unknown>"
        reasons.append({"reason": str(reason.reason).strip(), "source": source})
    return {"graphs": out.graph_count, "graph_breaks": out.graph_break_count, "reasons": reasons}
