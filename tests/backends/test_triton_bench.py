"""bench/gpu.py: its CPU smoke path (--dry-run under the Triton interpreter) and its no-GPU refusal."""

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
ROW_KEYS = {"n", "B", "H", "dtype", "gated", "eager_ms", "inductor_ms", "convfuse_ms", "speedup", "peak_mem_ratio"}


def _run(*args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_dry_run_writes_json_table_and_plot(tmp_path):
    r = _run("--dry-run", "--sizes", "256", "512", "--reps", "1", "--policy-L", "512", "--out", str(tmp_path),
             tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-dry-run-cpu.json").read_text())
    assert {"device", "torch", "triton", "rows"} <= set(result)
    assert len(result["rows"]) == 4  # 2 sizes x (fp16 gated, fp32 ungated)
    for row in result["rows"]:
        assert ROW_KEYS <= set(row), row
        assert row["triton_launches"] >= 1 and row["fallbacks"] == 0, row  # the op ran the Triton kernel
        assert row["max_rel_err"] < 1e-2 and row["speedup"] > 0
    # the policy section: dense, keep=1/4, keep=1/8, K=32 taps, each on Triton and torch.fft
    policy = result["policy_rows"]
    assert [(r["policy"], r["impl"]) for r in policy[::2]] == [
        ("dense", "triton"), ("freq keep=0.25", "triton"), ("freq keep=0.125", "triton"), ("partial K=32", "triton")]
    for row in policy:
        assert row["max_rel_err"] < 1e-5 and row["vs_dense_triton"] > 0 and row["vs_dense_cufft"] > 0, row
    assert all(r["fallbacks"] == 0 and r["triton_launches"] == 1 for r in policy[::2])
    assert "16 of 32 columns" in policy[2]["plan"] and "overlap-save" in policy[6]["plan"]
    table = (tmp_path / "gpu-dry-run-cpu.md").read_text()
    assert "| 512 | 1024 | 1 | 2 | fp32 | partial K=32 | triton |" in table
    main = table.split("Policies")[0]
    assert "| n | B | H | dtype | gated |" in main and main.count("\n| 512 |") == 2
    assert (tmp_path / "gpu-dry-run-cpu.png").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without CUDA")
def test_refuses_without_cuda(tmp_path):
    r = _run("--out", str(tmp_path), tmp_path=tmp_path)
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr and "--dry-run" in r.stderr
    assert not list(tmp_path.iterdir())


def test_compile_report_needs_no_gpu(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    r = _run("--compile-report", "--sizes", "256", "--out", str(tmp_path), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    table = (tmp_path / "triton-sm90-resources.md").read_text()
    assert "| 256 | fp16 | fused |" in table and "| 256 | fp32 | fused |" in table


def test_backward_report_replaces_only_its_own_table(tmp_path):
    # the committed file holds hand-written readings between the tables: a regenerated table must
    # leave them, and the other reports' tables, as they were
    pytest.importorskip("triton.backends.nvidia")
    path = tmp_path / "triton-sm90-resources.md"
    text = ("Triton kernels compiled for sm90 (4 warps), triton x: caption.\n\n| n | dot dtype | kernel |\n|---|\n"
            "| 256 | fp16 | fused |\n\n## The backward\n\nReading before.\n\n| n | kernel | sm90 regs | old |\n"
            "|---|\n| 256 | stale row |\n\nReading after.\n")
    path.write_text(text)
    r = _run("--compile-report", "--kernels", "backward", "--sizes", "256", "--out", str(tmp_path), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    new = path.read_text()
    assert "stale row" not in new and "Reading before.\n\n| n | kernel | sm90 regs | sm90 stack B" in new
    assert "\n\nReading after.\n" in new and new.startswith(text.split("## The backward")[0])
    for name in ("grad2 16x16 cyclic (4 warps)", "grad_dk 16x16", "spectrum2 16x16"):
        row = next(line for line in new.splitlines() if f"| 256 | {name} |" in line)
        assert "mma.sync m16n8k8 tf32" in row  # fp32 operands on tensor cores (tf32x3)
        assert len(row.split("|")) == 2 + 2 + 6 + 1  # n, kernel, 3 per target, matrix instructions
