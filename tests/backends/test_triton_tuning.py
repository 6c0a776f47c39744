"""Warps and stages per plan (triton_monarch/tuning.py): the table at launch, the cache, the
CONVFUSE_TRITON_WARPS override, and the one-time measurement's selection with a fake timer (the
timing path runs only on CUDA; here its guard is patched open and the timer is fake)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels (interpreted on CPU) need triton")

from triton.runtime.errors import OutOfResources  # noqa: E402

from convfuse import config  # noqa: E402
from convfuse.backends.reference import fft_conv_reference  # noqa: E402
from convfuse.backends.triton_monarch import kernels, launch, tuning  # noqa: E402
from convfuse.spec import ConvParams  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", True)
    tuning.clear()
    yield
    tuning.clear()


@pytest.fixture
def launched(monkeypatch):
    """The launch options of every interpreted fused-kernel launch."""
    seen = []
    real = kernels.MONARCH_CONV2[True]

    class Spy:
        def __getitem__(self, grid):
            def call(*args, **kw):
                seen.append({k: kw[k] for k in ("num_warps", "num_stages") if k in kw})
                return real[grid](*args, **kw)
            return call

    monkeypatch.setitem(kernels.MONARCH_CONV2, True, Spy())
    return seen


def _call(n, L, rows=2):
    g = torch.Generator().manual_seed(n)
    u, k = torch.randn(rows, L, generator=g), torch.randn(L, generator=g)  # one kernel: kernels.py's pairing
    p = ConvParams(n, 0, L)
    return launch.run(u, k, None, None, None, p), fft_conv_reference(u, k, None, None, None, p)


def test_table_reaches_the_launch(launched):
    _call(2048, 1000)
    _call(256, 100)
    assert launched == [{"num_warps": 8}, {"num_warps": 4}]  # 2048: fewer registers and spills at 8 warps


def test_choice_cached_per_plan_dtype_device():
    a = tuning.options("fused", 2048, torch.float16, CPU, ("k",))
    assert a == {"num_warps": 8} and len(tuning._CHOSEN) == 1
    tuning.TABLE[("fused", 2048)]["*"] = (16, 2)  # a later table change does not reach a cached key
    try:
        assert tuning.options("fused", 2048, torch.float16, CPU, ("k",)) == a
        assert tuning.options("fused", 2048, torch.float32, CPU, ("k",)) == {"num_warps": 16, "num_stages": 2}
    finally:
        tuning.TABLE[("fused", 2048)]["*"] = (8, None)
    assert len(tuning._CHOSEN) == 2


def test_config_warps_override(launched):
    with config.patch("triton_warps", 16):
        _call(2048, 1000)
        assert tuning.options("grad2", 512, torch.float32, CPU) == {"num_warps": 16}
    _call(2048, 1000)
    assert launched == [{"num_warps": 16}, {"num_warps": 8}]
    assert tuning.options("grad2", 512, torch.float32, CPU) == {"num_warps": 8}  # grad.GRAD_WARPS


def test_measurement_runs_only_on_cuda():
    assert not tuning._may_measure(CPU)
    calls = []
    with tuning.measuring():
        tuning.options("fused", 1024, torch.float16, CPU, (), run=lambda o: calls.append(o),
                       timer=lambda fn: (fn(), 1.0)[1])
    assert calls == [] and tuning.TIMED == []


def _fake_timer(ms_by_choice, timed):
    def timer(fn):
        opts = fn()  # the run closure below returns the options it was given
        choice = (opts["num_warps"], opts.get("num_stages"))
        timed.append(choice)
        if ms_by_choice[choice] is None:
            raise OutOfResources(300000, 232448, "shared memory")
        return ms_by_choice[choice]
    return timer


def test_measurement_picks_the_fastest_that_fits(monkeypatch):
    monkeypatch.setattr(tuning, "_may_measure", lambda device: True)
    ms = {(4, None): 3.0, (8, None): 2.0, (8, 2): 1.5, (16, None): None}  # 16 warps: does not fit
    timed = []
    with tuning.measuring():
        got = tuning.options("inner", 1024, torch.float16, CPU, ("x",), run=lambda o: o,
                             timer=_fake_timer(ms, timed))
        assert got == {"num_warps": 8, "num_stages": 2}
        assert timed[0] == tuning.table_entry("inner", 1024, torch.float16)  # the table's entry first
        assert sorted(timed, key=str) == sorted(ms, key=str)
        again = tuning.options("inner", 1024, torch.float16, CPU, ("x",), run=lambda o: o,
                               timer=_fake_timer(ms, timed))
    assert again == got and len(timed) == 4  # measured once per key
    assert tuning.TIMED == [("inner", 1024, ("x",), torch.float16, CPU)]


def test_measurement_ties_keep_the_table(monkeypatch):
    monkeypatch.setattr(tuning, "_may_measure", lambda device: True)
    with tuning.measuring():
        got = tuning.options("fused", 2048, torch.float16, CPU, (), run=lambda o: o,
                             timer=_fake_timer({c: 1.0 for c in tuning.CANDIDATES}, []))
    assert got == {"num_warps": 8}


def test_measuring_a_real_call_leaves_its_result_right(monkeypatch, launched):
    # the launcher's closure runs once per candidate, then once more with the winner: the fused
    # kernel's output must not depend on how often it ran
    monkeypatch.setattr(tuning, "_may_measure", lambda device: True)
    ms = iter([2.0, 1.0, 3.0, 4.0])
    monkeypatch.setattr(tuning, "TIMER", lambda fn: (fn(), next(ms))[1])
    with tuning.measuring():
        out, ref = _call(256, 100)
        assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5
        assert [o["num_warps"] for o in launched] == [4, 8, 8, 16, 8]  # four timed, then the winner
        assert launched[-1] == {"num_warps": 8}
        out2, _ = _call(256, 100)  # cached: one launch, no timing (the fake timer has no values left)
    assert torch.equal(out, out2) and len(launched) == 6 and len(tuning.TIMED) == 1


def test_frames_keep_4_warps_with_fp32_dots_at_2048():
    assert tuning.table_entry("fused_frames", 2048, torch.float32) == (4, None)
    assert tuning.table_entry("fused_frames", 2048, torch.float16) == (8, None)
    assert tuning.table_entry("fused_frames", 1024, torch.float16) == (4, None)
    assert tuning.table_entry("fused_twok", 2048, torch.float16) == (4, None)  # compiled at 4 without spills
