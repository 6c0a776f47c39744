"""bench/gpu_check.py (the GPU device check): its CPU dry run end to end, its .jsonl rows, its refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]
BENCH_KEYS = {"n", "L", "B", "H", "dtype", "mode", "eager_ms", "convfuse_ms", "eager_peak_mb", "convfuse_peak_mb",
              "speedup_vs_eager", "plan", "triton_launches", "fallbacks", "device", "torch", "triton", "run"}


def _run(*args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dry_run_appends_every_row(tmp_path):
    path = tmp_path / "gpu-dry-run-cpu.jsonl"
    path.write_text('{"phase": "earlier run"}\n')  # appended to, never rewritten
    r = _run("--dry-run", "--sizes", "256", "--check-sizes", "256", "--out", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"phase": "earlier run"}
    phases = [row["phase"] for row in rows[1:]]
    assert phases == ["check", "ptx", "check", "ptx"] + ["bench"] * 4 + ["done"]
    checks = [row for row in rows if row["phase"] == "check"]
    assert [c["dot_dtype"] for c in checks] == ["float16", "float32"]  # bf16: fp32 dots in the interpreter
    assert all(c["ok"] and c["grad_rel_err"] < 6e-2 for c in checks)
    bench = [row for row in rows if row["phase"] == "bench"]
    assert [(b["dtype"], b["mode"]) for b in bench] == [("fp16", "fwd"), ("fp16", "fwd+bwd"), ("bf16", "fwd"),
                                                         ("bf16", "fwd+bwd")]
    for b in bench:
        assert BENCH_KEYS <= set(b), sorted(BENCH_KEYS - set(b))
        assert b["ok"] and b["fallbacks"] == 0 and b["triton_launches"] >= 1 and b["B"] == 2
    assert bench[0]["flashfftconv_h100_speedup"] == 5.64 and bench[1]["flashfftconv_h100_speedup"] is None
    assert rows[-1]["failures"] == 0


def test_time_budget_skips_rows_and_says_so(tmp_path):
    r = _run("--dry-run", "--skip-check", "--sizes", "256", "--budget-s", "0", "--out", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu-dry-run-cpu.jsonl").read_text().splitlines()]
    assert [row.get("skipped") for row in rows[:-1]] == ["time budget spent"] * 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without CUDA")
def test_refuses_without_cuda(tmp_path):
    r = _run("--out", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr and "--dry-run" in r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_shell_wrapper_dry_run(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--sizes", "256",
                        "--check-sizes", "256", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (tmp_path / "gpu-dry-run-cpu.jsonl").exists()
