#!/usr/bin/env bash
# The GPU device check, from the source tree with no pip: under 8 minutes on one H100/H200.
#
#   bench/gpu_check.sh              GPU tests (pytest, when importable; 150 s + 90 s at most: the
#                                   forward/half-dot/drop-in tests, then the GPU tests of the backward,
#                                   spectrum and mixing kernels), then
#                                   bench/gpu_check.py: half-dot checks with PTX evidence and the
#                                   FlashFFTConv benchmark (B=64, H=768, fp16/bf16, n = 256..32K, 1M,
#                                   forward and forward+backward vs eager and Inductor), every row
#                                   appended to bench/results/gpu-<device>.jsonl as it is measured
#   bench/gpu_check.sh --dry-run    the same end to end on this CPU: GPU tests skip with their
#                                   reason, the script runs under the Triton interpreter, tiny sizes
# Other arguments go to bench/gpu_check.py (e.g. --budget-s 240, --sizes 4096 32768).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
start=$(date +%s)
rc=0

if "$PY" -c "import pytest" 2>/dev/null; then
    echo "== GPU tests (pytest): forward, half dots, drop-in"
    timeout 150 "$PY" -m pytest -q -x -p no:cacheprovider \
        tests/backends/test_triton_gpu.py tests/test_dropin.py \
        "tests/backends/test_triton_monarch.py::test_gpu_forward" \
        "tests/backends/test_triton_monarch.py::test_gpu_gradients" || rc=1
    # The backward, spectrum and channel-mixing kernels: only their GPU tests (names with gpu/cuda;
    # the rest of those files are interpreter tests, minutes on CPU).  A run of their own, with its
    # own limit, so a slow first compile of the backward cannot starve the tests above; every second
    # not used here goes to the benchmark below.
    echo "== GPU tests (pytest): backward, kernel spectrum, channel mixing"
    gpu_files=(tests/backends/test_triton_grad.py tests/backends/test_triton_spectrum.py)
    [ -f tests/backends/test_triton_mix.py ] && gpu_files+=(tests/backends/test_triton_mix.py)
    timeout 90 "$PY" -m pytest -q -x -p no:cacheprovider -k "gpu or cuda" "${gpu_files[@]}"
    t=$?
    [ "$t" -ne 0 ] && [ "$t" -ne 5 ] && rc=1  # 5: nothing selected (a file without GPU tests)
else
    echo "== pytest not importable: the GPU tests are skipped; bench/gpu_check.py checks half dots itself"
fi

echo "== bench/gpu_check.py $*"
left=$(( 470 - ($(date +%s) - start) ))
# rows stop starting 40 s before the hard limit; what was measured is already in the .jsonl
timeout "$left" "$PY" bench/gpu_check.py --budget-s "$(( left - 40 ))" "$@" || rc=1
echo "== done in $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
