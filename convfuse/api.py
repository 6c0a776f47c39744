"""The public entry points besides the backend itself: explain() and compile()."""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from convfuse.backend import convfuse_backend
from convfuse.report import RewriteReport, collecting


def explain(model_or_fn: Callable, *example_inputs: Any, **compile_kwargs: Any) -> RewriteReport:
    """Compile ``model_or_fn`` with convfuse, run it once on ``example_inputs``, return the report.

    Like ``torch._dynamo.explain``: the model is traced afresh (its own compile cache is not
    reused), and ``compile_kwargs`` are torch.compile's (``dynamic=``, ``mode=``,
    ``options=``).  Only the rewrite is reported, so the rest of the graph runs eagerly
    unless ``options["inner"]`` asks for another compiler.
    """
    options = dict(compile_kwargs.pop("options", None) or {})
    options.setdefault("inner", "eager")
    mode = compile_kwargs.pop("mode", None)
    # A fresh backend object: Dynamo guards on the backend, so this always recompiles.
    backend = functools.partial(convfuse_backend, options=options, mode=mode)
    compiled = torch.compile(model_or_fn, backend=backend, **compile_kwargs)
    with collecting() as report:
        compiled(*example_inputs)
    return report


def compile(model: Callable, *, policy: Any = None, kernel: str | None = None, **compile_kwargs: Any):
    """``torch.compile(model, backend="convfuse", options={"policy": policy, "kernel": kernel, ...})``."""
    options = dict(compile_kwargs.pop("options", None) or {})
    if policy is not None:
        options["policy"] = policy
    if kernel is not None:
        options["kernel"] = kernel
    return torch.compile(model, backend="convfuse", options=options or None, **compile_kwargs)
