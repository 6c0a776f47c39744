"""Two real rows with different kernels in one complex transform (kernels_twok.py), under the
Triton interpreter, against the torch.fft reference: B = 1 with per-channel kernels, where no two
rows share a kernel and kernels.py's pairing leaves every row alone."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels (interpreted on CPU) need triton")

from convfuse import config  # noqa: E402
from convfuse.backends.reference import fft_conv_reference  # noqa: E402
from convfuse.backends.triton_monarch import launch  # noqa: E402
from convfuse.backends.triton_monarch.plan import check_dot_shape  # noqa: E402
from convfuse.spec import ConvParams  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", True)


def _paired_launches():
    return sum(v for k, v in launch.LAUNCHES.items() if "two kernels a pair" in k)


CASES = [
    # (u shape, k shape, params, D, pre, post)
    ((1, 3, 100), (3, 100), ConvParams(256, 0, 100), None, None, None),  # 16 x 16, odd row count
    ((1, 4, 500), (4, 500), ConvParams(1024, 0, 500), (4, 1), (1, 4, 500), (1, 4, 500)),  # causal skips, gates
    ((1, 2, 256), (2, 256), ConvParams(256, 200, 256), None, None, None),  # cyclic, window wraps
    ((1, 2, 250), (2, 250), ConvParams(512, 5, 240, conj_kernel=True, scale=0.5), None, None, None),  # correlation
    ((2, 2, 1000), (2, 2, 1000), ConvParams(2048, 0, 1000), None, None, (2, 2, 1000)),  # per-batch kernels, 64 x 32
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_rows_with_different_kernels_share_a_transform(case, dtype):
    ushape, kshape, p, D, pre, post = CASES[case]
    g = torch.Generator().manual_seed(case)
    u, k = (torch.randn(s, generator=g, dtype=dtype) for s in (ushape, kshape))
    Dt, pg, po = (None if s is None else torch.randn(s, generator=g, dtype=dtype) for s in (D, pre, post))
    before = _paired_launches()
    assert "rows with different kernels paired" in launch.explain(u, k, Dt, pg, po, p)
    out = launch.run(u, k, Dt, pg, po, p)
    assert _paired_launches() == before + 1
    ref = fft_conv_reference(u, k, Dt, pg, po, p)
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    assert err < (1e-12 if dtype == torch.float64 else 2e-5), err


def test_fp16_rows_with_different_kernels():
    g = torch.Generator().manual_seed(9)
    u = torch.randn(1, 4, 500, generator=g).half()
    k = (torch.randn(4, 500, generator=g) / 500**0.5).half()
    p = ConvParams(1024, 0, 500, out_dtype=torch.float16)
    out = launch.run(u, k, None, None, None, p)
    ref = fft_conv_reference(u, k, None, None, None, p)
    assert ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item() < 1e-2


def test_shared_kernels_keep_the_one_spectrum_pairing():
    u, k = torch.randn(4, 3, 100), torch.randn(3, 100)  # each kernel has 4 rows to pair
    before = _paired_launches()
    launch.run(u, k, None, None, None, ConvParams(256, 0, 100))
    assert _paired_launches() == before
    assert "different kernels" not in launch.explain(u, k, None, None, None, ConvParams(256, 0, 100))
    # a 1-row call has nothing to pair with
    launch.run(torch.randn(1, 100), torch.randn(1, 100), None, None, None, ConvParams(256, 0, 100))
    assert _paired_launches() == before


def test_gpu_dot_shapes():
    # stage 1 (N1, RIN) @ (RIN, N2), stage 2 and inverse stage 2 (N1, N2) @ (N2, N2), inverse stage 1
    for n1, n2 in ((16, 16), (32, 16), (32, 32), (64, 32)):
        for rin in {n1, n1 // 2} - {8}:
            check_dot_shape(n1, n2, rin)
        check_dot_shape(n1, n2, n2)
        for rout in {n1, n1 // 2} - {8}:
            check_dot_shape(rout, n2, n1)
