"""cuFFT with the prologue and epilogue as one Triton kernel each (triton_monarch/cufft.py): the
path kernel="auto" runs on CUDA where the Monarch kernels lose or have no plan.  On CPU the
pointwise kernels run under the Triton interpreter (tiny shapes) around torch.fft; the
reference here is plain torch.fft, written out, importing nothing from convfuse's implementations.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from convfuse.backends.triton_monarch import cufft  # noqa: E402
from convfuse.spec import ConvParams  # noqa: E402
from fft_reference import reference




CASES = [
    # (u, k, D, pre, post, params)
    ((2, 3, 100), (3, 100), (3, 1), (2, 3, 100), (2, 3, 100), ConvParams(200, 0, 100)),
    ((2, 250), (1, 250), None, (2, 250), None, ConvParams(512, 5, 240, conj_kernel=True, scale=0.5)),
    ((2, 256), (2, 256), None, None, (2, 256), ConvParams(256, 200, 256)),  # window wraps at n
    ((3, 1), (3, 60), None, (3, 60), None, ConvParams(130, 0, 60, n_power=-1.0)),  # u broadcast along the axis
    ((2, 1300), (2, 40), None, None, None, ConvParams(1024, 3, 700)),  # u longer than n: truncated
    ((4, 300), (300,), (4, 300), None, None, ConvParams(600, 0, 300, spectrum_bins=40)),  # frequency-sparse
    ((3, 2, 50), (4, 1, 2, 50), None, None, None, ConvParams(100, 0, 50)),  # k broadcasts u's batch up
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_torch_fft(case):
    *shapes, p = CASES[case]
    g = torch.Generator().manual_seed(case)
    u, k, D, pre, post = (None if s is None else torch.randn(s, generator=g) for s in shapes)
    out = cufft.run(u, k, D, pre, post, p)
    ref = reference(u, k, D, pre, post, p)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out.double() - ref).abs().max() / ref.abs().max() < 2e-5


def test_half_output_and_strided_operands():
    g = torch.Generator().manual_seed(9)
    u = torch.randn(100, 4, generator=g).half().T  # last-axis stride 4
    post = torch.randn(4, 200, generator=g)[:, ::2]  # stride 2
    k = torch.randn(1, 100, generator=g).expand(4, 100)
    p = ConvParams(256, 0, 100, out_dtype=torch.float16)
    out = cufft.run(u, k, None, None, post, p)
    assert out.dtype == torch.float16
    ref = reference(u, k, None, None, post, p)
    assert (out.double() - ref).abs().max() / ref.abs().max() < 2e-3
