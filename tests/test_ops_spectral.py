"""``convfuse.fft_spectral_mix`` (the FNO spectral layer): the reference against an independent
neuraloperator-style spelling, the CPU implementation against the reference (both last-axis
methods, every tiling, dtypes, layouts), gradients against autograd through the reference,
gradcheck and gradgradcheck, opcheck, symbolic fake shapes, argument errors and the weight cache."""

from __future__ import annotations

import pytest
import torch

from convfuse import ops_spectral
from convfuse.backends import cpu_cache, cpu_spectral
from convfuse.ops_spectral import fft_spectral_mix_reference
from tests.conftest import assert_close_rel as _assert_close_rel

OP = torch.ops.convfuse.fft_spectral_mix
WGRAD = torch.ops.convfuse.fft_spectral_mix_wgrad
F64, C128 = torch.float64, torch.complex128


@pytest.fixture(autouse=True)
def _cpu_path_at_every_size(monkeypatch):
    """Test inputs are tiny: without this they would all take the small-call reference path."""
    monkeypatch.setattr(cpu_spectral, "REFERENCE_BYTES", 0)


@pytest.fixture(params=["auto-inline", "fft-pool", "dft-small-tiles"])
def impl(request, monkeypatch):
    """The last axis by FFT or by DFT matrix, inline or on the pool, in tiles of one row and
    GEMM chunks of one frequency (tile edges and both threads exercised)."""
    if request.param != "auto-inline":
        monkeypatch.setattr(cpu_spectral, "INLINE_BYTES", 0)
        monkeypatch.setattr(cpu_spectral, "FORCE_DFT", request.param.startswith("dft"))
    if request.param == "dft-small-tiles":
        monkeypatch.setattr(cpu_spectral, "TILE_BYTES", 64)
        monkeypatch.setattr(cpu_spectral, "GEMM_CHUNK_BYTES", 64)
    return request.param


# (batch, Ci, Co, L, n, blocks as (lows, sizes)): 1-D with the DC block, a block on an even n's
# Nyquist bin, odd n, truncation (L > n) and padding (L < n); the FNO corner blocks in 2-D
# ([:m1, :m2] and [n1-m1:, :m2]) and 3-D (four corners), a last-axis block not at 0 and a gap
# between blocks, a lone block away from 0 on every axis; batch ranks 0, 1 and 2; Ci != Co.
CASES = {
    "1d-dc-nyquist-even": ((2,), 3, 2, [8], [8], [([0], [2]), ([3], [2])]),
    "1d-odd-truncated": ((), 2, 3, [11], [7], [([0], [4])]),
    "1d-padded-mid": ((2, 2), 2, 2, [5], [9], [([1], [2]), ([4], [1])]),
    "2d-corners": ((2,), 3, 2, [6, 8], [6, 8], [([0, 0], [2, 3]), ([4, 0], [2, 3])]),
    "2d-odd-nyquist-padded": ((1, 2), 2, 3, [4, 6], [5, 7], [([0, 1], [2, 3]), ([3, 1], [2, 3])]),
    "2d-even-nyquist-truncated": ((2,), 2, 2, [7, 9], [6, 6], [([0, 2], [2, 2]), ([4, 3], [2, 1])]),
    "2d-interior-block": ((2,), 2, 3, [7, 8], [7, 8], [([2, 1], [3, 2])]),  # one span not at 0 on each axis
    "3d-corners": ((2,), 2, 3, [6, 4, 6], [6, 4, 6],
                   [([0, 0, 0], [2, 2, 2]), ([4, 0, 0], [2, 2, 2]), ([0, 2, 0], [2, 2, 2]), ([4, 2, 0], [2, 2, 2])]),
    "3d-batchless-odd": ((), 3, 2, [5, 5, 4], [5, 4, 5], [([0, 0, 1], [2, 1, 2]), ([3, 2, 0], [2, 2, 3])]),
}


def assert_close_rel(got, expected, rtol):
    """conftest's check, on (re, im) pairs for complex tensors (its cast would drop the imaginary parts)."""
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    if got.is_complex():
        got, expected = torch.view_as_real(got.resolve_conj()), torch.view_as_real(expected.resolve_conj())
    _assert_close_rel(got, expected, rtol)


def make(case, dtype=F64, gen=None, cdtype=None):
    batch, ci, co, L, n, blocks = CASES[case]
    cdtype = cdtype or (C128 if dtype == F64 else torch.complex64)
    u = torch.randn(*batch, ci, *L, generator=gen, dtype=F64).to(dtype)
    ws = [torch.randn(ci, co, *m, generator=gen, dtype=C128).to(cdtype) for _, m in blocks]
    lows = [x for lo, _ in blocks for x in lo]
    return u, ws, lows, n


def neuraloperator_layer(u, ws, lows, n, scale=1.0):
    """The layer as neuraloperator's SpectralConv writes it (out_ft zeros, einsum per block,
    irfftn): an independent spelling of the definition."""
    d = len(n)
    x_ft = torch.fft.rfftn(u, s=n, dim=tuple(range(-d, 0)))
    out_ft = torch.zeros(*u.shape[:-d - 1], ws[0].shape[1], *x_ft.shape[-d:], dtype=x_ft.dtype)
    letters = "xyz"[:d]
    for j, w in enumerate(ws):
        sl = tuple(slice(lows[j * d + i], lows[j * d + i] + w.shape[2 + i]) for i in range(d))
        xb = x_ft[(..., slice(None), *sl)]
        out_ft[(..., slice(None), *sl)] = torch.einsum(f"...i{letters},io{letters}->...o{letters}", xb, w)
    return torch.fft.irfftn(out_ft, s=n, dim=tuple(range(-d, 0))) * scale


@pytest.mark.parametrize("case", CASES)
def test_reference_is_the_neuraloperator_layer(case):
    gen = torch.Generator().manual_seed(0)
    u, ws, lows, n = make(case, gen=gen)
    got = fft_spectral_mix_reference(u, ws, lows, n, 0.5, 0.0, F64)
    assert got.is_contiguous()
    assert_close_rel(got, neuraloperator_layer(u, ws, lows, n, 0.5), 1e-13)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_cpu_matches_reference(impl, case, dtype):
    gen = torch.Generator().manual_seed(1)
    u, ws, lows, n = make(case, dtype, gen)
    got = OP(u, ws, lows, n, 0.7, -0.5, dtype)
    expected = fft_spectral_mix_reference(u, ws, lows, n, 0.7, -0.5, dtype)
    assert got.is_contiguous() and got.dtype == dtype
    assert_close_rel(got, expected, 1e-12 if dtype == F64 else 2e-6)


@pytest.mark.parametrize("case", ["2d-corners", "3d-corners", "1d-padded-mid"])
def test_non_contiguous_and_channels_last(impl, case):
    gen = torch.Generator().manual_seed(2)
    u, ws, lows, n = make(case, gen=gen)
    d = len(n)
    expected = fft_spectral_mix_reference(u, ws, lows, n, 1.0, -1.0, F64)
    # channels-last: the channel axis innermost in memory, the (batch, C, *L) view passed
    cl = u.movedim(-d - 1, -1).contiguous().movedim(-1, -d - 1)
    assert not cl.is_contiguous()
    assert_close_rel(OP(cl, ws, lows, n, 1.0, -1.0, F64), expected, 1e-12)
    # every other sample of a longer tensor, weights as transposed / conjugated views
    wide = torch.zeros(*u.shape[:-1], 2 * u.shape[-1], dtype=F64)
    wide[..., ::2] = u
    wt = [w.transpose(0, 1).contiguous().transpose(0, 1) for w in ws]
    wc = [w.conj().resolve_conj().conj() for w in ws]
    assert not wc[0].is_contiguous() or wc[0].is_conj()
    assert_close_rel(OP(wide[..., ::2], wt, lows, n, 1.0, -1.0, F64), expected, 1e-12)
    assert_close_rel(OP(u, wc, lows, n, 1.0, -1.0, F64), expected, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_fp32(impl, dtype):
    gen = torch.Generator().manual_seed(3)
    u, ws, lows, n = make("2d-corners", torch.float32, gen)
    u = u.to(dtype)
    ws128 = [w.to(C128) for w in ws]  # cast down to complex64: the rule for a non-fp64 u
    for out_dtype in (dtype, torch.float32):
        got = OP(u, ws128, lows, n, 1.0, 0.0, out_dtype)
        expected = fft_spectral_mix_reference(u.float(), ws, lows, n, 1.0, 0.0, torch.float32).to(out_dtype)
        assert got.dtype == out_dtype
        assert_close_rel(got, expected, 1e-6 if out_dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_autograd_through_reference(impl, case):
    gen = torch.Generator().manual_seed(4)
    u, ws, lows, n = make(case, gen=gen)
    u.requires_grad_()
    for w in ws:
        w.requires_grad_()
    got = OP(u, ws, lows, n, 0.5, -0.5, F64)
    expected = fft_spectral_mix_reference(u, ws, lows, n, 0.5, -0.5, F64)
    g = torch.randn(expected.shape, dtype=F64, generator=gen)
    for a, b in zip(torch.autograd.grad(got, (u, *ws), g), torch.autograd.grad(expected, (u, *ws), g)):
        assert_close_rel(a, b, 1e-12)


@pytest.mark.parametrize("case", ["1d-dc-nyquist-even", "1d-odd-truncated", "2d-odd-nyquist-padded",
                                  "2d-even-nyquist-truncated", "3d-batchless-odd"])
def test_gradcheck_and_gradgradcheck(case):
    gen = torch.Generator().manual_seed(5)
    u, ws, lows, n = make(case, gen=gen)
    args = (u.requires_grad_(), *[w.requires_grad_() for w in ws])

    def f(u, *ws):
        return OP(u, list(ws), lows, n, 0.5, -0.5, F64)

    assert torch.autograd.gradcheck(f, args)
    if len(n) < 3:  # second order in 3-D costs ~30 s here; its formulas are the same ops
        assert torch.autograd.gradgradcheck(f, args)


def test_weight_gradient_op_and_its_reference():
    gen = torch.Generator().manual_seed(6)
    u, ws, lows, n = make("2d-odd-nyquist-padded", gen=gen)
    g = torch.randn(*u.shape[:-3], ws[0].shape[1], *n, dtype=F64, generator=gen)
    sizes = [s for w in ws for s in w.shape[2:]]
    for force in (False, True):
        cpu_spectral.FORCE_DFT = force
        try:
            got = WGRAD(u, g, lows, sizes, n, 0.5, -1.0)
        finally:
            cpu_spectral.FORCE_DFT = None
        for a, b in zip(got, ops_spectral.wgrad_reference(u, g, lows, sizes, n, 0.5, -1.0)):
            assert_close_rel(a, b, 1e-12)


@pytest.mark.parametrize("case", ["1d-dc-nyquist-even", "2d-corners", "3d-batchless-odd"])
def test_opcheck(case):
    gen = torch.Generator().manual_seed(7)
    u, ws, lows, n = make(case, gen=gen)
    torch.library.opcheck(OP, (u.requires_grad_(), [w.requires_grad_() for w in ws], lows, n, 0.5, -0.5, F64))
    torch.library.opcheck(OP, (u.float(), [w.to(torch.complex64) for w in ws], lows, n, 1.0, 0.0, torch.float16,
                               True))


def test_fake_shapes_are_symbolic():
    from torch.fx.experimental.proxy_tensor import make_fx

    def f(u, w):
        return OP(u, [w], [0, 0], [u.shape[-2], u.shape[-1]], 1.0, -1.0, torch.float32)

    u = torch.randn(2, 3, 8, 10)
    w = torch.randn(3, 4, 2, 3, dtype=torch.complex64)
    gm = make_fx(f, tracing_mode="symbolic")(u, w)
    out = [node for node in gm.graph.nodes if node.op == "output"][0].args[0]
    shape = out[0].meta["val"].shape if isinstance(out, (list, tuple)) else out.meta["val"].shape
    assert any(isinstance(s, torch.SymInt) for s in shape[-2:])
    u2 = torch.randn(1, 3, 6, 12)
    assert_close_rel(gm(u2, w), fft_spectral_mix_reference(u2, [w], [0, 0], [6, 12], 1.0, -1.0, torch.float32), 1e-6)


def test_compiled_dynamic_matches_reference():
    def layer(u, w1, w2):
        n1, n2 = u.shape[-2], u.shape[-1]
        return OP(u, [w1, w2], [0, 0, n1 - 2, 0], [n1, n2], 1.0, 0.0, u.dtype)

    gen = torch.Generator().manual_seed(8)
    w1, w2 = (torch.randn(3, 2, 2, 3, dtype=torch.complex64, generator=gen) for _ in range(2))
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True, fullgraph=True)
    for H, W in [(8, 10), (9, 12)]:
        u = torch.randn(2, 3, H, W, generator=gen)
        expected = fft_spectral_mix_reference(u, [w1, w2], [0, 0, H - 2, 0], [H, W], 1.0, 0.0, torch.float32)
        assert_close_rel(compiled(u, w1, w2), expected, 1e-6)


BAD = [
    (lambda u, w: (u.to(torch.complex128), [w], [0], [8]), TypeError, "real floating"),
    (lambda u, w: (u, [w.real.contiguous()], [0], [8]), TypeError, "must be complex"),
    (lambda u, w: (u, [w], [0, 0], [8]), ValueError, "lows needs 1"),
    (lambda u, w: (u, [w], [3], [8]), ValueError, "outside the spectrum"),  # [3, 6) past 8//2+1 = 5 bins
    (lambda u, w: (u, [w], [-1], [8]), ValueError, "outside the spectrum"),
    (lambda u, w: (u, [w, w], [0, 2], [8]), ValueError, "overlap"),
    (lambda u, w: (u, [w[:2]], [0], [8]), ValueError, "does not map"),
    (lambda u, w: (u, [w, w[:, :1]], [0, 4], [16]), ValueError, "does not map"),
    (lambda u, w: (u, [w[..., None]], [0], [8]), ValueError, r"\(Ci, Co"),
    (lambda u, w: (u, [], [], [8]), ValueError, "at least one"),
    (lambda u, w: (u, [w], [], []), ValueError, "one FFT size"),
    (lambda u, w: (u[0, 0], [w], [0], [8]), ValueError, "channel axis"),
]


@pytest.mark.parametrize("bad", range(len(BAD)))
def test_bad_arguments_raise_clear_errors(bad):
    u = torch.randn(2, 3, 8, dtype=F64)
    w = torch.randn(3, 2, 3, dtype=C128)
    make_args, error, match = BAD[bad]
    for fn in (OP, fft_spectral_mix_reference):
        with pytest.raises(error, match=match):
            fn(*make_args(u, w), 1.0, 0.0, F64)


def test_adjacent_blocks_are_not_overlapping():
    u = torch.randn(2, 3, 8, dtype=F64)
    w = torch.randn(3, 2, 2, dtype=C128)
    expected = fft_spectral_mix_reference(u, [w, w], [0, 2], [8], 1.0, 0.0, F64)
    assert_close_rel(OP(u, [w, w], [0, 2], [8], 1.0, 0.0, F64), expected, 1e-12)


def test_empty_batch_and_empty_block():
    u = torch.randn(0, 3, 8, dtype=F64)
    w = torch.randn(3, 2, 2, dtype=C128)
    assert OP(u, [w], [0], [8], 1.0, 0.0, F64).shape == (0, 2, 8)
    u = torch.randn(2, 3, 8, dtype=F64)
    e = torch.randn(3, 2, 0, dtype=C128)
    assert_close_rel(OP(u, [e, w], [0, 0], [8], 1.0, 0.0, F64),
                     fft_spectral_mix_reference(u, [e, w], [0, 0], [8], 1.0, 0.0, F64), 1e-12)
    assert torch.equal(OP(u, [e], [0], [8], 1.0, 0.0, F64), torch.zeros(2, 2, 8, dtype=F64))


def test_constant_weights_are_cached_until_they_change():
    cpu_cache.clear()
    gen = torch.Generator().manual_seed(9)
    u, ws, lows, n = make("2d-corners", gen=gen)
    params = [torch.nn.Parameter(w) for w in ws]

    def call():
        with torch.no_grad():
            got = OP(u, params, lows, n, 0.5, 0.0, F64, True)
            return got, fft_spectral_mix_reference(u, params, lows, n, 0.5, 0.0, F64)

    for _ in range(3):
        assert_close_rel(*call(), 1e-12)
    assert cpu_cache.stats["stores"] == 2 and cpu_cache.stats["hits"] == 2  # two blocks, stored on call 2
    with torch.no_grad():
        params[0].data.mul_(-2.0)  # through .data: no version bump, and the bits change
    assert_close_rel(*call(), 1e-12)
    assert cpu_cache.stats["stale"] == 1
    before = dict(cpu_cache.stats)
    with torch.no_grad():
        OP(u, params, lows, n, 0.5, 0.0, F64)  # not constant: the cache is not consulted
    assert cpu_cache.stats == before
    cpu_cache.clear()


def test_training_with_constant_weights_follows_the_optimizer():
    cpu_cache.clear()
    gen = torch.Generator().manual_seed(10)
    u, ws, lows, n = make("1d-dc-nyquist-even", gen=gen)
    params = [torch.nn.Parameter(w) for w in ws]
    twins = [torch.nn.Parameter(w.clone()) for w in ws]
    opt, opt_r = torch.optim.SGD(params, lr=0.1), torch.optim.SGD(twins, lr=0.1)
    for _ in range(3):
        got = OP(u, params, lows, n, 1.0, -1.0, F64, True)
        expected = fft_spectral_mix_reference(u, twins, lows, n, 1.0, -1.0, F64)
        assert_close_rel(got, expected, 1e-12)
        got.square().sum().backward()
        expected.square().sum().backward()
        for p, q in zip(params, twins):
            assert_close_rel(p.grad, q.grad, 1e-12)
        opt.step(), opt_r.step(), opt.zero_grad(), opt_r.zero_grad()
    cpu_cache.clear()


def test_dft_matrices_match_the_fft_at_a_long_size(monkeypatch):
    """The last axis as a GEMM at n = 4096 in fp32 stays within fp32 FFT accuracy of the fp64 result."""
    gen = torch.Generator().manual_seed(11)
    u = torch.randn(2, 4, 4096, generator=gen)
    w = torch.randn(4, 4, 16, generator=gen, dtype=torch.complex64)
    expected = fft_spectral_mix_reference(u.double(), [w.to(C128)], [0], [4096], 1.0, 0.0, F64)
    for force in (True, False):
        monkeypatch.setattr(cpu_spectral, "FORCE_DFT", force)
        assert_close_rel(OP(u, [w], [0], [4096], 1.0, 0.0, torch.float32).double(), expected, 1e-5)


def test_compiled_training_step_matches_reference():
    """The backward (W^H as a conjugated view, the weight-gradient op) traced by AOT autograd
    with symbolic sizes."""
    def layer(u, w1, w2):
        n1, n2 = u.shape[-2], u.shape[-1]
        return OP(u, [w1, w2], [0, 0, n1 - 2, 0], [n1, n2], 0.5, 0.0, u.dtype, True)

    gen = torch.Generator().manual_seed(12)
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True, fullgraph=True)
    for H, W in [(8, 10), (9, 12)]:
        u = torch.randn(2, 3, H, W, dtype=F64, generator=gen, requires_grad=True)
        ws = [torch.randn(3, 2, 2, 3, dtype=C128, generator=gen, requires_grad=True) for _ in range(2)]
        got = compiled(u, *ws)
        expected = fft_spectral_mix_reference(u, ws, [0, 0, H - 2, 0], [H, W], 0.5, 0.0, F64)
        assert_close_rel(got, expected, 1e-12)
        g = torch.randn(got.shape, dtype=F64, generator=gen)
        for a, b in zip(torch.autograd.grad(got, (u, *ws), g), torch.autograd.grad(expected, (u, *ws), g)):
            assert_close_rel(a, b, 1e-12)


def test_small_calls_take_the_reference_on_one_thread(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the pruned path ran for a small call")

    monkeypatch.setattr(cpu_spectral, "REFERENCE_BYTES", 1024 * 1024)
    monkeypatch.setattr(cpu_spectral, "spectral_mix_cpu", fail)
    u, ws, lows, n = make("2d-corners", gen=torch.Generator().manual_seed(13))
    threads = torch.get_num_threads()
    assert_close_rel(OP(u, ws, lows, n, 0.5, 0.0, F64), fft_spectral_mix_reference(u, ws, lows, n, 0.5, 0.0, F64), 1e-12)
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="overlap"):
        OP(u, [ws[0], ws[0]], [0, 0, 1, 1], n, 0.5, 0.0, F64)


def test_forward_mode_transforms_give_the_layers_tangent():
    """torch.func.jvp through custom_op's own Autograd kernel read the operator's result as a
    zero tangent (a wrong answer, silently), then raised: a dual argument now runs the plain
    definition (ops_autograd.guard_forward_mode's tangent_reference); reverse mode is unchanged."""
    u, ws, lows, n = make("1d-dc-nyquist-even")
    f = lambda x: torch.ops.convfuse.fft_spectral_mix(x, ws, lows, n, 1.0, 0.0, F64)  # noqa: E731
    t = torch.ones_like(u)
    got = torch.func.jvp(f, (u,), (t,))[1]
    want = torch.func.jvp(lambda x: neuraloperator_layer(x, ws, lows, n), (u,), (t,))[1]
    assert_close_rel(got, want, 1e-10)
    x, xr = u.clone().requires_grad_(), u.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(x).sum(), x)
    (want,) = torch.autograd.grad(neuraloperator_layer(xr, ws, lows, n).sum(), xr)
    assert_close_rel(g, want, 1e-10)
