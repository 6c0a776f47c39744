"""State shared across calls (issue 12, item 6): reports, thread counts, shape guards.

- a report belongs to the compiles of its own context: two explain() calls on two threads do
  not mix their sites;
- a CPU call leaves the caller's intra-op thread count, and the count threads started later get,
  as they were: pooled or not, and when a tile raises;
- proofs about symbolic sizes add no guards: a rewritten dynamic site compiles once for every
  length, as the same program compiled without convfuse does.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
from torch._guards import detect_fake_mode

import convfuse
import spellings as sp
from convfuse import api, config
from convfuse.backend import convfuse_backend
from convfuse.backends import cpu
from convfuse.report import collecting

F64 = torch.float64


# ---- reports


def _two_sites(u, k):
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
    return torch.fft.irfft(torch.fft.rfft(y) * torch.fft.rfft(k), n=L)  # circular


def test_two_explains_on_two_threads_each_report_only_their_own_sites(monkeypatch):
    # Both reports are being collected before either model compiles: with one collector list for
    # the process, each would receive the other's sites too.
    barrier = threading.Barrier(2, timeout=120)
    real_collecting = api.collecting

    @contextlib.contextmanager
    def collecting_then_wait():
        with real_collecting() as report:
            barrier.wait()
            yield report

    monkeypatch.setattr(api, "collecting", collecting_then_wait)
    jobs = {
        "one": (sp.s4_mul, (torch.randn(2, 4, 16), torch.randn(4, 16))),
        "two": (_two_sites, (torch.randn(2, 3, 24), torch.randn(3, 24))),
    }
    reports, errors = {}, []

    def explain(name):
        fn, args = jobs[name]
        try:
            reports[name] = convfuse.explain(fn, *args)
        except BaseException as exc:  # noqa: BLE001  reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=explain, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    one, two = reports["one"], reports["two"]
    assert len(one.sites) == 1 and one.graphs == 1
    assert len(two.sites) == 2 and two.graphs == 1
    assert [s.shapes["u"] for s in one.sites] == [["2", "4", "16"]]
    assert all(s.shapes["u"][1:] == ["3", "24"] for s in two.sites)
    assert {s.pattern for s in two.sites} == {"causal-conv", "circular-conv"}


def test_explain_inside_a_collecting_block_reports_to_both():
    with collecting() as outer:
        inner = convfuse.explain(sp.s4_mul, torch.randn(2, 4, 16), torch.randn(4, 16))
    assert len(inner.sites) == 1 and len(outer.sites) == 1
    with collecting() as after:
        pass
    assert after.sites == []  # nothing left collecting


# ---- intra-op thread counts


def _count_in_a_new_thread() -> int:
    out = []
    t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    t.start()
    t.join()
    return out[0]


@contextlib.contextmanager
def _caller_threads(count: int | None):
    saved = torch.get_num_threads()
    try:
        if count is not None:
            torch.set_num_threads(count)
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)


def _calls():
    # forward (fft and direct), the fused backward, and fft_convnd (one intra-op thread per call)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(3, 16, 40, dtype=F64, generator=gen, requires_grad=True)
    k = torch.randn(16, 40, dtype=F64, generator=gen, requires_grad=True)
    short = torch.randn(16, 5, dtype=F64, generator=gen)
    y = torch.ops.convfuse.fft_conv(u, k, None, None, None, 80, 0, 40, 1.0, 0.0, False, F64, "cpu")
    y.backward(torch.randn_like(y))
    torch.ops.convfuse.fft_conv(u.detach(), short, None, None, None, 80, 0, 40, 1.0, 0.0, False, F64, "cpu")
    x2, k2 = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(3, 8, 8, generator=gen)
    torch.ops.convfuse.fft_convnd(x2, k2, [8, 8], [0, 0], [8, 8], 1.0, 0.0, False, torch.float32)


@pytest.mark.parametrize("count", [None, 1, 3], ids=["default", "one", "three"])
def test_calls_leave_the_callers_thread_count(cpu_threading, count):
    with _caller_threads(count) as want:
        new_thread_before = _count_in_a_new_thread()
        _calls()
        assert torch.get_num_threads() == want
        assert _count_in_a_new_thread() == new_thread_before  # the count new threads start with


@pytest.mark.parametrize("where", ["caller", "pool"])
@pytest.mark.parametrize("count", [None, 1, 3], ids=["default", "one", "three"])
def test_a_tile_that_raises_leaves_the_callers_thread_count(cpu_threading, monkeypatch, where, count):
    if where == "pool" and (cpu_threading == "caller" or count == 1):
        pytest.skip("no pool thread runs a tile")
    real, calls = cpu.fft_tile, []

    def failing(*args, **kwargs):
        in_pool = threading.current_thread().name.startswith("convfuse-cpu")
        calls.append(in_pool)
        if in_pool == (where == "pool") and len(calls) > 1:
            raise RuntimeError("tile failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu, "fft_tile", failing)
    monkeypatch.setattr(config, "cpu_algo", "fft")
    u, k = torch.randn(2, 64, 40, dtype=F64), torch.randn(64, 40, dtype=F64)
    args = (None, None, None, 80, 0, 40, 1.0, 0.0, False, F64, "cpu")
    with _caller_threads(count) as want:
        new_thread_before = _count_in_a_new_thread()
        with pytest.raises(RuntimeError, match="tile failed"):
            for _ in range(20):  # a pool thread may find no tile left to take on one call
                torch.ops.convfuse.fft_conv(u, k, *args)
        assert torch.get_num_threads() == want
        assert _count_in_a_new_thread() == new_thread_before
        monkeypatch.setattr(cpu, "fft_tile", real)
        got = torch.ops.convfuse.fft_conv(u, k, *args)  # the pool still works
        torch.testing.assert_close(got, torch.ops.convfuse.fft_conv(u, k, *args[:-1], "reference"))
        assert torch.get_num_threads() == want


# ---- shape proofs add no guards


def _causal(u, k):
    L = u.shape[-1]
    n = 2 * L
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]


def _gated(u, k, v):
    L = u.shape[-1]
    n = 2 * L
    return torch.fft.irfft(torch.fft.rfft(u * v, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L] * v


def _at_sum(u, k):  # n = L + K: linear for every pair of lengths
    n = u.shape[-1] + k.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]


# (L, K): the kernel shorter and longer than the signal, so a guard on n >= L + K - 1 (the
# linearity a proof may use but a rewrite never needs) would flip between calls
LENGTHS = [(16, 9), (24, 40), (40, 8), (64, 100), (33, 33)]


@pytest.mark.parametrize("fn", [_causal, _gated, _at_sum], ids=lambda f: f.__name__.strip("_"))
def test_a_dynamic_site_compiles_once_and_the_rewrite_adds_no_guards(fn):
    def inputs(L, K):
        u, k = torch.randn(2, 4, L), torch.randn(4, K)
        return (u, k, torch.randn(2, 4, L)) if fn is _gated else (u, k)

    def compile_counting(use_convfuse):
        graphs, added, reports = [], [], []

        def backend(gm, example_inputs):
            graphs.append(gm)
            if not use_convfuse:
                return gm.forward
            shape_env = detect_fake_mode(example_inputs).shape_env
            before = list(shape_env.guards)
            compiled = convfuse_backend(gm, example_inputs, options={"inner": "eager"})
            added.extend(str(g.expr) for g in shape_env.guards[len(before):])
            return compiled

        torch._dynamo.reset()
        compiled = torch.compile(fn, backend=backend, dynamic=True)
        for L, K in LENGTHS:
            args = inputs(L, K)
            with collecting() as report:
                got = compiled(*args)
            reports.append(report)
            torch.testing.assert_close(got, fn(*args), rtol=1e-4, atol=1e-4)
        return graphs, added, reports

    plain, _, _ = compile_counting(False)
    graphs, added, reports = compile_counting(True)
    assert len(plain) == 1
    # nothing the pass proved became a guard, so no length recompiles more than without convfuse
    assert (added, len(graphs)) == ([], len(plain))
    assert [s.status for s in reports[0].sites] == ["rewritten"]
    assert sum(node.target is torch.ops.convfuse.fft_conv.default for node in graphs[0].graph.nodes) == 1
