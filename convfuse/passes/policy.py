"""Choosing a policy per site and putting it in the graph.

``choose_policies(gm, sites, opts, example_inputs)`` runs before any rewrite and decides,
per FFT site: whether it is in scope (``convfuse.scope``), which policy was asked for,
which one applies (a partial length at least the kernel's is ``Exact``; ``Auto`` searches
cuts on the example inputs), the relative output error that choice costs on the example
inputs, and the estimated work saved.  It returns one ``SitePlan`` per site.

A policy is applied *in the graph*, on the fused operator's call: ``PartialKernel`` is the
slice ``k[..., :K]`` on its kernel operand (``kernel_transform``; the CPU path's cost model
then picks direct or overlap-save for the short kernel by itself), ``FrequencySparse(bins=M)``
is the operator's own ``spectrum_bins=M`` argument: the kernel spectrum with bins >= M zeroed,
masked by every implementation, which multiply (CPU) or transform (Triton) only the kept bins.
A frequency cut given as a fraction of a symbolic n stays the plain-torch definition
``irfft(rfft(k, n)[..., :M], n)`` on the kernel operand.  Either way the operator's autograd
formula gives the gradient of the truncated / sparsified convolution (zero on the taps a
partial kernel drops, projected onto the kept bins for a frequency cut).

Measuring: the site's operands are evaluated by running the part of the graph they depend
on (``torch.fx.Interpreter``, under ``no_grad``, on clones of the example inputs so that
in-place updates in the graph cannot touch the model), and the site's output is computed with
the reference implementation for the exact kernel and for the policy's kernel:
``rel_error = ||y_policy - y_exact||_2 / ||y_exact||_2``.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.fx import GraphModule, Node

from convfuse.passes import Match, Refusal, match_or_refuse, rewrite_site
from convfuse.passes.match import is_module_state
from convfuse.passes.sizes import example_value, proven
from convfuse.policies import Auto, Exact, FrequencySparse, PartialKernel, Policy
from convfuse.scope import resolve

log = logging.getLogger("convfuse")


@dataclass
class SitePlan:
    """What the policy step decided for one site."""

    asked: Policy
    applied: Policy | None = None  # None: the policy cannot apply here (``reason`` says why)
    in_scope: bool = True
    chosen_by: str = "options"
    reason: str = ""  # why the site is left alone (out of scope, policy cannot apply)
    note: str = ""  # how the applied policy was derived
    rel_error: float | None = None  # measured on the example inputs
    kernel_rel_change: float | None = None  # ||k' - k|| / ||k||
    flops_saved: float | None = None  # estimated, per call
    bytes_saved: float | None = None
    match: Any = None  # the site's Match when this step matched it (the rewrite reuses it while valid)


# ---- the definitions, as run in the graph ------------------------------------------------------


def convfuse_partial_kernel(k: torch.Tensor, length: int | None = None, fraction: float | None = None) -> torch.Tensor:
    """The first taps of ``k`` along its last axis: ``k[..., :length]`` (or a fraction)."""
    taps = length if fraction is None else max(1, math.ceil(fraction * k.shape[-1]))
    return k[..., :taps]


def convfuse_frequency_sparse_kernel(
    k: torch.Tensor, n: int, bins: int | None = None, keep: float | None = None
) -> torch.Tensor:
    """``irfft(rfft(k, n)[..., :M], n)``: the kernel whose spectrum keeps its lowest ``M`` bins."""
    dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    spectrum = torch.fft.rfft(k.to(dtype), n=n)
    kept = bins if keep is None else max(1, math.ceil(keep * (n // 2 + 1)))
    return torch.fft.irfft(spectrum[..., :kept], n=n)


def spectrum_bins(policy: Policy) -> int:
    """The operator's ``spectrum_bins`` for a frequency cut resolved to a bin count, else 0:
    the operator masks the kernel spectrum itself (and may skip the cut bins), and the
    kernel operand stays module state, so a constant kernel's spectrum is still cached."""
    return policy.bins if isinstance(policy, FrequencySparse) and policy.bins is not None else 0


def kernel_transform(policy: Policy) -> Callable[[torch.fx.Graph, Node, Any], Node] | None:
    """A function adding ``policy`` to the graph on the kernel operand (last-axis layout)."""
    #   k -> k[..., :length]                                    PartialKernel(length=)
    #   k -> k[..., :ceil(fraction * K)]                         PartialKernel(fraction=), K symbolic
    #   k -> irfft(rfft(k, n)[..., :ceil(keep * (n//2+1))], n)   FrequencySparse(keep=), n symbolic
    # FrequencySparse with a bin count is no transform: fft_conv(..., spectrum_bins=M).
    if isinstance(policy, PartialKernel):
        if policy.length is not None:
            return lambda graph, k, n: graph.call_function(operator.getitem, (k, (Ellipsis, slice(None, policy.length))))
        return lambda graph, k, n: graph.call_function(convfuse_partial_kernel, (k,), {"fraction": policy.fraction})
    if isinstance(policy, FrequencySparse) and not spectrum_bins(policy):
        return lambda graph, k, n: graph.call_function(
            convfuse_frequency_sparse_kernel, (k, n), {"bins": policy.bins, "keep": policy.keep}
        )
    return None


def keeps_constant_kernel(policy: Policy) -> bool:
    """Whether the kernel the operator sees is still module state read as a view (cacheable)."""
    return kernel_transform(policy) is None or isinstance(policy, PartialKernel)


def apply_to_tensor(policy: Policy, k: torch.Tensor, n: int) -> torch.Tensor:
    if isinstance(policy, PartialKernel):
        return convfuse_partial_kernel(k, policy.length, policy.fraction)
    if isinstance(policy, FrequencySparse):
        return convfuse_frequency_sparse_kernel(k, n, policy.bins, policy.keep)
    return k


# ---- static resolution ----------------------------------------------------------------------------


def _static(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def kernel_identified(m: Match, spec: Any) -> str:
    """'' when the match's kernel operand is known to be the kernel (by provenance), else why not."""
    if getattr(m, "roles", None):
        return ""
    return (
        "cannot tell which of the two convolved signals is the kernel: the program's provenance (module state, "
        "a skip term or gate on the input, a built or conjugated spectrum, the product's order) names none "
        "consistently, and sizes are no proof"
    )


def resolve_static(asked: Policy, m: Match) -> tuple[Policy | None, str]:
    """(applied policy, note) from the site's proven spec; Auto is resolved later, on values."""
    if isinstance(asked, Exact):
        return asked, ""
    spec = m.spec()
    n, K = _static(spec.n), _static(spec.K)
    if isinstance(asked, Auto):
        if not spec.constant_kernel:
            return Exact(), "auto: the kernel is computed (not a parameter/buffer read as is): kept exact"
        if n is None or K is None:
            return Exact(), "auto: symbolic sizes: kept exact"
        return None, ""
    if isinstance(asked, PartialKernel) and (getattr(getattr(m, "k", None), "terms", None) is not None or spec.start != 0):
        what = "a sum of spectra" if getattr(m.k, "terms", None) is not None else f"read at offset {spec.start}"
        return None, (
            f"policy {asked} cannot apply: the kernel is {what} (bidirectional or centred), so its first "
            "taps are not its nearest ones; FrequencySparse applies to any kernel"
        )
    why = kernel_identified(m, spec)
    if why:
        return None, f"policy {asked} cannot apply: {why}"
    if isinstance(asked, PartialKernel):
        if K is None:
            return asked, "kernel length is symbolic: the slice applies per call"
        effective = K if n is None else min(K, n)  # the operator reads at most n taps
        taps = asked.taps(effective)
        if taps >= effective:
            return Exact(), f"{asked} keeps all {effective} taps of the kernel: exact"
        return PartialKernel(length=taps), f"{asked}: {taps} of {effective} taps"
    if isinstance(asked, FrequencySparse):
        if n is None:
            return asked, "FFT size is symbolic: the cut applies per call"
        total, kept = n // 2 + 1, asked.kept_bins(n)
        if kept >= total:
            return Exact(), f"{asked} keeps all {total} one-sided bins at n={n}: exact"
        return FrequencySparse(bins=kept), f"{asked}: {kept} of {total} bins at n={n}"
    return None, f"policy {asked} is not supported"


# ---- estimates --------------------------------------------------------------------------------------


def _fft_flops(n: int) -> float:
    return 2.5 * n * math.log2(max(n, 2))  # a real FFT: half a complex one's 5 n log2 n


def _pruned_fft_flops(n: int, nonzero: int) -> float:
    """An FFT whose input (or needed output) is ``nonzero`` of ``n`` bins: the stages before
    the nonzero block spreads (log2(n / nonzero) of them) are skipped."""
    return min(_fft_flops(n), 2.5 * n * (math.log2(max(2 * nonzero, 2)) + 1))


def row_cost(policy: Policy, n: int, K: int, out: int) -> tuple[float, float]:
    """(flops, bytes) per output row of the site: FFT work, and the spectra a fused kernel keeps
    (the row's and the kernel's, complex64) or the taps it reads.  A model of what a kernel that
    skips the removed work costs, not a measurement."""
    nb = n // 2 + 1
    exact = (2 * _fft_flops(n) + 3 * n, 2 * nb * 8.0)
    if isinstance(policy, PartialKernel) and policy.length is not None and policy.length < K:
        t = policy.length
        best = exact
        direct = (2.0 * t * out, 4.0 * t)
        best = min(best, direct)
        N = 1 << max(1, (2 * t - 1).bit_length())
        while N <= n // 2:
            blocks = -(-out // (N - t + 1))
            best = min(best, (blocks * (2 * _fft_flops(N) + 3 * N), 2 * (N // 2 + 1) * 8.0))
            N *= 2
        return best
    if isinstance(policy, FrequencySparse) and policy.bins is not None and policy.bins < nb:
        M = policy.bins
        return (2 * _pruned_fft_flops(n, M) + 6 * M, 2 * M * 8.0)
    return exact


def estimate_saved(policy: Policy, n: Any, K: Any, out_shape: Any) -> tuple[float | None, float | None]:
    if not all(isinstance(v, int) for v in (n, K, *out_shape)) or not out_shape:
        return None, None
    out = out_shape[-1]
    rows = math.prod(out_shape[:-1])
    f0, b0 = row_cost(Exact(), n, K, out)
    f1, b1 = row_cost(policy, n, K, out)
    return rows * (f0 - f1), rows * (b0 - b1)


# ---- values --------------------------------------------------------------------------------------

FFT_CONV = torch.ops.convfuse.fft_conv.default


def op_node(out: Node) -> Node:
    """The fused operator's call behind what ``rewrite_site`` returned (it may be a view of it)."""
    node = out
    while isinstance(node, Node) and node.args:
        if node.op == "call_function" and node.target is FFT_CONV:
            return node
        node = node.args[0]  # movedim and the replayed layout views take it first
    raise RuntimeError(f"convfuse: no fft_conv call behind {out}")


def evaluate(gm: GraphModule, example_inputs: list, wanted: list[Node]) -> dict[Node, Any]:
    """Values of ``wanted`` on the example inputs: only their ancestors run, on input clones."""
    needed: set[Node] = set()
    frontier = list(wanted)
    while frontier:
        node = frontier.pop()
        if node in needed:
            continue
        needed.add(node)
        frontier.extend(node.all_input_nodes)
    interp = torch.fx.Interpreter(gm)
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    with torch.no_grad():
        for node, value in zip(placeholders, example_inputs):
            if node in needed:
                interp.env[node] = value.detach().clone() if isinstance(value, torch.Tensor) else value
        for node in gm.graph.nodes:
            if node in needed and node.op != "placeholder":
                interp.env[node] = interp.run_node(node)
    return interp.env


@dataclass
class SiteValues:
    """The fused operator's arguments at one site, evaluated on the example inputs."""

    args: list  # the op's arguments, the kernel at index 1 (last-axis layout)
    exact: torch.Tensor | None = field(default=None, repr=False)
    _taps: torch.Tensor | None = field(default=None, repr=False)  # tail energies per tap
    _bins: torch.Tensor | None = field(default=None, repr=False)  # tail energies per one-sided bin

    @staticmethod
    def of(op: Node, env: dict[Node, Any]) -> "SiteValues":
        return SiteValues([env[a] if isinstance(a, Node) else a for a in op.args])

    @property
    def k(self) -> torch.Tensor:
        return self.args[1]

    @property
    def n(self) -> int:
        return int(self.args[5])

    def output(self, k: torch.Tensor) -> torch.Tensor:
        args = list(self.args)
        args[1], args[12] = k, "reference"
        with torch.no_grad():
            return FFT_CONV(*args)

    def kernel_change(self, policy: Policy) -> float:
        """||k' - k|| / ||k|| (k as the operator reads it: at most n taps); no convolution run.

        From energies computed once per site: a partial kernel drops the taps from ``length``
        on; a frequency cut drops the bins from ``M`` on, whose energy in time is, by Parseval
        for a real length-n signal, (1/n) * sum_j w_j |K_j|^2 with w = 1 at DC and Nyquist, else 2.
        """
        if self._taps is None:
            k = self.k[..., : self.n].double()
            per_tap = k.square().flatten(0, -2).sum(0) if k.dim() > 1 else k.square()
            self._taps = per_tap.flip(0).cumsum(0).flip(0)  # energy of taps t.. end
            spectrum = torch.fft.rfft(k, n=self.n).abs().square()
            per_bin = spectrum.flatten(0, -2).sum(0) if spectrum.dim() > 1 else spectrum
            weight = torch.full_like(per_bin, 2.0)
            weight[0] = 1.0
            if self.n % 2 == 0:
                weight[-1] = 1.0
            self._bins = (per_bin * weight / self.n).flip(0).cumsum(0).flip(0)
        total = float(self._taps[0]) if self._taps.numel() else 0.0
        if total <= 0:
            return 0.0
        if isinstance(policy, PartialKernel) and policy.length is not None:
            dropped = float(self._taps[policy.length]) if policy.length < self._taps.numel() else 0.0
        elif isinstance(policy, FrequencySparse) and policy.bins is not None:
            dropped = float(self._bins[policy.bins]) if policy.bins < self._bins.numel() else 0.0
        else:
            return 0.0
        return math.sqrt(max(dropped, 0.0) / total)

    def output_error(self, policy: Policy) -> float:
        """||y_policy - y_exact|| / ||y_exact|| on the example inputs."""
        if self.exact is None:
            self.exact = self.output(self.k).double()
        y = self.output(apply_to_tensor(policy, self.k, self.n)).double()
        return float((y - self.exact).norm() / self.exact.norm().clamp_min(1e-300))

    def rel_error(self, policy: Policy) -> tuple[float, float]:
        """(output relative error, kernel relative change) of ``policy`` at this site."""
        return self.output_error(policy), self.kernel_change(policy)


def _pad_to(t: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, length - t.shape[-1]))


def auto_search(budget: float, v: SiteValues, out_shape) -> tuple[Policy, str, float, float]:
    """The cheapest partial length or frequency cut within ``budget`` (output and kernel).

    Partial lengths and frequency cuts are searched as two families and the cheaper winner is
    kept; a partial kernel *and* a frequency cut together is never cheaper than the cut alone
    here, and costs more error: the spectrum mask is defined at size n, where it makes the
    truncated kernel dense again in time, so the block-wise and direct algorithms a partial
    kernel buys no longer apply and what remains is the frequency cut's own cost
    (``row_cost``).  Both errors add, so the pair would also need each cut milder.
    """
    K = min(v.k.shape[-1], v.n)
    nb = v.n // 2 + 1
    families = {
        "partial": [PartialKernel(length=K >> j) for j in range(K.bit_length() - 1, 0, -1)],
        "freq": [FrequencySparse(bins=nb >> j) for j in range(nb.bit_length() - 1, 0, -1)],
    }
    found = []
    tried = runs = 0
    for candidates in families.values():
        for policy in candidates:  # most aggressive first; stop at the first within budget
            tried += 1
            kernel = v.kernel_change(policy)
            if kernel > budget:
                continue  # the cheap bound first: no convolution run for a cut the kernel rules out
            out = v.output_error(policy)
            runs += 1
            if out <= budget:
                flops, _ = estimate_saved(policy, v.n, K, out_shape)
                found.append((-(flops or 0.0), str(policy), policy, out, kernel))
                break
    if not found:
        return Exact(), (f"auto: no partial length or frequency cut within {budget:g} ({tried} considered, "
                         f"{runs} measured)"), 0.0, 0.0
    _, _, policy, out, kernel = min(found)
    return policy, f"auto: {policy} within {budget:g} ({tried} considered, {runs} measured)", out, kernel


# ---- the step --------------------------------------------------------------------------------------


def choose_policies(gm: GraphModule, sites: list[Node], opts: Any, example_inputs: list) -> dict[Node, SitePlan]:
    """One ``SitePlan`` per site: scope, asked and applied policy, measured error, savings."""
    plans: dict[Node, SitePlan] = {}
    pending: dict[str, tuple[SitePlan, Match]] = {}
    for site in sites:
        sc = resolve(site, opts.scope, opts.policy, opts.module_policies)
        plan = SitePlan(asked=sc.policy, in_scope=sc.in_scope, chosen_by=sc.chosen_by, reason=sc.reason)
        plans[site] = plan
        if not sc.in_scope:
            continue
        if isinstance(sc.policy, Exact):
            plan.applied = sc.policy
            continue
        m = match_or_refuse(site)
        if isinstance(m, Refusal):
            continue  # the rewrite step reports the refusal
        plan.match = m
        if (obstacle := m.policy_obstacle(sc.policy)) is not None:
            plan.reason = obstacle
            continue
        plan.applied, plan.note = resolve_static(sc.policy, m)
        if plan.applied is None and not isinstance(sc.policy, Auto):
            plan.reason = plan.note
        elif not isinstance(plan.applied, Exact):
            pending[site.name] = (plan, m)
    if pending:
        _measure(gm, sites, example_inputs, pending)
    for plan in plans.values():
        if plan.applied is not None and plan.chosen_by != "options":
            plan.note = f"{plan.note}; asked by {plan.chosen_by}" if plan.note else f"asked by {plan.chosen_by}"
    return plans


def resolve_late(plan: SitePlan, m: Match) -> None:
    """Resolve a plan from sizes alone, for a site the policy step could not see matched."""
    if not isinstance(plan.asked, Exact) and (obstacle := m.policy_obstacle(plan.asked)) is not None:
        plan.reason = obstacle
        return
    applied, note = resolve_static(plan.asked, m)
    if applied is None and isinstance(plan.asked, Auto):
        applied, note = Exact(), "auto: no measurement on the example inputs for this site, kept exact"
    plan.applied, plan.note = applied, note
    if applied is None:
        plan.reason = note


def _exact_ops(gm: GraphModule, sites: list[Node], wanted: set[str]) -> tuple[GraphModule, dict[str, Node]]:
    """A copy of ``gm`` with every site rewritten exactly (as the rewrite step will), and the
    fused operator's call for each wanted site (by the inverse transform's node name)."""
    copy_gm = GraphModule(gm, copy.deepcopy(gm.graph))
    by_name = {node.name: node for node in copy_gm.graph.nodes}
    ops = {}
    for site in sites:
        node = by_name.get(site.name)
        m = match_or_refuse(node) if node is not None else None
        if isinstance(m, Match):
            out = rewrite_site(copy_gm, m, "reference")
            if site.name in wanted:
                ops[site.name] = op_node(out)
    return copy_gm, ops


def _measure(gm: GraphModule, sites: list[Node], example_inputs: list, pending: dict[str, tuple[SitePlan, Match]]):
    try:
        copy_gm, ops = _exact_ops(gm, sites, set(pending))
        env = evaluate(copy_gm, example_inputs, [a for op in ops.values() for a in op.all_input_nodes])
    except Exception as exc:  # noqa: BLE001 - measuring must not stop compiling
        log.warning("convfuse: could not evaluate the example inputs to measure policies: %s", exc)
        ops, env = {}, {}
    for name, (plan, m) in pending.items():
        out_shape = tuple(example_value(m.result).shape)
        values = SiteValues.of(ops[name], env) if name in ops else None
        if plan.applied is None:  # Auto
            if values is None:
                plan.applied, plan.note = Exact(), "auto: the example inputs could not be evaluated: kept exact"
                continue
            plan.applied, plan.note, plan.rel_error, plan.kernel_rel_change = auto_search(
                plan.asked.max_rel_error, values, out_shape)
        elif values is not None:
            plan.rel_error, plan.kernel_rel_change = values.rel_error(plan.applied)
        if isinstance(plan.applied, Exact):
            plan.flops_saved, plan.bytes_saved = 0.0, 0.0
        else:
            K = values.k.shape[-1] if values is not None else m.spec().K
            plan.flops_saved, plan.bytes_saved = estimate_saved(plan.applied, m.spec().n, K, out_shape)


def policy_rewrite_args(policy: Policy | None) -> dict[str, Any]:
    """``rewrite_site``'s keyword arguments that put ``policy`` in the graph."""
    if policy is None:
        return {}
    return {"kernel_transform": kernel_transform(policy), "constant_kernel": keeps_constant_kernel(policy),
            "spectrum_bins": spectrum_bins(policy)}
