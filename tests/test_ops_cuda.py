"""The operator's CUDA registration: its own kernel entry, run on the inputs' own GPU."""

from __future__ import annotations

import contextlib

import pytest
import torch

import convfuse
from convfuse.ops import on_device

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("op", ["convfuse::fft_conv", "convfuse::fft_conv_grad"])
def test_cuda_kernel_is_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")


def test_guard_is_a_no_op_off_cuda():
    assert isinstance(on_device(torch.zeros(1)), contextlib.nullcontext)


def _causal(u, k):
    L = u.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u.double(), n=2 * L) * torch.fft.rfft(k.double(), n=2 * L), n=2 * L)[..., :L]


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_guard_selects_the_tensors_device():
    u = torch.zeros(1, device="cuda")
    with on_device(u):
        assert torch.cuda.current_device() == u.device.index


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("kernel", ["triton", "auto"])
def test_tensors_on_a_non_current_gpu_run_on_their_own(kernel):
    torch.cuda.set_device(0)
    g = torch.Generator().manual_seed(0)
    u, k = torch.randn(2, 4, 500, generator=g), torch.randn(4, 500, generator=g)
    uc, kc = u.to("cuda:1").requires_grad_(), k.to("cuda:1").requires_grad_()
    out = convfuse.fftconv(uc, kc, kernel=kernel)
    assert out.device == uc.device and torch.cuda.current_device() == 0
    ref = _causal(u, k)
    assert (out.double().cpu() - ref).abs().max() / ref.abs().max() < 1e-4
    out.sum().backward()
    assert uc.grad.device == uc.device and kc.grad.device == kc.device
