"""The C++ kernels of ``fft_conv``'s small CPU calls (``convfuse/csrc/fft_conv_small.cpp``): build, load, plan.

At 16..256 samples a call is all fixed cost, and from Python the operator's was 20-30 us over
eager's own (0.72-0.93x eager, bench/fixed_cost.py).  The C++ kernels run the same library
transforms without a Python frame.  They decide nothing: ``CpuCall`` (cpu.py) decides per call
shape whether a call is "straight" and ``add`` hands that shape's plan to the C++ table; a call
whose key (every argument, every operand's dtype, sizes and strides) is not in the table goes to
the Python kernels, which then live on the twin operator ``convfuse::_fft_conv_python``.

Building: once per (source, torch build, Python) with the system's C++ compiler (``$CXX``, else
``c++``/``g++``), against torch's own headers and libraries, ~15-25 s; the shared library is kept
under ``$XDG_CACHE_HOME/convfuse`` (``~/.cache/convfuse``).  No compiler, a failed build (a
compiler error is kept as a ``.failed`` file beside it, with the compiler's message, so it is
not retried on every import; a timeout or a disk error is retried next time)
or ``CONVFUSE_NATIVE_CPU=0``: the operator runs as before, all in Python, and ``status()`` says
why.  Nothing here raises.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import torch

from convfuse import config

log = logging.getLogger("convfuse")

SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "fft_conv_small.cpp"
BUILD_TIMEOUT_S = 600
_state = {"loaded": False, "reason": "not loaded yet"}
# The C++ key holds no setting: a plan is valid only under the settings it was made under, so
# every clear (any setting change: cpu_plan.clear) starts a new generation, and a plan made in an
# older one is never added.  Reentrant: a setting changed by this thread inside add (a listener
# runs clear) is seen by the check after the add.
_lock = threading.RLock()
_generation = [0]


def status() -> str:
    """'loaded (<path>)' or why the small calls run in Python."""
    return _state["reason"]


def loaded() -> bool:
    return _state["loaded"]


def cache_dir() -> Path:
    return Path(config.toolchain.cache_root) / "convfuse"


def _compiler() -> str | None:
    for name in (config.toolchain.cxx, "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _library_path(cxx: str) -> Path:
    h = hashlib.sha256()
    for part in (*(f.read_bytes() for f in sorted(SOURCE.parent.iterdir()) if f.suffix in (".cpp", ".h")),
                 torch.__version__.encode(), str(torch.version.git_version).encode(),
                 sys.version.encode(), sysconfig.get_platform().encode(), cxx.encode()):
        h.update(part)
    return cache_dir() / f"fft_conv_small-{h.hexdigest()[:16]}.so"


class CompileError(RuntimeError):
    """The compiler ran and refused the source: the same again next time, so it is remembered
    (``.failed``).  A timeout, a full disk or a missing directory is not: the next import retries."""


# OpenMP, as Inductor's C++ kernels: the multi-axis items run on torch's own intra-op threads
# (mkl_convnd.h's run_parallel).  The system's libgomp is linked by soname only; at load the
# process already holds torch's (torch/lib/libgomp.so.1), so both share one OpenMP runtime.  A
# compiler without OpenMP builds without it (those calls then run on one thread).
OPENMP_FLAGS = ("-fopenmp",)


def _build(cxx: str, target: Path) -> None:
    try:
        _compile(cxx, target, OPENMP_FLAGS)
    except CompileError as exc:
        log.info("convfuse: building with OpenMP failed (%s); building without it", str(exc)[:200])
        _compile(cxx, target, ())


def _compile(cxx: str, target: Path, flags: tuple[str, ...]) -> None:
    from torch.utils.cpp_extension import include_paths

    lib = Path(torch.__file__).parent / "lib"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    cmd = [cxx, "-O2", "-std=c++17", "-fPIC", "-shared", "-w", *flags,
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           *(f"-I{p}" for p in include_paths()), str(SOURCE), "-o", str(tmp),
           f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu"]
    log.info("convfuse: building the native CPU kernels (once per torch version, ~15 s): %s", target.name)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if out.returncode:
        tmp.unlink(missing_ok=True)
        raise CompileError(f"{Path(cxx).name} exited {out.returncode}: {out.stderr.strip()[-1500:]}")
    os.replace(tmp, target)  # atomic: a concurrent build's result is as good as this one's


def load() -> bool:
    """Build (if needed) and load the C++ kernels; True when they now serve ``fft_conv`` on CPU.
    Must run after ``convfuse::fft_conv`` and its twin are defined and before a Python kernel is
    put on fft_conv's CPU key (the C++ library registers CPU and AutogradCPU kernels there)."""
    if _state["loaded"]:
        return True
    try:
        if not config.native_cpu:
            _state["reason"] = "off (CONVFUSE_NATIVE_CPU=0)"
            return False
        if sys.platform != "linux":
            _state["reason"] = f"not built on {sys.platform} (Linux only)"
            return False
        cxx = _compiler()
        if cxx is None:
            _state["reason"] = "no C++ compiler ($CXX, c++, g++ or clang++) on PATH"
            return False
        target = _library_path(cxx)
        failed = target.with_suffix(".failed")
        if failed.exists():
            _state["reason"] = f"its build failed before (remove {failed} to retry): {failed.read_text()[:300]}"
            return False
        if not target.exists():
            try:
                _build(cxx, target)
            except CompileError as exc:  # a failed build leaves the Python path, until removed
                try:
                    failed.write_text(str(exc))
                except OSError:
                    pass
                raise
        torch.ops.load_library(str(target))
        from convfuse.backends import cpu_algos

        cpu_algos.use_native_direct(torch.ops.convfuse._direct_rows.default)  # short kernels (direct.h)
        transforms = "library transforms through torch.fft (libtorch_cpu exports no MKL DFTI)"
        if torch.ops.convfuse._mkl_descriptors():  # MKL's DFTI exported by libtorch_cpu (x86 wheels)
            cpu_algos.use_kept_descriptors(torch.ops.convfuse._rfft.default, torch.ops.convfuse._irfft.default,
                                           torch.ops.convfuse._pruned_conv_out.default)
            transforms = "library transforms on kept MKL descriptors"
        if torch.ops.convfuse._mkl_md_descriptors():  # and its multi-axis ones: fft_convnd's whole periods
            from convfuse.backends import cpu_nd

            cpu_nd.use_kept_descriptors(torch.ops.convfuse._convnd_kept_out.default)
            transforms += ", multi-axis ones too"
            if not torch.ops.convfuse._native_openmp():
                transforms += " (built without OpenMP: multi-axis calls on one thread)"
        _state.update(loaded=True, reason=f"loaded ({target}); {transforms}")  # cpu_plan.clear() clears it on setting changes
        return True
    except Exception as exc:  # noqa: BLE001  the Python kernels serve every call instead
        _state["reason"] = f"unavailable: {type(exc).__name__}: {str(exc)[:500]}"
        log.warning("convfuse: native CPU kernels %s; small CPU calls run in Python", _state["reason"])
        return False


def generation() -> int:
    """The current generation: read before a plan is made, handed back to ``add``."""
    return _generation[0]


def add(args: tuple, call, made_in: int) -> None:
    """Hand a straight call's plan (``CpuCall``) to the C++ table under this call's key, unless a
    setting changed since ``made_in`` (``generation()`` before the plan was made) or
    ``native_cpu`` is off.  ``args``: the call's 15 operator arguments, trailing defaults included."""
    if not _state["loaded"]:
        return
    plan = call.plan
    with _lock:
        if made_in != _generation[0] or not config.native_cpu:
            return
        torch.ops.convfuse._native_add(*args, plan.fft_n, plan.start, plan.length, float(plan.scale),
                                       bool(plan.conj), call.dtype, call.out_dtype, list(call.shape))
        if made_in != _generation[0] or not config.native_cpu:  # changed by this thread meanwhile
            torch.ops.convfuse._native_clear()


def clear(new_generation: bool = True) -> None:
    """Forget every plan and start a new generation (called by cpu_plan.clear, which drops the
    Python plans they came from, on every setting change; ``new_generation=False``: cpu_plan's
    table was full, the settings are unchanged)."""
    with _lock:
        if new_generation:
            _generation[0] += 1
        if _state["loaded"]:
            torch.ops.convfuse._native_clear()


def stats() -> tuple[int, int]:
    """(plans in the table, calls the C++ kernels ran since load)."""
    if not _state["loaded"]:
        return 0, 0
    size, hits = torch.ops.convfuse._native_stats()
    return size, hits
