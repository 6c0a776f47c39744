"""Per-shape plans for the CPU path: what a call's shapes decide, decided once per shape.

An operator call's fixed cost was about 0.12-0.3 ms of Python before any transform: checking
arguments, broadcasting shapes, choosing the algorithm and FFT size, laying out rows, cutting
tiles, choosing threads.  All of it depends only on the shapes, strides and dtypes of the
operands and on the operator's non-tensor arguments, so it is computed once per such key
(``convfuse.backends.cpu.CpuCall``) and looked up by a tuple afterwards.  Nothing a plan holds
depends on values: the kernel-spectrum cache (``cpu_cache``) still decides per call, by value,
whether a prepared spectrum may be reused.

The key includes ``convfuse.config.cpu_algo`` (a forced algorithm), read per call as a module
attribute (no environment lookup).  Plans are few (one per distinct call shape in a model);
the table is bounded (``MAX_CALLS``: when full, it starts again empty).  Any setting change drops them all
(``config.on_change``): a plan is made under the settings of its time, and the C++ kernels'
copies (cpu_native) are handed over only when a plan is built, so they go and come back together.
"""

from __future__ import annotations

from typing import Callable, Hashable

from torch import Tensor

from convfuse import config

MAX_CALLS = 512
_calls: dict[Hashable, object] = {}
stats = {"built": 0}


def _sig(t: Tensor | None):
    return None if t is None else (t.shape, t.stride(), t.dtype)


def signature(u: Tensor, k: Tensor, D: Tensor | None, pre_gate: Tensor | None, post_gate: Tensor | None) -> tuple:
    """The operands' part of a plan key: shapes, strides and dtypes (devices are the caller's)."""
    return (u.shape, u.stride(), u.dtype, k.shape, k.stride(), k.dtype, _sig(D), _sig(pre_gate), _sig(post_gate))


def lookup(key: Hashable):
    return _calls.get(key)


def store(key: Hashable, call):
    if len(_calls) >= MAX_CALLS:
        # all at once, the C++ table's copies with them: a copy is handed over only when its
        # plan is built, so a plan kept here after the C++ table dropped its copy would stay in
        # Python for good.  The settings are unchanged: the same generation (cpu_native.add)
        _drop_all(new_generation=False)
    _calls[key] = call
    stats["built"] += 1
    return call


def call_for(key: Hashable, u, k, D, pre_gate, post_gate, p, force=None):
    """The plan for this key, built from the call (and stored) the first time."""
    call = _calls.get(key)
    if call is None:
        from convfuse.backends.cpu import CpuCall

        call = store(key, CpuCall(u, k, D, pre_gate, post_gate, p, force))
    return call


def _drop_all(new_generation: bool) -> None:
    from convfuse.backends import cpu_native

    _calls.clear()
    cpu_native.clear(new_generation)


def clear() -> None:
    """Forget every plan, the C++ table's copies included (they are made from these)."""
    _drop_all(new_generation=True)
    stats["built"] = 0


def size() -> int:
    return len(_calls)


config.on_change(clear)
