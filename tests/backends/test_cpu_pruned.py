"""FrequencySparse on the pruned transform (convfuse/csrc/mkl_pruned.h): only the kept bins are
computed, by n2 transforms of n1 each way and two twiddle passes (n = n1 * n2).

The C++ op ``convfuse::_pruned_conv`` against the masked definition in plain torch.fft (fp64;
nothing imported from the implementation), over sizes whose n2 rows do and do not divide the
signal, windows that start mid-row, one bin and n1/2 bins, strided rows and an output written in
place; bad arguments raise; then the operator: a call the cost model prunes runs it (seen in the
profile) with the masked values and gradients, and the near misses (too many bins, too small, fp64,
a wrapping window) keep the dense transform."""

from __future__ import annotations

import pytest
import torch

from convfuse.backends import cpu, cpu_algos, cpu_cost, cpu_plan
from tests.conftest import assert_close_rel

pytestmark = pytest.mark.skipif(cpu_algos._pruned[0] is None,
                                reason="needs the native library with MKL's DFTI (x86 torch wheels)")

PRUNED = torch.ops.convfuse._pruned_conv.default if cpu_algos._pruned[0] is not None else None
OP = torch.ops.convfuse.fft_conv


def masked_rows(x, K, n, start, length):
    """Rows of x (R, W) with K (C, M)'s bins (row r: K[r % C]), every other bin zero, windowed."""
    R, (C, M) = x.shape[0], K.shape
    U = torch.fft.rfft(x.double(), n=n)
    Y = torch.zeros_like(U)
    Y[:, :M] = U[:, :M] * K.to(torch.complex128).repeat(R // C, 1)
    return torch.fft.irfft(Y, n=n)[:, start:start + length]


def masked(u, k, n, start, length, conj, bins):
    K = torch.fft.rfft(k, n=n)
    K = torch.cat([K[..., :bins], torch.zeros_like(K[..., bins:])], dim=-1)
    c = torch.fft.irfft(torch.fft.rfft(u, n=n) * (K.conj() if conj else K), n=n)
    return torch.roll(c, -start, dims=-1)[..., :length]


def rel(got, want) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


# (n, M, n1, W, start, length, R, C): a causal half, W not a multiple of n2, a window that
# starts mid-row and runs past the signal, one bin, n1/2 bins, n1 = 2 (n2 = n/2), a non-power-of-two n
CASES = [(64, 4, 16, 32, 0, 32, 6, 3), (64, 8, 16, 64, 0, 64, 2, 1), (64, 1, 2, 33, 5, 40, 4, 2),
         (4096, 256, 1024, 2048, 0, 2048, 4, 4), (4096, 64, 256, 2000, 17, 3000, 3, 1),
         (96, 6, 12, 50, 3, 90, 2, 2), (128, 32, 64, 128, 0, 128, 2, 2), (60, 3, 6, 59, 59, 1, 1, 1)]


@pytest.mark.parametrize("case", CASES, ids=[f"n{c[0]}-M{c[1]}-n1_{c[2]}" for c in CASES])
def test_pruned_rows_match_the_masked_definition(case):
    n, M, n1, W, start, length, R, C = case
    gen = torch.Generator().manual_seed(n + M)
    x = torch.randn(R, W, generator=gen)
    K = torch.randn(C, M, dtype=torch.complex64, generator=gen)
    assert rel(PRUNED(x, K, n, n1, start, length), masked_rows(x, K, n, start, length)) < 2e-6


def test_strided_rows_and_an_output_in_place():
    """A tile is a slice of a batch (rows at two strides) and the output a slice of the call's."""
    gen = torch.Generator().manual_seed(1)
    n, M, n1 = 256, 16, 64
    big = torch.randn(3, 10, 200, generator=gen)
    x = big[:, 2:6, :128]  # (3, 4, 128) at strides (2000, 200, 1)
    K = torch.randn(4, M, dtype=torch.complex64, generator=gen)
    want = masked_rows(x.reshape(12, 128), K, n, 0, 128).view(3, 4, 128)
    assert rel(PRUNED(x, K, n, n1, 0, 128), want) < 2e-6
    out_big = torch.full((3, 8, 130), 7.0)
    out = out_big[:, 1:5, 1:129]
    torch.ops.convfuse._pruned_conv_out(x, K, n, n1, 0, 128, out)
    assert rel(out, want) < 2e-6
    assert (out_big[:, 0] == 7).all() and (out_big[:, 5:] == 7).all() and (out_big[..., 0] == 7).all()
    assert (out_big[..., 129] == 7).all()  # nothing written outside the slice


@pytest.mark.parametrize("bad", [
    dict(n1=15), dict(n1=48), dict(n1=64, M=33), dict(start=200, length=100), dict(dtype=torch.float64),
    dict(R=5), dict(W=300), dict(n1=256),
])
def test_bad_arguments_raise(bad):
    n, M, n1, W, start, length, R = 256, bad.get("M", 8), bad.get("n1", 64), bad.get("W", 128), bad.get(
        "start", 0), bad.get("length", 128), bad.get("R", 4)
    x = torch.randn(R, W, dtype=bad.get("dtype", torch.float32))
    K = torch.randn(2, M, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="convfuse._pruned_conv"):
        PRUNED(x, K, n, n1, start, length)


@pytest.fixture
def pruned_from_64(monkeypatch):
    """The cost model's line at n = 64 instead of 16384, so small calls exercise the path."""
    def reset():
        cpu_cost.pruned_size.cache_clear()
        cpu_cost.choose_plan.cache_clear()
        cpu_plan.clear()

    monkeypatch.setattr(cpu_cost, "PRUNED_MIN_N", 64)
    reset()
    yield
    monkeypatch.undo()
    reset()


def ran_pruned(fn) -> bool:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return any(e.name.startswith("convfuse::_pruned_conv") for e in prof.events())


@pytest.mark.parametrize("tiled", [False, True], ids=["fast", "tiled"])
@pytest.mark.parametrize("conj", [False, True], ids=["conv", "corr"])
def test_the_operator_runs_pruned_calls_with_masked_values_and_gradients(pruned_from_64, monkeypatch, tiled, conj):
    if tiled:
        monkeypatch.setattr(cpu, "FAST_BYTES", -1)
    gen = torch.Generator().manual_seed(2)
    n, L, bins = 256, 128, 12
    u = torch.randn(3, 8, L, generator=gen, requires_grad=True)
    k = torch.randn(8, L, generator=gen, requires_grad=True)
    assert cpu_cost.pruned_size(n, bins) == 64  # the smallest even divisor of 256 from 4 * 12
    call = lambda: OP(u, k, None, None, None, n, 0, L, 1.0, 0.0, conj, torch.float32, "cpu", False, bins)  # noqa: E731
    assert ran_pruned(call)
    got = call()
    ud, kd = u.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    want = masked(ud, kd, n, 0, L, conj, bins)
    assert rel(got, want) < 2e-6
    g = torch.randn(want.shape, dtype=torch.float64, generator=gen)
    for a, b in zip(torch.autograd.grad(got, (u, k), g.float()), torch.autograd.grad(want, (ud, kd), g)):
        assert rel(a, b) < 5e-6


def test_the_operator_with_an_epilogue_on_pruned_tiles(pruned_from_64, monkeypatch):
    monkeypatch.setattr(cpu, "FAST_BYTES", -1)
    gen = torch.Generator().manual_seed(3)
    n, L, bins = 128, 64, 6
    u, pre, post = (torch.randn(2, 4, L, generator=gen) for _ in range(3))
    D = torch.randn(4, 1, generator=gen)
    k = torch.randn(4, L, generator=gen)
    call = lambda: OP(u, k, D, pre, post, n, 0, L, 1.0, 0.0, False, torch.float32, "cpu", True, bins)  # noqa: E731
    assert ran_pruned(call)
    ue = (u * pre).double()
    want = (masked(ue, k.double(), n, 0, L, False, bins) + ue * D.double()) * post.double()
    for _ in range(2):  # the constant kernel's kept bins cached the second time
        assert rel(call(), want) < 2e-6


@pytest.mark.parametrize("near_miss", ["too-many-bins", "too-small", "fp64", "wrapping-window"])
def test_near_misses_keep_the_dense_transform(near_miss):
    """The default line: rows of n1 <= 4096 (bins <= 1024), n from 16384, fp32, a window in one period."""
    n, L, bins, dtype, start, length = 16384, 8192, 1024, torch.float32, 0, 8192
    if near_miss == "too-many-bins":
        bins = 1025
    elif near_miss == "too-small":
        n, L, bins, length = 8192, 4096, 256, 4096
    elif near_miss == "fp64":
        dtype = torch.float64
    else:
        start, length = 12000, 8192
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(1, 2, L, dtype=dtype, generator=gen)
    k = torch.randn(2, L, dtype=dtype, generator=gen)
    call = lambda: OP(u, k, None, None, None, n, start, length, 1.0, 0.0, False, dtype, "cpu", False, bins)  # noqa: E731
    assert not ran_pruned(call)
    assert rel(call(), masked(u.double(), k.double(), n, start, length, False, bins)) < 2e-6


@pytest.mark.parametrize("n", [16384, 65536])
def test_one_kept_bin_sums_at_most_64_rows_in_fp32(n):
    """One bin would allow n1 = 4; the rows summed per bin are capped (PRUNED_MAX_N2) so fp32
    rounding stays at the dense transform's."""
    assert n // cpu_cost.pruned_size(n, 1) <= cpu_cost.PRUNED_MAX_N2
    gen = torch.Generator().manual_seed(6)
    u = torch.randn(1, 2, n // 2, generator=gen)
    k = torch.randn(2, n // 2, generator=gen)
    call = lambda: OP(u, k, None, None, None, n, 0, n // 2, 1.0, 0.0, False, torch.float32, "cpu", False, 1)  # noqa: E731
    assert ran_pruned(call)
    assert rel(call(), masked(u.double(), k.double(), n, 0, n // 2, False, 1)) < 1e-6


def test_a_pruned_call_at_the_default_line_and_its_report():
    gen = torch.Generator().manual_seed(5)
    n, L, bins = 16384, 8192, 512
    u = torch.randn(1, 2, L, generator=gen)
    k = torch.randn(2, L, generator=gen)
    call = lambda: OP(u, k, None, None, None, n, 0, L, 1.0, 0.0, False, torch.float32, "cpu", False, bins)  # noqa: E731
    assert ran_pruned(call)
    assert rel(call(), masked(u.double(), k.double(), n, 0, L, False, bins)) < 2e-6
    text = cpu.describe_cpu_algorithm(n, L, L, 0, L, 2, bins)
    assert "pruned: 8 transforms of 2048 a way" in text and "79% of the dense butterflies" in text, text


@pytest.mark.parametrize("tiled", [False, True], ids=["fast", "tiled"])
@pytest.mark.parametrize("dtypes", [(torch.float16, torch.float16), (torch.bfloat16, torch.float32),
                                    (torch.float32, torch.float64)], ids=["fp16", "bf16-fp32gate", "fp32-fp64gate"])
def test_mixed_precision_gates_agree_with_the_dense_transform(pruned_from_64, monkeypatch, tiled, dtypes):
    """A low-precision signal computes in fp32 (the gate product too, as the dense path's
    prologue does); a wider gate than the signal: whatever the dense path gives, or its error."""
    if tiled:
        monkeypatch.setattr(cpu, "FAST_BYTES", -1)
    udt, gdt = dtypes
    gen = torch.Generator().manual_seed(7)
    n, L, bins = 256, 128, 10
    u = torch.randn(2, 4, L, generator=gen).to(udt)
    pre = torch.randn(2, 4, L, generator=gen).to(gdt)
    k = torch.randn(4, L, generator=gen).to(udt)

    def call():
        return OP(u, k, None, pre, None, n, 0, L, 1.0, 0.0, False, torch.float32, "cpu", False, bins)

    try:
        dense_error, dense = None, None
        monkeypatch.setattr(cpu_cost, "PRUNED_MIN_N", 1 << 40)
        cpu_cost.pruned_size.cache_clear(), cpu_cost.choose_plan.cache_clear(), cpu_plan.clear()
        dense = call()
    except (RuntimeError, TypeError) as exc:
        dense_error = type(exc)
    monkeypatch.setattr(cpu_cost, "PRUNED_MIN_N", 64)
    cpu_cost.pruned_size.cache_clear(), cpu_cost.choose_plan.cache_clear(), cpu_plan.clear()
    if dense_error is not None:
        with pytest.raises(dense_error):
            call()
        return
    assert rel(call(), dense.double()) < 2e-6


def test_a_constant_kernel_written_behind_the_cache_is_seen(pruned_from_64):
    """The pruned path reads the kernel's kept bins from the same sound cache as the dense one:
    a ``.data`` write and an in-place optimizer-style step between calls (no version bump for
    the first) give the new kernel's result."""
    gen = torch.Generator().manual_seed(8)
    n, L, bins = 256, 128, 12
    u = torch.randn(2, 4, L, generator=gen)
    weight = torch.nn.Parameter(torch.randn(4, L, generator=gen))

    def call():
        with torch.no_grad():
            return OP(u, weight, None, None, None, n, 0, L, 1.0, 0.0, False, torch.float32, "cpu", True, bins)

    for write in (lambda: weight.data.mul_(-3.0), lambda: weight.detach().add_(0.5), lambda: None):
        for _ in range(3):  # stored on the second sighting, read on the third
            assert ran_pruned(call)
            assert rel(call(), masked(u.double(), weight.detach().double(), n, 0, L, False, bins)) < 2e-6
        write()
