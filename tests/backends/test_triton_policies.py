"""The Triton plans under rewrite policies, against the reference implementation.

FrequencySparse: the operator's ``spectrum_bins`` = M masks the kernel spectrum at size n; the
Triton plans mask it exactly and compute only the Monarch columns holding the kept bins.
PartialKernel: the operator sees a short kernel; linear calls may run overlap-save frames through
the fused kernel.  Interpreter runs (TRITON_INTERPRET=1) on tiny shapes, as test_triton_monarch.py;
nothing here says anything about speed.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from convfuse import config  # noqa: E402
from convfuse.backends import triton_monarch as tm  # noqa: E402
from convfuse.backends.reference import fft_conv_reference  # noqa: E402
from convfuse.backends.triton_monarch import blocks, plan as plan_mod  # noqa: E402
from convfuse.ops import fft_conv  # noqa: E402  (importing convfuse registers the backend too)
from convfuse.spec import ConvParams, linear_segments  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", True)


def _tensors(shapes, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [None if s is None else torch.randn(s, dtype=dtype, generator=g) for s in shapes]


def _check(ushape, kshape, p, dtype=torch.float64, D=None, pre=None, post=None, rtol=None):
    """Run the Triton path and the reference; return the plan it ran."""
    u, k, Dt, pg, po = _tensors((ushape, kshape, D, pre, post), dtype, seed=p.n + p.start + p.spectrum_bins)
    r = tm.resolve(u, k, Dt, pg, po, p)
    assert not isinstance(r, str), r
    out, ref = tm.run(u, k, Dt, pg, po, p), fft_conv_reference(u, k, Dt, pg, po, p)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    rtol = rtol or {torch.float64: 1e-12, torch.float32: 2e-5}[dtype]
    err = (out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)
    assert err <= rtol, f"relative max error {err:.2e} > {rtol:.0e} ({tm.explain(u, k, Dt, pg, po, p)})"
    return r


def _op(args, p, kernel):
    u, k, D, pre, post = args
    return fft_conv(u, k, D, pre, post, p.n, p.start, p.length, p.scale, p.n_power, p.conj_kernel,
                    p.out_dtype or u.dtype, kernel, False, p.spectrum_bins)


def _grads_match(shapes, p, rtol=1e-9):
    """Output and every input gradient of the op, kernel='triton' against kernel='reference'."""
    tensors = _tensors(shapes, torch.float64, seed=7)
    got = {}
    for kernel in ("triton", "reference"):
        leaves = [None if t is None else t.clone().requires_grad_() for t in tensors]
        out = _op(leaves, p, kernel)
        (out * torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))).sum().backward()
        got[kernel] = [out.detach()] + [None if t is None else t.grad for t in leaves]
    for a, b in zip(got["triton"], got["reference"]):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


# ---- FrequencySparse -------------------------------------------------------------------------------


def test_spectrum_columns():
    # 1024 = 16 x 64: columns of 16 frequencies; kept f < M and f > 1024 - M
    assert plan_mod.spectrum_columns(1024, 64, 1) == (0, 16)  # DC only: one column, one dot block
    assert plan_mod.spectrum_columns(1024, 64, 16) == (63, 16)  # [0, 16) and (1008, 1024)
    assert plan_mod.spectrum_columns(1024, 64, 128) == (56, 16)  # 8 + 8 columns: a block exactly
    assert plan_mod.spectrum_columns(1024, 64, 114) == (56, 16)  # column 56 holds one kept bin, 911
    assert plan_mod.spectrum_columns(1024, 64, 129) == (56, 32)  # 9 + 8: the next power of two
    assert plan_mod.spectrum_columns(1024, 64, 512) == (0, 64)  # only Nyquist masked: every column
    assert plan_mod.spectrum_columns(1024, 64, 513) == (0, 64)  # dense
    assert plan_mod.spectrum_columns(256, 16, 3) == (0, 16)  # N2 = 16: nothing to skip


SPARSE = [
    # (u shape, k shape, params, D, pre, post, expected (N1, N2, W))
    ((2, 3, 500), (3, 500), ConvParams(1024, 0, 500, spectrum_bins=1), (3, 1), (2, 3, 500), (2, 3, 500), (32, 32, 16)),
    ((2, 500), (2, 500), ConvParams(1024, 0, 500, spectrum_bins=100), None, None, None, (32, 32, 16)),  # inside a block
    ((2, 1024), (2, 700), ConvParams(1024, 0, 1024, spectrum_bins=128), (2, 1024), None, None, (16, 64, 16)),  # block edge
    ((1, 1024), (1, 1024), ConvParams(1024, 0, 1024, spectrum_bins=114), None, None, None, (16, 64, 16)),  # one bin in a column
    ((2, 1024), (2, 1024), ConvParams(1024, 300, 1024, spectrum_bins=256), None, None, (2, 1024), (32, 32, 16)),  # wraps, edge
    ((2, 800), (1, 800), ConvParams(1024, 5, 900, conj_kernel=True, spectrum_bins=40), None, (2, 800), None, (16, 64, 16)),
    ((2, 2048), (2, 2048), ConvParams(2048, 0, 2048, spectrum_bins=100), None, None, None, (16, 128, 16)),
    ((2, 600), (2, 600), ConvParams(1024, 0, 600, spectrum_bins=512), None, None, None, (32, 32, 32)),  # Nyquist only
    ((3, 300), (3, 300), ConvParams(512, 0, 300, spectrum_bins=20), None, None, None, (16, 32, 16)),
    ((2, 256), (2, 256), ConvParams(256, 0, 256, spectrum_bins=7), None, None, None, (16, 16, 16)),  # nothing to skip
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(len(SPARSE)))
def test_sparse_spectrum_matches_reference(case, dtype):
    ushape, kshape, p, D, pre, post, (n1, n2, w) = SPARSE[case]
    r = _check(ushape, kshape, p, dtype, D, pre, post)
    assert (r.plan.n1, r.plan.n2, r.width) == (n1, n2, w) and r.m == p.n and r.frames is None
    for shape in r.plan.dot_shapes(r.half_in, r.half_out, r.width):
        tm.check_dot_shape(*shape)


def test_sparse_spectrum_bins_at_least_half_are_dense():
    u, k = torch.randn(2, 500), torch.randn(2, 500)
    p = ConvParams(1024, 0, 500, spectrum_bins=513)
    assert not p.sparse_spectrum and tm.resolve(u, k, None, None, None, p).cols == 0
    _check((2, 500), (2, 500), ConvParams(1024, 0, 500, spectrum_bins=600))


def test_sparse_outer_plan_skips_inner_columns(monkeypatch):
    # 16384 as 16 x 1024 (a test-only outer plan: the real 32 x 512 has an inner N2 of 16, one
    # dot block); inner columns hold 16384 / 32 = 512 frequencies, so M <= 4096 keeps 16 of 32
    monkeypatch.setitem(plan_mod.OUTER, 16384, (16, 1, 1024))
    plan_mod._plan_cached.cache_clear()
    try:
        p = ConvParams(16384, 3, 9000, conj_kernel=True, spectrum_bins=1500)
        r = _check((2, 9000), (1, 9000), p, torch.float64, post=(2, 9000))
        assert isinstance(r.plan, plan_mod.OuterPlan) and r.width == 16 and r.col0 == 29
        text = tm.explain(torch.randn(2, 9000), torch.randn(1, 9000), p=p)
        assert "inner stage 2 and inverse stage 2 compute 16 of 32 columns" in text
        assert "outer passes carry every frequency" in text
    finally:
        plan_mod._plan_cached.cache_clear()


def test_sparse_outer_plan_without_a_column_to_skip_is_masked():
    p = ConvParams(4096, 0, 2000, spectrum_bins=300)  # 16 x 256, inner 16 x 16: masked only
    r = _check((2, 2000), (2, 2000), p, torch.float64, D=(2, 2000))
    assert r.cols == 0 and r.bins == 300
    text = tm.explain(torch.randn(2, 2000), torch.randn(2, 2000), p=p)
    assert "no column skipped" in text and "300 of 2049 bins kept" in text


def test_sparse_spectrum_is_never_padded():
    p = ConvParams(700, 0, 300, spectrum_bins=50)  # dense, 700 would pad to 1024; sparse bins live at 700
    u, k = torch.randn(2, 300), torch.randn(2, 300)
    reason = tm.resolve(u, k, None, None, None, p)
    assert isinstance(reason, str) and "not padded" in reason
    assert "reference fallback" in tm.explain(u, k, p=p)
    torch.testing.assert_close(tm.run(u, k, None, None, None, p), fft_conv_reference(u, k, None, None, None, p))


def test_sparse_kernel_spectrum_is_stored_for_kept_columns_only():
    k = torch.randn(3, 100, dtype=torch.float64)
    full = plan_mod.kernel_spectrum(k, 1024, 1024, False, 1.0, torch.float64, (16, 64))
    kept = plan_mod.kernel_spectrum(k, 1024, 1024, False, 1.0, torch.float64, (16, 64), 40, 61, 16)
    assert full.shape == (3, 2, 16, 64) and kept.shape == (3, 2, 16, 16)
    f = torch.arange(1024).reshape(64, 16).T  # Monarch order: [k1, k2] is frequency k1 + 16 k2
    cols = (61 + torch.arange(16)) % 64
    keep = ((f < 40) | (f > 1024 - 40))[:, cols]
    torch.testing.assert_close(kept, torch.where(keep, full[..., cols], torch.zeros(())))
    outside = torch.ones(64, dtype=torch.bool)
    outside[cols] = False
    assert not ((f < 40) | (f > 1024 - 40))[:, outside].any()  # the columns left out hold no kept bin


@pytest.mark.parametrize("p", [
    ConvParams(1024, 0, 400, spectrum_bins=60),
    ConvParams(1024, 100, 400, conj_kernel=True, scale=0.5, spectrum_bins=129),
])
def test_sparse_gradients_through_op(p):
    _grads_match(((2, 400), (2, 400), (2, 1), (2, 400), (2, 400)), p)


# ---- PartialKernel: overlap-save frames ---------------------------------------------------------


def test_linear_segments():
    # One definition (convfuse.spec) serves the CPU path's tiles and the Triton frames.
    assert linear_segments(2048, 40, 0, 1000, False) == ((-39, 961, 0),)
    assert linear_segments(512, 50, 400, 112, True) == ((400, 463, 0), (-49, 0, 63))  # lags >= 0, then < 0
    assert linear_segments(600, 50, 560, 40, True) == ((-40, 0, 0),)


FRAMES = [
    # (u shape, k shape, params, D, pre, post, frames per row)
    ((2, 3, 1000), (3, 40), ConvParams(2048, 0, 1000), (3, 1), (2, 3, 1000), (2, 3, 1000), 5),  # causal, gated
    ((2, 1000), (2, 100), ConvParams(2048, 0, 1000, scale=2.0, n_power=-1.0), (2, 1000), None, None, 7),
    ((2, 700), (2, 30), ConvParams(2048, 50, 600), None, None, (2, 600), 3),  # offset window
    ((2, 900), (2, 60), ConvParams(2048, 0, 900, conj_kernel=True), (2, 900), None, None, 5),  # correlation
    ((2, 1000), (2, 50), ConvParams(1100, 1060, 40, conj_kernel=True), None, None, None, 1),  # negative lags only
    ((2, 1000), (2, 50), ConvParams(1100, 950, 150, conj_kernel=True), None, None, None, 2),  # both segments
    ((2, 1), (2, 40), ConvParams(2048, 0, 1000), None, (2, 1000), None, 5),  # u broadcast along the axis
    ((2, 3000), (2, 100), ConvParams(6000, 0, 3000), None, None, None, 20),  # one transform would pad to 4096
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(len(FRAMES)))
def test_partial_kernel_overlap_save_matches_reference(case, dtype):
    ushape, kshape, p, D, pre, post, frames = FRAMES[case]
    r = _check(ushape, kshape, p, dtype, D, pre, post)
    assert r.frames is not None and sum(r.frames.counts()) == frames and r.m == 256
    assert r.frames.window == (0 if p.conj_kernel else kshape[-1] - 1)


def test_overlap_save_is_chosen_and_explained():
    u, k = torch.randn(2, 8, 1000), torch.randn(8, 40)
    p = ConvParams(2048, 0, 1000)
    text = tm.explain(u, k, p=p)
    assert "overlap-save: 5 frames per row of N=256" in text and "window [39, 256)" in text, text
    before = sum(n for key, n in tm.LAUNCHES.items() if key.endswith("overlap-save"))
    tm.run(u, k, None, None, None, p)
    assert sum(n for key, n in tm.LAUNCHES.items() if key.endswith("overlap-save")) == before + 1
    # the whole kernel: one transform (2K > every fused size below n)
    assert "overlap-save" not in tm.explain(u, torch.randn(8, 1000), p=p)
    # a wrapping (cyclic) window is not a linear convolution: one transform
    assert "overlap-save" not in tm.explain(u, k, p=ConvParams(1024, 0, 1000))


def test_overlap_save_model_prefers_one_transform_when_frames_cost_more():
    # 512 outputs from a 200-tap kernel: N=512 would be the full size; N=256 < 2K is not allowed
    r = tm.resolve(torch.randn(2, 512), torch.randn(2, 200), None, None, None, ConvParams(1024, 0, 512))
    assert r.frames is None and r.m == 1024
    full = plan_mod.call_plan(262144, 131072, 1024, 0, 131072, False, torch.float32, torch.float16, torch.device("cpu"))
    block = blocks.choose(full, 262144, 131072, 1024, 0, 131072, False, torch.float32, torch.float16,
                          torch.device("cpu"), 2, 2)
    assert block.frames is not None and block.m == 2048 and block.frames.block == 1025  # issue 6's shape


def test_partial_kernel_gradients_through_op():
    # d u is a correlation with the short kernel (frames); d k correlates with the long input (one transform)
    _grads_match(((2, 3, 600), (3, 50), (3, 1), (2, 3, 600), (2, 3, 600)), ConvParams(2048, 0, 600))
    _grads_match(((2, 600), (2, 50), None, None, None), ConvParams(1300, 0, 560, conj_kernel=True))


def test_policies_end_to_end_with_kernel_triton():
    def conv(u, k):
        n = 2 * u.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]

    u, k = _tensors(((2, 4, 1024), (4, 1024)), torch.float64, seed=3)
    for policy, key, want in (
        ("partial:length=40", "overlap-save", conv(u, k[..., :40])),
        ("freq:bins=100", "columns", fft_conv_reference(u, k, None, None, None, ConvParams(2048, 0, 1024, spectrum_bins=100))),
    ):
        torch._dynamo.reset()
        fn = torch.compile(conv, backend="convfuse", options={"kernel": "triton", "inner": "eager", "policy": policy})
        before = sum(n for name, n in tm.LAUNCHES.items() if name.endswith(key))
        torch.testing.assert_close(fn(u, k), want, rtol=1e-10, atol=1e-10)
        assert sum(n for name, n in tm.LAUNCHES.items() if name.endswith(key)) > before, (policy, dict(tm.LAUNCHES))
    torch._dynamo.reset()
