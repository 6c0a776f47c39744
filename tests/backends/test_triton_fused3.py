"""The three-level fused kernel (kernels3.py / fused3.py): 4K..32K in one program per row pair.

Under the Triton interpreter on tiny batches (one or two row pairs), against plain torch.fft
written out here (nothing imported from convfuse's implementations).  32K is marked slow
(seconds in the interpreter).  The GPU limits the interpreter does not check (tl.dot >= 16 in
every dimension) are asserted by the plan.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from convfuse.backends.triton_monarch import fused3  # noqa: E402
from convfuse.spec import ConvParams  # noqa: E402
from fft_reference import reference




CASES = [
    # (u, k, D, pre, post, params, expected (m, half_in, half_out))
    # 4096 = 16^3: halves of 8 rows, skipped with the planes stacked in one dot dimension
    ((2, 3, 2048), (3, 2048), (3, 1), (2, 3, 2048), (2, 3, 2048), ConvParams(4096, 0, 2048), (4096, True, True)),
    ((2, 2000), (2, 1000), None, None, None, ConvParams(4096, 0, 3000), (4096, True, False)),  # input half only
    ((2, 3000), (2, 1000), None, None, (2, 2048), ConvParams(4096, 0, 2048), (4096, False, True)),  # output half only
    ((2, 4096), (2, 4096), None, None, (2, 4096), ConvParams(8192, 0, 4096), (8192, True, True)),  # causal skips
    ((3, 3000), (3000,), (3, 3000), None, None, ConvParams(6000, 0, 3000, scale=0.25), (8192, True, True)),  # padded
    ((2, 8000), (1, 8000), None, (2, 8000), None, ConvParams(16384, 0, 8000), (16384, True, True)),
    ((2, 4096), (2, 4096), None, None, None, ConvParams(4096, 100, 4096, conj_kernel=True), (4096, False, False)),
    ((2, 6000), (2, 5000), None, None, None, ConvParams(8192, 7000, 3000), (8192, False, False)),  # wraps at n
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_torch_fft(case):
    *shapes, p, want = CASES[case]
    g = torch.Generator().manual_seed(case)
    u, k, D, pre, post = (None if s is None else torch.randn(s, generator=g) for s in shapes)
    r = fused3.resolve(u, k, D, pre, post, p)
    assert not isinstance(r, str), r
    assert (r.m, r.half_in, r.half_out) == want
    out = fused3.run(u, k, D, pre, post, p)
    ref = reference(u, k, D, pre, post, p)
    assert out.shape == ref.shape
    assert (out.double() - ref).abs().max() / ref.abs().max() < 2e-5


def test_half_output_runs_half_dots():
    g = torch.Generator().manual_seed(1)
    u, post = (torch.randn(2, 3, 2000, generator=g).half() for _ in range(2))
    k = torch.randn(3, 2000, generator=g) / 2000
    p = ConvParams(4096, 0, 2000, out_dtype=torch.float16)
    r = fused3.resolve(u, k, None, None, post, p)
    assert r.plan.dot_dtype == torch.float16
    out = fused3.run(u, k, None, None, post, p)
    assert out.dtype == torch.float16
    ref = reference(u, k, None, None, post, p)
    assert (out.double() - ref).abs().max() / ref.abs().max() < 5e-3


def test_4k_stacked_halves_fp16_and_shapes():
    # the first stage's K and the last stage's M are 2 x 8 = 16 (plan.stacked_skip); fp16 dots
    from convfuse.backends.triton_monarch.plan import stacked_skip

    g = torch.Generator().manual_seed(5)
    u, pre = (torch.randn(1, 3, 2048, generator=g).half() for _ in range(2))
    k = torch.randn(3, 2048, generator=g) / 2048
    p = ConvParams(4096, 0, 2048, out_dtype=torch.float16)
    r = fused3.resolve(u, k, None, pre, None, p)
    assert r.half_in and r.half_out and stacked_skip(r.plan.radices[0]) and not r.plan.can_skip_half
    out = fused3.run(u, k, None, pre, None, p)
    ref = reference(u, k, None, pre, None, p)
    assert (out.double() - ref).abs().max() / ref.abs().max() < 5e-3


def test_refusals_are_reasons():
    u, k = torch.randn(2, 300), torch.randn(2, 300)
    assert "not a three-level size" in fused3.resolve(u, k, None, None, None, ConvParams(700, 5, 600, conj_kernel=True))
    assert "frequency-sparse" in fused3.resolve(u, k, None, None, None, ConvParams(4096, 0, 300, spectrum_bins=10))


@pytest.mark.slow
def test_32k_one_program():
    g = torch.Generator().manual_seed(3)
    u, k = torch.randn(1, 16384, generator=g), torch.randn(1, 16384, generator=g)
    p = ConvParams(32768, 0, 16384)
    out = fused3.run(u, k, None, None, None, p)
    ref = reference(u, k, None, None, None, p)
    assert (out.double() - ref).abs().max() / ref.abs().max() < 2e-5


def test_kernel_triton_runs_one_kernel_from_4k(monkeypatch):
    from convfuse.backends import triton_monarch as tm

    try:
        from convfuse import config
    except ImportError:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.setattr(config, "triton_interpret", True)
    g = torch.Generator().manual_seed(4)
    u, k = torch.randn(2, 3000, generator=g), torch.randn(2, 3000, generator=g)
    p = ConvParams(6000, 0, 3000)  # linear: padded to 8192
    assert isinstance(tm.resolve(u, k, None, None, None, p), fused3.Call3)
    assert "8192 = 32x16x16 in one kernel (padded from 6000)" in tm.explain(u, k, p=p)
    assert "skips causal input and causal output" in tm.explain(u, k, p=p)
    before = sum(n for key, n in tm.LAUNCHES.items() if key.endswith("one kernel"))
    out = tm.run(u, k, None, None, None, p)
    assert sum(n for key, n in tm.LAUNCHES.items() if key.endswith("one kernel")) == before + 1
    ref = reference(u, k, None, None, None, p)
    assert (out.double() - ref).abs().max() / ref.abs().max() < 2e-5
    # without the size in THREE_LEVEL_SIZES the outer passes run, with the same result
    monkeypatch.setattr(tm.select, "THREE_LEVEL_SIZES", set())
    assert "outer radix" in tm.explain(u, k, p=p)
    torch.testing.assert_close(tm.run(u, k, None, None, None, p), out, rtol=1e-5, atol=1e-5)


def test_plans_beyond_the_devices_shared_memory_are_refused(monkeypatch):
    monkeypatch.setattr(fused3, "device_smem", lambda device: 99 * 1024)  # a consumer GPU
    u, k = torch.randn(2, 8000), torch.randn(2, 8000)
    assert not isinstance(fused3.resolve(u.half(), k, None, None, None,
                                         ConvParams(16384, 0, 8000, out_dtype=torch.float16)), str)
    assert "shared memory" in fused3.resolve(u, k, None, None, None, ConvParams(16384, 0, 8000))
    assert "shared memory" in fused3.resolve(u.half(), torch.randn(2, 16000), None, None, None,
                                             ConvParams(32768, 0, 16000, out_dtype=torch.float16))


def test_4k_compiles_for_sm90_in_registers():
    # without a GPU: the 4K plan at its 8 warps, fp16 dots, compiled to a cubin; no spills, half mma,
    # shared memory within a consumer GPU's 99 KB (the resources table has every size)
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    triton = pytest.importorskip("triton")
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("Triton's NVIDIA backend is not installed")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from convfuse.backends.triton_monarch import kernels3

    fn = kernels3.MONARCH_CONV3[False]
    consts = dict(N1=16, N2=16, N3=16, HALF_IN=False, HALF_OUT=False, HAS_PRE=True, HAS_D=True, HAS_POST=True,
                  PREC="ieee")
    sig = {a: "constexpr" if a in consts else "*i64" if a.endswith("off_ptr") or a == "pair_ptr" else
           "*fp32" if a in ("k_ptr", "tw1_ptr", "t2_ptr") else "*fp16" if a.endswith("_ptr") else "i32"
           for a in fn.arg_names}
    try:
        k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": fused3.WARPS3[4096]})
    except (RuntimeError, FileNotFoundError) as e:
        pytest.skip(f"cannot compile for sm90 here: {e}")
    assert k.metadata.shared <= 99 * 1024
    assert re.search(r"mma[a-z0-9_.]*\.f16\.f16", k.asm["ptx"])
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("no cuobjdump in this Triton")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    assert re.search(r"STACK:0\b", usage), usage
