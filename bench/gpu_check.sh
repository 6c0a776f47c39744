#!/usr/bin/env bash
# The GPU device check, from the source tree with no pip: under 8 minutes on one H100/H200.
#
#   bench/gpu_check.sh              GPU tests (pytest, when importable; 150 s at most), then
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
    echo "== GPU tests (pytest)"
    timeout 150 "$PY" -m pytest -q -x -p no:cacheprovider \
        tests/backends/test_triton_gpu.py tests/test_dropin.py \
        "tests/backends/test_triton_monarch.py::test_gpu_forward" \
        "tests/backends/test_triton_monarch.py::test_gpu_gradients" || rc=1
else
    echo "== pytest not importable: the GPU tests are skipped; bench/gpu_check.py checks half dots itself"
fi

echo "== bench/gpu_check.py $*"
left=$(( 470 - ($(date +%s) - start) ))
# rows stop starting 40 s before the hard limit; what was measured is already in the .jsonl
timeout "$left" "$PY" bench/gpu_check.py --budget-s "$(( left - 40 ))" "$@" || rc=1
echo "== done in $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
