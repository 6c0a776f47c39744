"""Kernel spectra in Monarch order made by a Triton kernel (spectrum.py, kernels_spectrum.py).

Under the Triton interpreter, against the torch-built spectrum (plan.torch_kernel_spectrum: a
full complex torch.fft, then the permuting copies), for every plan family the interpreter runs
in seconds: the fused two-radix sizes, their frequency-sparse factorizations with kept columns,
the three-level orders (4K; 8K is marked slow), and the outer plans' (N0, M1, M2) orders with and
without kept columns (32K, 64K; 128K is marked slow).  Then: the spectrum cache keeps the Triton
spectrum of a constant kernel under the sound rule, and forwards that use it match the plain
torch reference.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels (interpreted on CPU) need triton")

from convfuse import config  # noqa: E402
from convfuse.backends import cpu_cache  # noqa: E402
from convfuse.backends import triton_monarch as tm  # noqa: E402
from convfuse.backends.triton_monarch import plan as plan_mod, spectrum  # noqa: E402
from convfuse.spec import ConvParams  # noqa: E402
from fft_reference import reference  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", True)


def _triton_count() -> int:
    return sum(c for key, c in spectrum.SPECTRA.items() if key.startswith("triton"))


SPECTRA = [
    # (n, m, radices, bins, col0, cols, conj, Lk)
    (256, 256, (16, 16), 0, 0, 0, False, 256),
    (512, 512, (32, 16), 0, 0, 0, True, 200),  # causal: half of stage 1
    (600, 1024, (32, 32), 0, 0, 0, False, 300),  # padded size
    (1024, 1024, (32, 32), 0, 0, 0, True, 1024),
    (2048, 2048, (64, 32), 0, 0, 0, False, 1000),
    (1024, 1024, (16, 64), 40, 61, 16, False, 1024),  # frequency-sparse: kept columns, masked bins
    (2048, 2048, (32, 64), 100, 60, 16, True, 2048),
    (512, 512, (32, 16), 300, 0, 0, False, 512),  # bins > n/2: nothing masked
    (4096, 4096, (16, 16, 16), 0, 0, 0, True, 4096),  # three-level order
    (3000, 4096, (16, 16, 16), 500, 0, 0, False, 1500),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", range(len(SPECTRA)))
def test_triton_spectrum_equals_the_torch_one(case, dtype):
    n, m, radices, bins, col0, cols, conj, Lk = SPECTRA[case]
    g = torch.Generator().manual_seed(case)
    k = torch.randn(2, 3, Lk, generator=g).to(dtype)[:, ::2]  # strided rows: offsets, no copy
    before = _triton_count()
    got = spectrum.triton_spectrum(k, n, m, conj, 0.37, torch.float32, radices, bins, col0, cols)
    assert got is not None and _triton_count() == before + 1
    want = plan_mod.torch_kernel_spectrum(k, n, m, conj, 0.37, torch.float32, radices, bins, col0, cols)
    assert got.shape == want.shape and got.dtype == want.dtype and got.is_contiguous()
    assert ((got - want).abs().max() / want.abs().max()).item() < 2e-6
    if bins and not cols:
        dense = plan_mod.torch_kernel_spectrum(k, n, m, conj, 0.37, torch.float32, radices)
        dropped = (want == 0) & (dense != 0)
        assert dropped.any() == (bins <= m - bins) and (got[dropped] == 0).all()  # masked exactly


def test_fp64_spectrum_is_fp64_accurate():
    k = torch.randn(3, 700, dtype=torch.float64)
    got = spectrum.triton_spectrum(k, 1024, 1024, True, 1 / 3, torch.float64, (32, 32))
    want = plan_mod.torch_kernel_spectrum(k, 1024, 1024, True, 1 / 3, torch.float64, (32, 32))
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-13


@pytest.mark.slow
def test_8k_three_level_order():
    k = torch.randn(1, 8192)
    got = spectrum.triton_spectrum(k, 8192, 8192, False, 1.0, torch.float32, (32, 16, 16))
    want = plan_mod.torch_kernel_spectrum(k, 8192, 8192, False, 1.0, torch.float32, (32, 16, 16))
    assert ((got - want).abs().max() / want.abs().max()).item() < 2e-6


def _outer(n, radices, bins, col0, cols, conj, Lk, dtype=torch.float32, rows=1):
    k = torch.randn(rows, Lk, dtype=dtype, generator=torch.Generator().manual_seed(n + bins))
    before = spectrum.SPECTRA.copy()
    got = spectrum.triton_spectrum(k, n, n, conj, 0.37, dtype, radices, bins, col0, cols)
    assert got is not None
    made = [key for key in spectrum.SPECTRA if spectrum.SPECTRA[key] > before.get(key, 0)]
    assert len(made) == 1 and f"({radices[0] // 16} programs a row)" in made[0], made
    want = plan_mod.torch_kernel_spectrum(k, n, n, conj, 0.37, dtype, radices, bins, col0, cols)
    assert got.shape == want.shape and got.dtype == want.dtype
    return ((got - want).abs().max() / want.abs().max()).item()


def test_outer_plan_orders_in_one_launch():
    # 64K = 64 x (32 x 32): 4 programs a row, each the outer pass of 16 frequencies k0, then their
    # inner stages; causal (the zero half of the outer pass skipped).  32K: 16 kept columns of 32
    # (a frequency-sparse call runs the outer passes there), a correlation's conjugate
    assert _outer(65536, (64, 32, 32), 0, 0, 0, False, 30000) < 2e-6
    col0, w = plan_mod.spectrum_columns(32768, 32, 2000)
    assert w == 16 and _outer(32768, (32, 32, 32), 2000, col0, w, True, 20000) < 2e-6
    # fp64 three-radix orders (SPECTRUM3 is fp32-only): 4K and 8K, fp64-accurate
    assert _outer(4096, (16, 16, 16), 0, 0, 0, True, 4096, torch.float64, rows=2) < 1e-13
    assert _outer(8192, (32, 16, 16), 100, 0, 0, False, 3000, torch.float64) < 1e-13


@pytest.mark.slow
def test_64k_kept_columns_and_128k_outer_orders():
    col0, w = plan_mod.spectrum_columns(65536, 32, 3000)
    assert w == 16 and _outer(65536, (64, 32, 32), 3000, col0, w, True, 65536) < 2e-6
    assert _outer(131072, (128, 32, 32), 0, 0, 0, False, 131072) < 2e-6
    col0, w = plan_mod.spectrum_columns(131072, 32, 2000)
    assert _outer(131072, (128, 32, 32), 2000, col0, w, False, 60000) < 2e-6


def test_a_three_level_launch_that_does_not_fit_falls_to_the_outer_order_builder(monkeypatch):
    from triton.runtime.errors import OutOfResources

    from convfuse.backends.triton_monarch import kernels_spectrum as ks

    class Refused:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise OutOfResources(270336, 232448, "shared memory")
            return launch

    monkeypatch.setitem(ks.SPECTRUM3, True, Refused())
    monkeypatch.setattr(spectrum, "_REFUSED", set())
    k = torch.randn(2, 3000)
    for _ in range(2):  # refused once, remembered: the second call goes straight to the outer builder
        got = spectrum.triton_spectrum(k, 4096, 4096, False, 1.0, torch.float32, (16, 16, 16))
        want = plan_mod.torch_kernel_spectrum(k, 4096, 4096, False, 1.0, torch.float32, (16, 16, 16))
        assert got is not None and ((got - want).abs().max() / want.abs().max()).item() < 2e-6
    assert spectrum._REFUSED == {(4096, (16, 16, 16), torch.float32, k.device)}


def test_orders_not_built_here_are_torch_with_a_reason(monkeypatch):
    k = torch.randn(2, 100)
    assert spectrum.triton_spectrum(k, 4096, 4096, False, 1.0, torch.float32, (16, 16, 16), 10, 0, 8) is None
    assert spectrum.triton_spectrum(k, 1 << 20, 1 << 20, False, 1.0, torch.float32, (32, 32, 32, 32)) is None
    assert spectrum.triton_spectrum(k, 4096, 4096, False, 1.0, torch.float32, (16, 256)) is None  # no such plan
    assert any("8 kept columns" in key for key in spectrum.SPECTRA)
    assert any("4 radices" in key for key in spectrum.SPECTRA)
    # kernel_spectrum still answers, with torch's value
    got = plan_mod.kernel_spectrum(k, 4096, 4096, False, 1.0, torch.float32, (16, 16, 16), 10, 0, 8)
    torch.testing.assert_close(got, plan_mod.torch_kernel_spectrum(k, 4096, 4096, False, 1.0, torch.float32,
                                                                   (16, 16, 16), 10, 0, 8))
    # and CPU tensors without the interpreter never reach Triton
    monkeypatch.setattr(config, "triton_interpret", False)
    assert spectrum.triton_spectrum(k, 256, 256, False, 1.0, torch.float32, (16, 16)) is None


@pytest.mark.parametrize("n,radices,dtype", [(512, (32, 16), torch.float32),
                                              (4096, (16, 16, 16), torch.float64)])  # the outer plans' builder
def test_constant_kernel_keeps_its_triton_spectrum_under_the_sound_cache(n, radices, dtype):
    k = torch.randn(3, 256, dtype=dtype)
    make = lambda: plan_mod.kernel_spectrum(k, n, n, False, 0.5, dtype, radices)  # noqa: E731
    cpu_cache.clear()
    with plan_mod.cache_kernel_spectra():
        before = _triton_count()
        first, second, third = make(), make(), make()  # computed, stored (second sighting), hit
        assert _triton_count() == before + 2
        assert third is second
        torch.testing.assert_close(third, plan_mod.torch_kernel_spectrum(k, n, n, False, 0.5, dtype, radices))
        k.data[0, 3] += 1.0  # a write no version counter sees
        fresh = make()
        assert _triton_count() == before + 3 and fresh is not third
        torch.testing.assert_close(fresh, plan_mod.torch_kernel_spectrum(k, n, n, False, 0.5, dtype, radices))
    cpu_cache.clear()


FORWARDS = [
    # (u, k, params, dtype): forwards whose kernel spectrum the Triton kernel builds
    ((2, 3, 200), (3, 200), ConvParams(512, 0, 200, scale=1 / 512), torch.float32),
    ((2, 300), (2, 300), ConvParams(1024, 7, 300, conj_kernel=True), torch.float16),
    ((2, 1000), (1000,), ConvParams(2048, 0, 1000, scale=0.25), torch.float32),
    ((2, 600), (2, 600), ConvParams(1024, 0, 600, spectrum_bins=60), torch.float32),
    ((1, 2048), (1, 2048), ConvParams(4096, 0, 2048), torch.float32),  # three-level, one kernel
    ((2, 1000), (2, 1000), ConvParams(4096, 0, 1000, scale=0.5), torch.float64),  # outer passes, their spectrum
]


@pytest.mark.parametrize("case", range(len(FORWARDS)))
def test_forward_with_the_triton_spectrum_matches_the_reference(case):
    ushape, kshape, p, dtype = FORWARDS[case]
    if dtype == torch.float16:
        p = ConvParams(p.n, p.start, p.length, p.scale, p.n_power, p.conj_kernel, torch.float16)
    g = torch.Generator().manual_seed(case)
    u = torch.randn(ushape, generator=g).to(dtype)
    k = (torch.randn(kshape, generator=g) / kshape[-1] ** 0.5).to(dtype)
    before = _triton_count()
    out = tm.run(u, k, None, None, None, p)
    assert _triton_count() == before + 1
    ref = reference(u, k, None, None, None, p)
    tol = 5e-3 if dtype == torch.float16 else 2e-5
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: compiled Triton kernels need a GPU")
@pytest.mark.parametrize("case", range(len(SPECTRA)))
def test_triton_spectrum_on_the_gpu(case, monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", False)
    n, m, radices, bins, col0, cols, conj, Lk = SPECTRA[case]
    k = torch.randn(64, Lk, device="cuda")
    got = spectrum.triton_spectrum(k, n, m, conj, 0.37, torch.float32, radices, bins, col0, cols)
    assert got is not None, dict(spectrum.SPECTRA)
    want = plan_mod.torch_kernel_spectrum(k, n, m, conj, 0.37, torch.float32, radices, bins, col0, cols)
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5  # tf32x3 dots


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: compiled Triton kernels need a GPU")
@pytest.mark.parametrize("n,radices,bins,Lk", [(32768, (32, 32, 32), 0, 16384), (32768, (32, 32, 32), 2000, 32768),
                                               (65536, (64, 32, 32), 0, 30000), (131072, (128, 32, 32), 3000, 131072)])
def test_outer_order_spectrum_on_the_gpu(n, radices, bins, Lk, monkeypatch):
    # 32K fp32: SPECTRUM3's stages need more shared memory than any GPU has, so the outer builder runs
    monkeypatch.setattr(config, "triton_interpret", False)
    col0, cols = plan_mod.spectrum_columns(n, radices[-1], bins) if bins else (0, 0)
    k = torch.randn(64, Lk, device="cuda")
    got = spectrum.triton_spectrum(k, n, n, bins > 0, 0.37, torch.float32, radices, bins, col0, cols)
    assert got is not None, dict(spectrum.SPECTRA)
    want = plan_mod.torch_kernel_spectrum(k, n, n, bins > 0, 0.37, torch.float32, radices, bins, col0, cols)
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5  # tf32x3 dots
