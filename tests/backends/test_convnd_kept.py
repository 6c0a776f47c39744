"""fft_convnd's whole-period calls on kept multi-axis MKL descriptors (convfuse/csrc/mkl_convnd.h).

The C++ op ``convfuse::_convnd_kept_out`` against torch.fft's own program (the reference here
imports nothing from the implementation): every layout the C++ reads (channels-last, channels
first, other strides, size-one axes), both precisions, odd and even last axes, 1 to 3 axes, a
spectrum that is not Hermitian in the last axis's 0 and n/2 columns (GFNet's parameter is not),
scale and conjugate, 1 and 2 threads, concurrent callers; then the operator and a compiled GFNet
filter through it, with gradients, and the cases that must not take it."""

from __future__ import annotations

import threading

import pytest
import torch

from convfuse.backends import cpu_nd
from tests.conftest import Compiled, op_calls

pytestmark = pytest.mark.skipif(not cpu_nd.kept_descriptors(),
                                reason="needs the native library with MKL's multi-axis DFTI (x86 torch wheels)")

OP = torch.ops.convfuse._convnd_kept_out.default if cpu_nd.kept_descriptors() else None


def expected(u, K, n, total, conj):
    d = len(n)
    dims = list(range(-d, 0))
    W = (K.conj() if conj else K) * total
    return torch.fft.irfftn(torch.fft.rfftn(u, s=n, dim=dims) * W, s=n, dim=dims)


def kept(u, K, n, total=1.0, conj=False, out=None):
    out = torch.empty(*u.shape[:2], *n, dtype=u.dtype) if out is None else out
    OP(u, K, list(n), total, conj, out)
    return out


def close(got, want, dtype):
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    assert err < tol, err


def operands(B, C, n, dtype, layout, hermitian, gen):
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    spec = [*n[:-1], n[-1] // 2 + 1]
    x = torch.randn(B, *n, C, dtype=dtype, generator=gen)  # channels-last storage
    u = x.movedim(-1, 1)
    if layout == "channels-first":
        u = u.contiguous()
    elif layout == "strided":  # every other element of a wider last axis: neither of the above
        wide = torch.randn(B, C, *n[:-1], 2 * n[-1], dtype=dtype, generator=gen)
        u = wide[..., ::2]
    if hermitian:
        K = torch.fft.rfftn(torch.randn(C, *n, dtype=dtype, generator=gen), dim=list(range(-len(n), 0)))
    else:
        K = torch.randn(C, *spec, dtype=cdtype, generator=gen)
    return u, K


SIZES = [[32, 32], [6, 8], [5, 7], [8, 1], [1, 8], [2, 2], [4, 5, 6], [16], [7, 9, 4]]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["channels-last", "channels-first", "strided"])
@pytest.mark.parametrize("n", SIZES, ids=lambda n: "x".join(map(str, n)))
def test_matches_torch_fft(n, layout, dtype, threads):
    gen = torch.Generator().manual_seed(len(n) * 100 + sum(n))
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for B, C in ((3, 5), (1, 1), (4, 64)):
            for hermitian in (True, False):
                u, K = operands(B, C, n, dtype, layout, hermitian, gen)
                close(kept(u, K, n), expected(u, K, n, 1.0, False), dtype)
                close(kept(u, K, n, 0.25, True), expected(u, K, n, 0.25, True), dtype)
    finally:
        torch.set_num_threads(saved)


def test_a_large_call_shared_over_threads_and_a_channels_last_spectrum():
    """Big enough to share its items over torch's OpenMP threads, several items per batch row, K channels-last."""
    gen = torch.Generator().manual_seed(0)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(3, 56, 56, 96, generator=gen)
        Kcl = torch.randn(56, 29, 96, dtype=torch.complex64, generator=gen).permute(2, 0, 1)
        u = x.permute(0, 3, 1, 2)
        close(kept(u, Kcl, [56, 56]), expected(u, Kcl, [56, 56], 1.0, False), torch.float32)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("B,C,n", [(1, 384, [14, 14]), (1, 97, [40, 40]), (1, 3, [192, 192]), (2, 5, [96, 96]),
                                   (1, 1, [256, 256]), (3, 2, [128, 128])],
                         ids=["gfnet-batch-1", "odd-channels", "fewer-channels-than-items", "two-rows",
                              "one-channel", "three-rows-two-channels"])
@pytest.mark.parametrize("layout", ["channels-last", "channels-first"])
def test_large_calls_with_few_rows_split_channels_over_the_threads(B, C, n, layout):
    """Above the split size with fewer items than the threads want (a batch row is one item
    until its channels are blocked smaller): each row's channels are cut into blocks, down to one
    channel, and every block lands where it belongs; 1 and 2 threads agree with torch."""
    gen = torch.Generator().manual_seed(B * 1000 + C)
    u, K = operands(B, C, n, torch.float32, layout, False, gen)
    assert u.numel() * 4 >= 256 * 1024  # above mkl_convnd.h's kSplitBytes: the split path
    want = expected(u, K, n, 0.5, True)
    saved = torch.get_num_threads()
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            close(kept(u, K, n, 0.5, True), want, torch.float32)
    finally:
        torch.set_num_threads(saved)


def test_rows_of_a_wider_output_and_concurrent_callers():
    """out may be a slice of a larger tensor (rows apart, n axes contiguous); Python threads calling
    at once (each its own OpenMP team) get their own results."""
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(8, 32, 32, 48, generator=gen).permute(0, 3, 1, 2)
    K = torch.randn(48, 32, 17, dtype=torch.complex64, generator=gen)
    want = expected(u, K, [32, 32], 1.0, False)
    big = torch.full((8, 64, 32, 32), 7.0)
    kept(u, K, [32, 32], out=big[:, 8:56])
    close(big[:, 8:56], want, torch.float32)
    assert (big[:, :8] == 7).all() and (big[:, 56:] == 7).all()
    outs = [torch.empty(2, 48, 32, 32) for _ in range(4)]
    errors = []

    def call(i):
        try:
            for _ in range(5):
                kept(u[2 * i:2 * i + 2], K, [32, 32], out=outs[i])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for i in range(4):
        close(outs[i], want[2 * i:2 * i + 2], torch.float32)


def test_what_the_kept_path_does_not_read_goes_through_torch():
    """A conjugate-bit spectrum, a mismatched precision or a non-contiguous output are computed by
    torch's own ops inside the op, with the same result."""
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(2, 4, 6, 8, generator=gen)
    K = torch.randn(4, 6, 5, dtype=torch.complex64, generator=gen)
    close(kept(u, K.conj(), [6, 8]), expected(u, K.conj(), [6, 8], 1.0, False), torch.float32)
    Kd = K.to(torch.complex128)
    close(kept(u, Kd, [6, 8]), expected(u, Kd, [6, 8], 1.0, False).float(), torch.float32)
    out = torch.empty(2, 4, 8, 6).transpose(-1, -2)
    close(kept(u, K, [6, 8], out=out), expected(u, K, [6, 8], 1.0, False), torch.float32)


def kept_descriptors_ran(fn) -> bool:
    """fn() reached the C++ op and the op ran its kept descriptors (torch's composite, its
    fallback, would show aten's transforms under the op)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    names = [e.name for e in prof.events()]
    return "convfuse::_convnd_kept_out" in names and not any(n.startswith("aten::_fft_") for n in names)


def test_a_parameter_spectrum_takes_the_kept_descriptors():
    """GFNet's spectrum is a view of a Parameter (requires_grad even in inference mode, and
    inside the operator's own forward when training): the op below the operator's autograd
    only computes a value, so it must not send such operands to its composite fallback (it did:
    every call of a real model ran torch's transforms, 1.80 ms against 1.38 eager at
    (4, 32, 32, 64), 1 thread)."""
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(2, 4, 6, 8, generator=gen, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(6, 5, 4, 2, generator=gen))
    K = torch.view_as_complex(w).permute(2, 0, 1)
    want = expected(u.detach(), K.detach(), [6, 8], 1.0, False)
    for mode in (torch.inference_mode, torch.enable_grad):
        out = torch.empty(2, 4, 6, 8)
        with mode():
            assert kept_descriptors_ran(lambda: kept(u, K, [6, 8], out=out))
        assert not out.requires_grad and out.grad_fn is None  # a value into out, nothing recorded
        close(out, want, torch.float32)


def _gfnet(weight):
    def f(x):
        H, W = x.shape[1], x.shape[2]
        X = torch.fft.rfft2(x, dim=(1, 2), norm="ortho") * torch.view_as_complex(weight)
        return torch.fft.irfft2(X, s=(H, W), dim=(1, 2), norm="ortho")
    return f


@pytest.mark.parametrize("shape", [(2, 8, 8, 8), (2, 6, 7, 5), (3, 14, 14, 24)])
def test_compiled_gfnet_takes_the_kept_path_with_eager_values_and_gradients(shape, monkeypatch):
    B, H, W, C = shape
    gen = torch.Generator().manual_seed(3)
    weight = torch.nn.Parameter(torch.randn(H, W // 2 + 1, C, 2, generator=gen))
    f = _gfnet(weight)
    calls = []
    real = cpu_nd._kept[0]
    monkeypatch.setattr(cpu_nd, "_kept", [lambda *a: (calls.append(1), real(*a))[1]])
    fused = Compiled(f, kernel="cpu", dynamic=False)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    with torch.inference_mode():
        fused(x)  # compiled here: the profile below sees calls only
        assert kept_descriptors_ran(lambda: fused(x))  # an eval-mode model: its weight still requires grad
    calls.clear()
    y = fused(x)
    assert kept_descriptors_ran(lambda: fused(x))  # training: the forward inside the operator's autograd
    assert fused.report.sites[0].status == "rewritten"
    # one graph for inference mode, one for training; one call each
    assert len(fused.graphs) == 2 and op_calls(fused, torch.ops.convfuse.fft_convnd.default) == 2
    assert calls, "the whole-period call did not reach the kept descriptors"
    x2 = x.detach().clone().requires_grad_(True)
    w2 = weight.detach().clone().requires_grad_(True)
    y2 = _gfnet(w2)(x2)
    torch.testing.assert_close(y, y2, rtol=2e-5, atol=2e-6)
    g = torch.randn_like(y2)
    gx, gw = torch.autograd.grad(y, (x, weight), g)
    ex, ew = torch.autograd.grad(y2, (x2, w2), g)
    torch.testing.assert_close(gx, ex, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(gw, ew, rtol=2e-5, atol=2e-6)


def test_a_windowed_or_padded_call_keeps_the_tiled_path(monkeypatch):
    """Near misses: a window, a padded input or a cast output are not whole periods; the tiles
    compute them (and agree with the reference)."""
    from convfuse.ops_nd import fft_convnd_reference

    monkeypatch.setattr(cpu_nd, "_kept", [lambda *a: pytest.fail("took the kept path")])
    gen = torch.Generator().manual_seed(4)
    K = torch.randn(4, 6, 5, dtype=torch.complex64, generator=gen)
    for u, start, length, out_dtype in ((torch.randn(2, 4, 6, 8, generator=gen), [1, 0], [4, 8], torch.float32),
                                        (torch.randn(2, 4, 5, 8, generator=gen), [0, 0], [6, 8], torch.float32),
                                        (torch.randn(2, 4, 6, 8, generator=gen), [0, 0], [6, 8], torch.float64)):
        args = (u, K, [6, 8], start, length, 1.0, 0.0, False, out_dtype)
        got = torch.ops.convfuse.fft_convnd(*args, False, True)
        torch.testing.assert_close(got, fft_convnd_reference(*args, kernel_is_spectrum=True), rtol=1e-5, atol=1e-5)
