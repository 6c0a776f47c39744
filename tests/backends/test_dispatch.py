"""Which implementation each kernel option runs, per device."""

from __future__ import annotations

import pytest
import torch

from convfuse import config
from convfuse.backends.dispatch import KernelUnavailable, choose_kernel
from convfuse.spec import ConvParams


def test_auto_picks_cpu_on_cpu_and_the_measured_choice_on_cuda():
    assert choose_kernel("auto", "cpu").name == "cpu"
    assert choose_kernel("auto", "cuda").name == "triton-or-cufft"
    assert choose_kernel("reference", "cuda").name == "reference"


def test_forced_kernels_that_cannot_run_say_why(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", False)
    with pytest.raises(KernelUnavailable, match="interpreter"):
        choose_kernel("triton", "cpu")
    with pytest.raises(KernelUnavailable, match="cpu"):
        choose_kernel("cpu", "cuda")


def test_a_triton_failure_while_measuring_means_cufft(monkeypatch):
    from convfuse.backends.triton_monarch import launch, measured

    u, k = torch.randn(2, 3, 128), torch.randn(3, 128)
    p = ConvParams(256, 0, 128, out_dtype=torch.float32)
    measured.CHOICES.clear()
    monkeypatch.setattr(launch, "resolve", lambda *args: object())  # pretend a plan exists

    monkeypatch.setattr(launch, "run", lambda *args: (_ for _ in ()).throw(RuntimeError("no kernel")))
    # The timer runs each path once: the Triton one raises, the cuFFT one returns.
    assert measured.choose(u, k, None, None, None, p, timer=lambda fn, device: (fn(), 1.0)[1]) == "cufft"
    measured.CHOICES.clear()
