"""convfuse.fftconv / convfuse.FFTConv (the FlashFFTConv drop-in) against plain torch.

The references below import nothing from convfuse: the causal convolution as a direct sum
(conv1d over the flipped kernel, fp64) and FlashFFTConv's definition at a given FFT size
(ifft(fft(u * pregate, N) * fft(k, N)).real[..., :L] * postgate, fp64).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import convfuse

CUDA = torch.cuda.is_available()


def causal_reference(u, k, D=None, pre=None, post=None):
    """y[t] = sum_{j<=t} ue[j] k[t-j] + ue[t] D, times post; fp64, by a direct sum."""
    ue = u.double() if pre is None else u.double() * pre.double()
    B, H, L = ue.shape
    kk = k.double()[..., :L]
    w = kk.flip(-1).unsqueeze(1)  # (H, 1, K): conv1d correlates, so flip
    y = F.conv1d(F.pad(ue, (kk.shape[-1] - 1, 0)), w, groups=H)
    if D is not None:
        y = y + ue * (D.double().unsqueeze(-1) if D.dim() == 1 else D.double())
    if post is not None:
        y = y * post.double()
    return y


def flash_reference(u, k, N, pre=None, post=None):
    """FlashFFTConv's definition at FFT size N (complex FFTs, real part), fp64."""
    ue = u.double() if pre is None else u.double() * pre.double()
    y = torch.fft.ifft(torch.fft.fft(ue, n=N) * torch.fft.fft(k.double(), n=N), n=N).real[..., : u.shape[-1]]
    return y if post is None else y * post.double()


def _leaves(shapes, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [None if s is None else torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
            .requires_grad_() for s in shapes]


def _compare(out, ref, leaves, ref_leaves, rtol, grad_rtol=None):
    assert out.shape == ref.shape
    scale = ref.abs().max().clamp_min(1e-30)
    err = (out.double() - ref).abs().max() / scale
    assert err <= rtol, f"output: relative max error {err:.2e} > {rtol:.0e}"
    g = torch.Generator().manual_seed(1)
    cot = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (out.double() * cot).sum().backward()
    (ref * cot).sum().backward()
    for i, (a, b) in enumerate(zip(leaves, ref_leaves)):
        if a is None:
            continue
        assert a.grad is not None and a.grad.dtype == a.dtype and a.grad.shape == a.shape, i
        s = b.grad.abs().max().clamp_min(1e-30)
        e = (a.grad.double() - b.grad).abs().max() / s
        assert e <= (grad_rtol or rtol), f"gradient of argument {i}: relative max error {e:.2e}"


def _ref_copies(leaves):
    return [None if t is None else t.detach().double().requires_grad_() for t in leaves]


@pytest.mark.parametrize("L,K,D,gates", [
    (50, 50, True, True),    # Hyena's shape: kernel as long as the input, skip and both gates
    (37, 12, False, False),  # odd length, short kernel
    (20, 33, True, False),   # kernel longer than the input: its tail cannot reach the output
    (64, 64, False, True),
])
def test_causal_matches_direct_sum_with_gradients(L, K, D, gates):
    B, H = 2, 3
    leaves = _leaves([(B, H, L), (H, K), (H,) if D else None, (B, H, L) if gates else None,
                      (B, H, L) if gates else None], torch.float32, seed=L)
    u, k, Dt, pre, post = leaves
    out = convfuse.fftconv(u, k, Dt, pre, post)
    assert out.dtype == torch.float32
    r = _ref_copies(leaves)
    ref = causal_reference(*r)
    _compare(out, ref, leaves, r, rtol=2e-5)
    if K > L:  # taps beyond L do not reach the output: zero gradient
        assert (k.grad[..., L:] == 0).all()


@pytest.mark.parametrize("N,L,K", [(128, 64, 64), (64, 64, 40), (100, 80, 100)])
def test_fft_size_is_flashfftconvs_cyclic_definition(N, L, K):
    # N = 2L: causal; N = L or N < L + K - 1: the cyclic convolution FlashFFTConv computes too
    leaves = _leaves([(2, 3, L), (3, K), (2, 3, L), (2, 3, L)], torch.float32, seed=N + L)
    u, k, pre, post = leaves
    conv = convfuse.FFTConv(N)
    out = conv(u, k, pre, post)  # FlashFFTConv's positional order: (u, k, pregate, postgate)
    r = _ref_copies(leaves)
    ref = flash_reference(*r[:2], N, *r[2:])
    _compare(out, ref, leaves, r, rtol=2e-5)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float64, 1e-10)])
def test_dtypes_keep_the_input_dtype(dtype, rtol):
    leaves = _leaves([(2, 4, 40), (4, 40), (4,), (2, 4, 40), (2, 4, 40)], dtype, seed=3)
    out = convfuse.fftconv(*leaves)
    assert out.dtype == dtype
    r = _ref_copies(leaves)
    # the reference rounds its result to the same dtype: both see one rounding of the output
    ref = causal_reference(*r)
    _compare(out, ref.detach().to(dtype).double() + (ref - ref.detach()), leaves, r, rtol=rtol, grad_rtol=4 * rtol)


def test_module_matches_function_and_accepts_keywords():
    u, k, pre, post, D = (t.detach() for t in _leaves([(2, 3, 30), (3, 30), (2, 3, 30), (2, 3, 30), (3, 1)],
                                                       torch.float32))
    m = convfuse.FFTConv()
    a = m(u, k, pre, post, D)
    b = m(u, k, pre_gate=pre, post_gate=post, D=D)
    c = convfuse.fftconv(u, k, D, pre, post)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    torch.testing.assert_close(b, c, rtol=0, atol=0)
    assert "causal" in repr(m) and "seqlen=64" in repr(convfuse.FFTConv(64))
    with pytest.raises(TypeError, match="given twice"):
        m(u, k, pre, pre_gate=pre)
    with pytest.raises(ValueError, match="shorter than the input"):
        convfuse.fftconv(u, k, fft_size=16)


def test_kernel_options_agree():
    u, k, D, pre, post = (t.detach() for t in _leaves([(2, 3, 30), (3, 30), (3,), (2, 3, 30), (2, 3, 30)],
                                                       torch.float32))
    ref = causal_reference(u, k, D, pre, post)
    for kernel in ("auto", "cpu", "reference"):
        out = convfuse.fftconv(u, k, D, pre, post, kernel=kernel)
        assert (out.double() - ref).abs().max() / ref.abs().max() < 2e-5, kernel


def test_triton_under_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    try:  # settings read once at import live in convfuse.config where it exists
        from convfuse import config
    except ImportError:
        pass
    else:
        monkeypatch.setattr(config, "triton_interpret", True)
    from convfuse.backends.triton_monarch import LAUNCHES

    leaves = _leaves([(1, 2, 100), (2, 100), (2,), (1, 2, 100), (1, 2, 100)], torch.float32, seed=5)
    before = sum(LAUNCHES.values())
    out = convfuse.fftconv(*leaves, kernel="triton")
    assert sum(LAUNCHES.values()) > before  # the Monarch kernel ran (n = 200 padded to 256)
    r = _ref_copies(leaves)
    _compare(out, causal_reference(*r), leaves, r, rtol=2e-5, grad_rtol=1e-4)


def test_traces_under_torch_compile_fullgraph():
    u, k, D = (t.detach() for t in _leaves([(2, 3, 24), (3, 24), (3,)], torch.float32))
    fn = torch.compile(lambda u, k, D: convfuse.fftconv(u, k, D), backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(u, k, D), convfuse.fftconv(u, k, D))


@pytest.mark.skipif(not CUDA, reason="no CUDA device: the GPU path of the drop-in needs one")
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("L", [128, 1000, 4096])
def test_cuda(dtype, rtol, L):
    leaves = _leaves([(2, 8, L), (8, L), (8,), (2, 8, L), (2, 8, L)], dtype, seed=L, device="cuda")
    out = convfuse.fftconv(*leaves)
    assert out.dtype == dtype and out.device.type == "cuda"
    r = [t.detach().cpu().double().requires_grad_() for t in leaves]
    ref = causal_reference(*r)
    ref = ref.detach().to(dtype).double() + (ref - ref.detach()) if dtype != torch.float32 else ref
    g = torch.Generator().manual_seed(1)
    cot = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (out.double() * cot.cuda()).sum().backward()
    (ref * cot).sum().backward()
    assert (out.double().cpu() - ref).abs().max() / ref.abs().max() <= rtol
    for a, b in zip(leaves, r):
        assert (a.grad.double().cpu() - b.grad).abs().max() / b.grad.abs().max() <= 4 * rtol
