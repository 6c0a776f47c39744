"""The rewrite report: one record per FFT site, what convfuse did with it and why.

``RewriteReport.to_json()`` is the one serializer: the Python API and the CLI's
``--json`` both go through it, so they cannot drift.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from convfuse.spec import ConvSpec

REWRITTEN, SKIPPED = "rewritten", "skipped"
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def user_source(stack_trace: str | None) -> str:
    """The innermost user frame of an FX node's stack trace, as "file.py:line"."""
    frames = _FRAME.findall(stack_trace or "")
    if not frames:
        return "<unknown>"
    path, line = frames[-1]
    return f"{path}:{line}"


@dataclass
class SiteReport:
    status: str  # "rewritten" | "skipped"
    pattern: str  # the family: causal-conv, circular-conv, correlation, spectral-filter, ...
    source: str  # the user's file.py:line of the inverse transform
    reason: str = ""  # why it was skipped (empty when rewritten)
    spec: ConvSpec | None = None
    kernel: str = ""  # the implementation that runs it
    policy: str = "exact"  # the policy asked for (the compile's, a region's or a module_policies entry)
    policy_applied: str = ""  # what the rewrite computes ("exact" when a partial length >= K); "" if skipped
    rel_error: float | None = None  # measured ||y_policy - y_exact|| / ||y_exact|| on the example inputs
    flops_saved: float | None = None  # estimated per call against the exact rewrite (passes/policy.py)
    bytes_saved: float | None = None
    policy_note: str = ""  # how the applied policy was chosen, by which rule
    graph: int = 0  # which compiled graph (graph breaks split a model into several)
    node: str = ""  # the FX node of the inverse transform
    shapes: dict[str, list] = field(default_factory=dict)
    saved_copies: list[str] = field(default_factory=list)  # operands saved for backward as copies

    @property
    def rewritten(self) -> bool:
        return self.status == REWRITTEN

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = self.spec.to_dict() if self.spec is not None else None
        return d

    def line(self) -> str:
        what = self.spec.describe() if self.spec is not None else self.reason
        if self.spec is not None and self.reason:
            what = f"{what}: {self.reason}"
        kernel = f" kernel={self.kernel}" if self.kernel else ""
        policy = ""
        if self.policy_applied and self.policy_applied != "exact":
            policy = f" policy={self.policy_applied}"
            if self.rel_error is not None:
                policy += f" rel_error={self.rel_error:.2e}"
        elif self.rewritten and self.policy != "exact":
            policy = f" policy={self.policy}->exact"
        copies = f" saved-copies={','.join(self.saved_copies)}" if self.saved_copies else ""
        return f"[{self.status}] {self.pattern} at {self.source}: {what}{kernel}{policy}{copies}"


@dataclass
class RewriteReport:
    sites: list[SiteReport] = field(default_factory=list)
    graphs: int = 0

    @property
    def rewritten(self) -> list[SiteReport]:
        return [s for s in self.sites if s.rewritten]

    @property
    def skipped(self) -> list[SiteReport]:
        return [s for s in self.sites if not s.rewritten]

    def summary(self) -> str:
        n, m = len(self.sites), len(self.rewritten)
        pct = f" ({100 * m / n:.0f}%)" if n else ""
        return f"{n} FFT site{'s' if n != 1 else ''}, {m} rewritten{pct}"

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "graphs": self.graphs, "sites": [s.to_dict() for s in self.sites]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=kwargs.pop("indent", 2), **kwargs)

    def __str__(self) -> str:
        lines = [f"convfuse: {self.summary()} in {self.graphs} graph{'s' if self.graphs != 1 else ''}"]
        lines += ["  " + s.line() for s in self.sites]
        return "\n".join(lines)


# Reports being collected in this context (convfuse.explain pushes one; explain inside explain
# nests): every graph compiled in it adds to each.  A context variable, so a report belongs to
# the compiles of its own thread (Dynamo calls the backend on the thread that runs the model)
# or asyncio task: two explain() calls on two threads never see each other's sites.
_collectors: contextvars.ContextVar[tuple[RewriteReport, ...]] = contextvars.ContextVar(
    "convfuse_report_collectors", default=())
# The report of the last graph compiled in this process, on any thread (a debugging aid).
last_graph_report: RewriteReport | None = None


@contextlib.contextmanager
def collecting() -> Iterator[RewriteReport]:
    report = RewriteReport()
    token = _collectors.set(_collectors.get() + (report,))
    try:
        yield report
    finally:
        _collectors.reset(token)


def publish(graph_report: RewriteReport) -> None:
    global last_graph_report
    last_graph_report = graph_report
    for report in _collectors.get():
        for site in graph_report.sites:
            site.graph = report.graphs
            report.sites.append(site)
        report.graphs += 1
