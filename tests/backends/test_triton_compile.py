"""Compile every Triton kernel for NVIDIA targets ahead of time, with no GPU present.

The interpreter checks what the kernels compute but not that they compile: types, layouts and
tl.dot shapes are only checked by the real compiler.  Triton compiles for a named target (down to
a cubin with its bundled ptxas) without a device, so this runs in CI; it also bounds the shared
memory each kernel takes against consumer GPUs (~99 KB per block).
"""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

from convfuse.backends.triton_monarch import kernels, kernels_outer as ko  # noqa: E402

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:  # pragma: no cover
    pytest.skip("this Triton has no ahead-of-time compile API", allow_module_level=True)
if "nvidia" not in getattr(triton.backends, "backends", {}):
    pytest.skip("Triton's NVIDIA backend is not installed", allow_module_level=True)

CONSUMER_SMEM = 99 * 1024
COMPUTE_PTRS = ("z_ptr", "k_ptr", "tw_ptr", "otw_ptr")  # compute-dtype buffers; the rest are in/dot dtype
HALF = ("fp16", "bf16")  # with half dots the outer passes' buffer z_ptr is half too (launch.outer_buffer_dtype)


def _compile(fn, consts, dtype, compute="fp32", arch=90):
    sig = {}
    for a in fn.arg_names:
        if a in consts:
            sig[a] = "constexpr"
        elif a.endswith("off_ptr") or a in ("order_ptr", "pair_ptr"):
            sig[a] = "*i64"
        elif a.endswith("_ptr"):
            half_z = a == "z_ptr" and dtype in HALF
            sig[a] = f"*{compute}" if a in COMPUTE_PTRS and not half_z else f"*{dtype}"
        else:
            sig[a] = "i32"
    try:
        return triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    except (RuntimeError, FileNotFoundError) as e:  # no ptxas / LLVM for this target in this install
        if "ptxas" in str(e).lower() or "not found" in str(e).lower():
            pytest.skip(f"cannot compile for sm{arch} here: {e}")
        raise


EPI = dict(HAS_PRE=True, HAS_D=True, HAS_POST=True)


@pytest.mark.parametrize(
    "name,dtype,compute,consts",
    [
        ("conv2", "fp16", "fp32", dict(N1=32, N2=32, W=32, HALF_IN=True, HALF_OUT=True, FRAMES=False, PREC="ieee", **EPI)),
        ("conv2", "bf16", "fp32", dict(N1=32, N2=16, W=16, HALF_IN=True, HALF_OUT=False, FRAMES=False, PREC="ieee", **EPI)),
        ("conv2", "fp32", "fp32", dict(N1=16, N2=16, W=16, HALF_IN=False, HALF_OUT=False, FRAMES=False, PREC="tf32x3", **EPI)),
        ("conv2", "fp16", "fp32", dict(N1=64, N2=32, W=32, HALF_IN=True, HALF_OUT=True, FRAMES=False, PREC="ieee", **EPI)),
        ("conv2", "fp64", "fp64", dict(N1=32, N2=32, W=32, HALF_IN=False, HALF_OUT=True, FRAMES=False, PREC="ieee", **EPI)),
        # frequency-sparse column skipping, on the default and the narrow-column factorizations
        ("conv2", "fp16", "fp32", dict(N1=32, N2=32, W=16, HALF_IN=True, HALF_OUT=True, FRAMES=False, PREC="ieee", **EPI)),
        ("conv2", "bf16", "fp32", dict(N1=16, N2=128, W=16, HALF_IN=False, HALF_OUT=False, FRAMES=False, PREC="ieee", **EPI)),
        ("conv2", "fp32", "fp32", dict(N1=16, N2=64, W=32, HALF_IN=False, HALF_OUT=False, FRAMES=False, PREC="tf32x3", **EPI)),
        # overlap-save frames (partial kernels)
        ("conv2", "fp16", "fp32", dict(N1=64, N2=32, W=32, HALF_IN=False, HALF_OUT=False, FRAMES=True, PREC="ieee", **EPI)),
        ("conv2", "fp32", "fp32", dict(N1=16, N2=16, W=16, HALF_IN=False, HALF_OUT=False, FRAMES=True, PREC="tf32x3", **EPI)),
        ("outer_fwd", "fp16", "fp32", dict(N0=128, M=1024, BJ=32, KB=16, HALF_IN=True, HAS_PRE=True, PREC="ieee")),
        ("inner", "bf16", "fp32", dict(NSEQ=32, NTW=32, M1=32, M2=32, W=32, PREC="ieee")),
        ("inner", "fp32", "fp32", dict(NSEQ=64, NTW=64, M1=16, M2=16, W=16, PREC="tf32x3")),
        ("inner", "fp16", "fp32", dict(NSEQ=32, NTW=32, M1=32, M2=32, W=16, PREC="ieee")),  # sparse: half the columns
        ("mid", "fp16", "fp32", dict(N0A=64, N0B=64, M=1024, BJ=32, KB=16, INVERSE=False, PREC="ieee")),
        ("mid", "fp32", "fp32", dict(N0A=32, N0B=16, M=1024, BJ=32, KB=16, INVERSE=True, PREC="tf32x3")),
        ("outer_inv", "fp16", "fp32", dict(N0=32, M=1024, BJ=32, KB=16, HALF_OUT=True, PREC="ieee", **EPI)),
    ],
)
def test_kernels_compile_for_sm90(name, dtype, compute, consts):
    fn = {
        "conv2": kernels.MONARCH_CONV2[False], "outer_fwd": ko.OUTER_FWD[False], "inner": ko.INNER[False],
        "mid": ko.MID[False], "outer_inv": ko.OUTER_INV[False],
    }[name]
    compiled = _compile(fn, consts, dtype, compute)
    assert compiled.asm.get("cubin"), "no cubin produced"
    assert compiled.metadata.shared <= CONSUMER_SMEM, f"{name} needs {compiled.metadata.shared} B of shared memory"


@pytest.mark.parametrize("name,consts", [
    ("outer_fwd", dict(N0=64, M=1024, BJ=32, KB=16, HALF_IN=True, HAS_PRE=True, PREC="ieee")),
    ("inner", dict(NSEQ=64, NTW=64, M1=32, M2=32, W=32, PREC="ieee")),
    ("mid", dict(N0A=32, N0B=32, M=1024, BJ=32, KB=16, INVERSE=True, PREC="ieee")),
    ("outer_inv", dict(N0=64, M=1024, BJ=32, KB=16, HALF_OUT=True, PREC="ieee", **EPI)),
])
@pytest.mark.parametrize("arch", [90, 80])
def test_outer_kernels_compile_with_a_half_buffer(name, consts, arch):
    fn = {"outer_fwd": ko.OUTER_FWD, "inner": ko.INNER, "mid": ko.MID, "outer_inv": ko.OUTER_INV}[name][False]
    compiled = _compile(fn, consts, "fp16", arch=arch)
    assert compiled.metadata.shared <= CONSUMER_SMEM


def test_fused_kernel_compiles_for_sm80():
    _compile(kernels.MONARCH_CONV2[False], dict(N1=32, N2=32, W=32, HALF_IN=True, HALF_OUT=True, FRAMES=False,
                                                PREC="ieee", **EPI), "bf16", arch=80)


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("dtype,n1,n2,prec", [("fp16", 64, 32, "ieee"), ("bf16", 32, 32, "ieee"),
                                              ("fp32", 32, 16, "tf32x3")])
def test_two_kernel_pair_kernel_compiles(arch, dtype, n1, n2, prec):
    from convfuse.backends.triton_monarch import kernels_twok as kt

    consts = dict(N1=n1, N2=n2, HALF_IN=True, HALF_OUT=True, PREC=prec, **EPI)
    # st_ptr: the pair spectra, compute dtype
    fn = kt.MONARCH_CONV2_TWOK[False]
    sig = {a: "constexpr" if a in consts else "*i64" if a.endswith("off_ptr") or a == "pair_ptr" else
           "*fp32" if a in ("st_ptr", "tw_ptr") else f"*{dtype}" if a.endswith("_ptr") else "i32"
           for a in fn.arg_names}
    try:
        compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": 4})
    except (RuntimeError, FileNotFoundError) as e:
        if "ptxas" in str(e).lower() or "not found" in str(e).lower():
            pytest.skip(f"cannot compile for sm{arch} here: {e}")
        raise
    assert compiled.asm.get("cubin") and compiled.metadata.shared <= CONSUMER_SMEM
