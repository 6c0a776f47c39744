"""Adversarial checks of fft_convnd's kept multi-axis path (convfuse::_convnd_kept_out), after it
started taking operands that require grad (GFNet's parameter spectrum is a Parameter's view).

Against eager torch.fft (outputs and gradients, fp32 rel 1e-5 / fp64 1e-12): compiled GFNet
training (x.grad, weight.grad), optimizer steps (SGD, AdamW foreach / fused), in-place weight
writes between calls, grad / no_grad / inference_mode, a dispatch mode, autocast, vmap, odd
layouts and sizes, 1-3 axes, threads below and above the 256 KB split, a forked child, and bad
direct arguments.  The first three were defects when written (a dropped forward-mode tangent,
an empty call that raised, an overlapping out written silently), fixed with them."""

from __future__ import annotations

import copy
import os
import select
import time

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn

import convfuse
from convfuse.backends import cpu_nd
from convfuse.ops_nd import fft_convnd_reference
from tests.conftest import RecordingMode

pytestmark = pytest.mark.skipif(not cpu_nd.kept_descriptors(),
                                reason="needs the native library with MKL's multi-axis DFTI (x86 torch wheels)")

OP = torch.ops.convfuse.fft_convnd
KEPT = torch.ops.convfuse._convnd_kept_out.default if cpu_nd.kept_descriptors() else None
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def cdtype(dtype):
    return torch.complex64 if dtype == torch.float32 else torch.complex128


def rel(a, b):
    a, b = a.resolve_conj().resolve_neg(), b.resolve_conj().resolve_neg()
    a = torch.view_as_real(a) if a.is_complex() else a
    b = torch.view_as_real(b) if b.is_complex() else b
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = cpu_nd._kept[0]

    def counted(*a):
        calls.append(a)
        return real(*a)

    monkeypatch.setattr(cpu_nd, "_kept", [counted])
    return calls


@pytest.fixture
def threads():
    saved = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(saved)


class FilterND(nn.Module):
    """GFNet's global filter over the d axes after the batch of a (B, *spatial, C) map."""

    def __init__(self, C, sizes, conj=False):
        super().__init__()
        self.d, self.conj = len(sizes), conj
        self.weight = nn.Parameter(torch.randn(*sizes[:-1], sizes[-1] // 2 + 1, C, 2) * 0.02)

    def forward(self, x):
        dims = tuple(range(1, 1 + self.d))
        w = torch.view_as_complex(self.weight)
        X = torch.fft.rfftn(x, dim=dims, norm="ortho") * (w.conj() if self.conj else w)
        return torch.fft.irfftn(X, s=x.shape[1:1 + self.d], dim=dims, norm="ortho")


def forced(m, inner="eager"):
    torch._dynamo.reset()
    return convfuse.compile(m, kernel="cpu", options={"inner": inner})


def spectrum_call(u, k, conj=False, start=None, length=None):
    n = list(u.shape[-(k.dim() - 1):])
    d = len(n)
    return OP(u, k, n, start or [0] * d, length or n, 1.0, 0.0, conj, u.dtype, False, True)


# ---------------------------------------------------------------- defects found


def test_forward_ad_tangent_is_not_silently_dropped_on_the_kept_path():
    """torch.autograd.forward_ad: the windowed (tiled) path returns eager's tangent, the whole-period
    call (kept path: the C++ op's composite runs below ADInplaceOrView) returns none, silently.
    Either eager's tangent or a clear error is acceptable; None is a wrong answer."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 4, 6, generator=gen)
    k = torch.randn(3, 4, 4, dtype=torch.complex64, generator=gen)
    t = torch.randn(2, 3, 4, 6, generator=gen)
    with fwAD.dual_level():
        d = fwAD.make_dual(u, t)
        want = fwAD.unpack_dual(torch.fft.irfftn(torch.fft.rfftn(d, dim=(-2, -1)) * k, s=[4, 6], dim=(-2, -1))).tangent
        windowed = fwAD.unpack_dual(spectrum_call(d, k, start=[1, 0], length=[3, 6])).tangent
        assert rel(windowed, want[..., 1:4, :]) < 1e-5  # the tiled path propagates it
        try:
            got = fwAD.unpack_dual(spectrum_call(d, k)).tangent
        except (NotImplementedError, RuntimeError):
            return
    assert got is not None, "the whole-period call dropped the forward-mode tangent (eager has one)"
    assert rel(got, want) < 1e-5


@pytest.mark.parametrize("shape", [(0, 3, 4, 6), (2, 0, 4, 6)], ids=["batch0", "channels0"])
def test_empty_whole_period_spectrum_call_returns_empty(shape):
    """fft_convnd_reference (and the tiled path, and a real kernel) return an empty result; the
    kept path hands the empty operands to torch.fft, which raises MKL's 'Inconsistent
    configuration parameters'."""
    u = torch.randn(*shape)
    k = torch.randn(shape[1], 4, 4, dtype=torch.complex64)
    args = (u, k, [4, 6], [0, 0], [4, 6], 1.0, 0.0, False, torch.float32)
    want = fft_convnd_reference(*args, kernel_is_spectrum=True)
    got = OP(*args, False, True)
    assert got.shape == want.shape == shape


def test_kept_out_refuses_an_internally_overlapping_out():
    """An out whose elements share memory cannot hold the result: torch's own copy_ raises for it
    ('more than one element of the written-to tensor refers to a single memory location'); the
    kept path writes it silently (rows at stride 1, channels at stride 8 over 48-element rows)."""
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(2, 4, 6, 8, generator=gen)
    K = torch.randn(4, 6, 5, dtype=torch.complex64, generator=gen)
    for strides in ((1, 48, 8, 1), (192, 8, 8, 1)):
        out = torch.empty(2000).as_strided((2, 4, 6, 8), strides)
        with pytest.raises(RuntimeError):
            KEPT(u, K, [6, 8], 1.0, False, out)


# ---------------------------------------------------------------- what passed (guards)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("sizes,conj", [([8, 8], False), ([7, 9], True), ([1, 8], False), ([8, 1], True),
                                        ([5, 7, 4], False), ([3, 1, 5], True)],
                         ids=["8x8", "7x9-conj", "1x8", "8x1-conj", "5x7x4", "3x1x5-conj"])
def test_compiled_filter_training_gradients_match_eager(sizes, conj, dtype, spy):
    torch.manual_seed(2)
    m = FilterND(5, sizes, conj).to(dtype)
    m2 = copy.deepcopy(m)
    cm = forced(m2)
    x = torch.randn(2, *sizes, 5, dtype=dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = m(x1), cm(x2)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert len(spy) == 2  # forward and x's gradient on the kept path; the weight a Parameter view
    for a, b in ((y2, y1), (x2.grad, x1.grad), (m2.weight.grad, m.weight.grad)):
        assert rel(a, b) < TOL[dtype]


@pytest.mark.parametrize("layout", ["transposed", "step", "channel-step", "channels-first", "expanded"])
def test_compiled_filter_odd_input_layouts(layout, spy):
    torch.manual_seed(3)
    m = FilterND(6, [7, 9]).double()
    m2 = copy.deepcopy(m)
    cm = forced(m2)
    x = {"transposed": lambda: torch.randn(3, 9, 7, 6).transpose(1, 2),
         "step": lambda: torch.randn(3, 7, 18, 6)[:, :, ::2],
         "channel-step": lambda: torch.randn(3, 7, 9, 12)[..., ::2],
         "channels-first": lambda: torch.randn(3, 6, 7, 9).permute(0, 2, 3, 1),
         "expanded": lambda: torch.randn(1, 7, 9, 6).expand(3, 7, 9, 6)}[layout]().double()
    x1, x2 = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    y1, y2 = m(x1), cm(x2)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert spy
    for a, b in ((y2, y1), (x2.grad, x1.grad), (m2.weight.grad, m.weight.grad)):
        assert rel(a, b) < 1e-12


@pytest.mark.parametrize("kind,dtype", [("sgd", torch.float32), ("sgd", torch.float64),
                                        ("adamw-foreach", torch.float64), ("adamw-fused", torch.float64)])
def test_optimizer_steps_match_eager(kind, dtype, spy):
    """fp32 AdamW is left out on purpose: Adam's normalisation amplifies rounding (eager fp32 and
    compiled fp32 are equally far, ~1e-5, from an fp64 run)."""
    torch.manual_seed(4)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
            "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=True),
            "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True)}[kind]
    m = FilterND(6, [7, 8]).to(dtype)
    m2 = copy.deepcopy(m)
    cm = forced(m2)
    o1, o2 = make(m.parameters()), make(m2.parameters())
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    for _ in range(4):
        x = torch.randn(2, 7, 8, 6, dtype=dtype)
        for mod, opt in ((m, o1), (cm, o2)):
            opt.zero_grad()
            y = mod(x.clone().requires_grad_())
            (y.square().sum() + y.sum()).backward()
            opt.step()
        assert rel(m2.weight.detach(), m.weight.detach()) < tol
    with torch.no_grad():
        x = torch.randn(2, 7, 8, 6, dtype=dtype)
        assert rel(cm(x), m(x)) < tol
    assert spy


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference"])
def test_weight_writes_between_calls_are_seen(mode, spy):
    torch.manual_seed(5)
    m = FilterND(4, [6, 7])
    cm = forced(m)
    x = torch.randn(2, 6, 7, 4)

    def run():
        if mode == "grad":
            return cm(x.clone().requires_grad_()).detach()
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            return cm(x)

    def check():
        got = run()
        with torch.no_grad():
            assert rel(got, m(x)) < 1e-5

    check()
    with torch.no_grad():
        m.weight.data.mul_(2)  # no version bump
    check()
    with torch.no_grad():
        m.weight.copy_(torch.randn_like(m.weight))
    check()
    with torch.no_grad():
        m.weight[0, 0] += 5  # a self-conjugate bin only
    check()
    m.weight.data = torch.randn_like(m.weight)  # rebound storage
    check()
    m.weight.grad = torch.randn_like(m.weight)
    torch.optim.AdamW(m.parameters(), lr=0.1, fused=True).step()
    check()
    assert len(spy) == 6


def _operands(dtype, u_kind, k_kind, B=3, C=6, H=8, W=10):
    cd = cdtype(dtype)
    if u_kind == "channels-last":
        ub = torch.randn(B, H, W, C, dtype=dtype, requires_grad=True)
        u = ub.permute(0, 3, 1, 2)
    elif u_kind == "neg":
        ub = torch.randn(B, C, H, W, dtype=dtype, requires_grad=True)
        u = torch._neg_view(ub)
    else:
        ub = torch.randn(B, C, H, 2 * W, dtype=dtype, requires_grad=True)
        u = ub[..., ::2]
    if k_kind == "param-channels-last":
        kb = nn.Parameter(torch.randn(H, W // 2 + 1, C, 2, dtype=dtype))
        k = torch.view_as_complex(kb).permute(2, 0, 1)
    elif k_kind == "conj":
        kb = torch.randn(C, H, W // 2 + 1, dtype=cd, requires_grad=True)
        k = kb.conj()
    elif k_kind == "neg":
        kb = torch.randn(C, H, W // 2 + 1, dtype=cd, requires_grad=True)
        k = torch._neg_view(kb)
    else:
        kb = torch.randn(1, H, W // 2 + 1, dtype=cd, requires_grad=True)
        k = kb.expand(C, H, W // 2 + 1)
    return ub, u, kb, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("u_kind", ["channels-last", "neg", "step"])
@pytest.mark.parametrize("k_kind", ["param-channels-last", "conj", "neg", "expanded"])
def test_direct_operator_with_grad_requiring_views(u_kind, k_kind, dtype, spy):
    for conj in (False, True):
        res = []
        for ref in (False, True):
            torch.manual_seed(6)
            ub, u, kb, k = _operands(dtype, u_kind, k_kind)
            n = [8, 10]
            if ref:
                y = fft_convnd_reference(u, k, n, [0, 0], n, 1.0, 0.0, conj, dtype, True)
            else:
                y = OP(u, k, n, [0, 0], n, 1.0, 0.0, conj, dtype, False, True)
            g = torch.randn_like(y)
            res.append((y, *torch.autograd.grad(y, (ub, kb), g)))
        for a, b in zip(*res):
            assert rel(a, b) < TOL[dtype]
    assert spy


def test_double_backward_dispatch_mode_autocast_vmap(spy):
    torch.manual_seed(7)
    u = torch.randn(3, 4, 6, 8, dtype=torch.float64)
    k = torch.randn(4, 6, 5, dtype=torch.complex128)

    def ref(uu, kk):
        return torch.fft.irfftn(torch.fft.rfftn(uu, dim=(-2, -1)) * kk, s=[6, 8], dim=(-2, -1))

    def grads(f):
        uu, kk = u.clone().requires_grad_(), k.clone().requires_grad_()
        g = torch.autograd.grad(f(uu, kk).square().sum(), (uu, kk), create_graph=True)
        h = torch.autograd.grad(g[0].square().sum() + g[1].abs().square().sum(), (uu, kk))
        return (*g, *h)

    for a, b in zip(grads(spectrum_call), grads(ref)):
        assert rel(a, b) < 1e-12

    uu, kk = u.clone().requires_grad_(), k.clone().requires_grad_()
    with RecordingMode() as rec:
        y = spectrum_call(uu, kk)
        y.square().sum().backward()
    assert rec.ops and rel(y, ref(u, k)) < 1e-12
    u2, k2 = u.clone().requires_grad_(), k.clone().requires_grad_()
    ref(u2, k2).square().sum().backward()
    assert rel(uu.grad, u2.grad) < 1e-12 and rel(kk.grad, k2.grad) < 1e-12
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert rel(spectrum_call(u.float(), k.to(torch.complex64)), ref(u, k).float()) < 1e-5
    got = torch.func.vmap(spectrum_call, in_dims=(0, None))(u.unsqueeze(1), k)
    assert rel(got, ref(u.unsqueeze(1), k)) < 1e-12
    with torch.inference_mode():
        assert rel(spectrum_call(u, k), ref(u, k)) < 1e-12


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", [(2, 8, 8, 16), (4, 32, 32, 64), (3, 15, 17, 130)],
                         ids=["8KB", "1MB", "400KB-odd"])
def test_threads_below_and_above_the_split(shape, n_threads, threads, spy):
    threads(n_threads)
    torch.manual_seed(8)
    B, H, W, C = shape
    m = FilterND(C, [H, W])
    m2 = copy.deepcopy(m)
    cm = forced(m2)
    x = torch.randn(*shape)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = m(x1), cm(x2)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert len(spy) == 2
    for a, b in ((y2, y1), (x2.grad, x1.grad), (m2.weight.grad, m.weight.grad)):
        assert rel(a, b) < 1e-5


def test_inductor_inner_compiled_filter_matches_eager(spy):
    torch.manual_seed(9)
    m = FilterND(8, [8, 8])
    m2 = copy.deepcopy(m)
    cm = forced(m2, inner="inductor")
    x = torch.randn(2, 8, 8, 8)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = m(x1), cm(x2)
    (y1.square().sum()).backward()
    (y2.square().sum()).backward()
    assert spy
    for a, b in ((y2, y1), (x2.grad, x1.grad), (m2.weight.grad, m.weight.grad)):
        assert rel(a, b) < 1e-5


def _in_child(fn, timeout=30.0):
    """fn() -> bytes in a forked child (which must run no OpenMP op: torch's libgomp pool does not
    survive fork, for eager torch as well); None where it hung."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            data = b"OK" + fn()
        except BaseException as exc:  # noqa: BLE001
            data = b"EX" + repr(exc).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        os._exit(0)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(r)
            return None
        if select.select([r], [], [], left)[0]:
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks)


@pytest.mark.parametrize("shape,child_threads", [((8, 64, 32, 32), None), ((8, 64, 32, 32), 1), ((2, 4, 6, 8), 1)],
                         ids=["two-threads", "one-thread", "small-one-thread"])
def test_kept_call_in_a_forked_child_after_a_multithreaded_call(shape, child_threads, threads):
    threads(2)
    B, C, H, W = shape
    gen = torch.Generator().manual_seed(10)
    u = torch.randn(B, H, W, C, generator=gen).permute(0, 3, 1, 2)
    K = torch.randn(C, H, W // 2 + 1, dtype=torch.complex64, generator=gen)

    def kept():
        out = torch.empty(*shape)
        KEPT(u, K, [H, W], 1.0, False, out)
        return out

    want = kept()  # the parent's OpenMP pool (torch's, MKL's) exists now: a child must not wait on it

    def child():
        if child_threads:
            torch.set_num_threads(child_threads)
        return kept().numpy().tobytes()

    got = _in_child(child)
    assert got is not None, "the child hung"
    assert got[:2] == b"OK", got[2:].decode()
    assert torch.equal(torch.frombuffer(bytearray(got[2:]), dtype=torch.float32).view(shape), want)


def test_kept_out_bad_arguments_raise_or_fall_back_correctly():
    gen = torch.Generator().manual_seed(11)
    u = torch.randn(2, 4, 6, 8, generator=gen)
    K = torch.randn(4, 6, 5, dtype=torch.complex64, generator=gen)

    def want(uu, KK):
        return torch.fft.irfftn(torch.fft.rfftn(uu, s=[6, 8], dim=(-2, -1)) * KK, s=[6, 8], dim=(-2, -1))

    for out in (torch.empty(1, 4, 6, 8), torch.empty(3, 4, 6, 8), torch.empty(2, 4, 6, 7), torch.empty(384),
                torch.empty(1, 4, 6, 8).expand(2, 4, 6, 8), torch.empty(0, 4, 6, 8)):
        with pytest.raises(RuntimeError):
            KEPT(u, K, [6, 8], 1.0, False, out)
    for KK in (torch.randn(3, 6, 5, dtype=torch.complex64), torch.randn(4, 6, 4, dtype=torch.complex64)):
        with pytest.raises(RuntimeError):
            KEPT(u, KK, [6, 8], 1.0, False, torch.empty(2, 4, 6, 8))
    for bad_n in ([], [0, 8], [-6, 8]):
        with pytest.raises(RuntimeError):
            KEPT(u, K, bad_n, 1.0, False, torch.empty(2, 4, 6, 8))
    with pytest.raises(RuntimeError):
        KEPT(u.half(), K, [6, 8], 1.0, False, torch.empty(2, 4, 6, 8, dtype=torch.float16))
    # what the fast path does not read falls back to torch's ops, with the right value
    cases = [(u, K, torch.empty(2, 4, 6, 8, dtype=torch.float64)),
             (u, K, torch.empty(4, 2, 6, 8).transpose(0, 1)),
             (u, K, torch.empty(2, 4, 8, 6).transpose(-1, -2)),
             (u, K.to(torch.complex128), torch.empty(2, 4, 6, 8)),
             (u, torch.randn(1, 6, 5, dtype=torch.complex64).expand(4, 6, 5), torch.empty(2, 4, 6, 8)),
             (u, torch._neg_view(K), torch.empty(2, 4, 6, 8)),
             (torch._neg_view(u), K, torch.empty(2, 4, 6, 8)),
             (torch.randn(2, 1, 6, 8).expand(2, 4, 6, 8), K, torch.empty(2, 4, 6, 8)),
             (torch.randn(2, 6, 8, 8)[..., ::2].permute(0, 3, 1, 2), K, torch.empty(2, 4, 6, 8)),
             (u.clone().requires_grad_(), K.clone().requires_grad_(), torch.empty(2, 4, 6, 8))]
    for uu, KK, out in cases:
        expected = want(uu.detach(), KK.detach())
        KEPT(uu, KK, [6, 8], 1.0, False, out)
        assert rel(out.to(expected.dtype), expected) < 1e-5
    uu = u.clone()  # out is u itself: each item reads its rows before writing them
    expected = want(u, K)
    KEPT(uu, K, [6, 8], 1.0, False, uu)
    assert rel(uu, expected) < 1e-5
