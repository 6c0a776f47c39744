"""A convfuse-compiled Hyena LM under torch.distributed (gloo, 2 CPU processes): same gradients as one process.

The processes are started with torch.multiprocessing (what `torchrun` does for
examples/ddp_train.py) and meet through a file store. Rank 0 compares the data-parallel
first-step gradients and per-step losses with the same model trained eagerly in one process
on the whole global batch. The rest of each graph is compiled with aot_eager: the rewrite and
the fused operator's forward and backward are what is tested, and Inductor compiles cost tens
of seconds per process on 2 cores (`torchrun ... examples/ddp_train.py` runs them with Inductor).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.ddp_train import Config, worker  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def run_two_processes(cfg: Config, tmp_path: Path, timeout: float = 240.0) -> dict:
    out = tmp_path / "result.json"
    init = f"file://{tmp_path / 'store'}"
    ctx = mp.start_processes(worker, args=(2, init, cfg, str(out)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish in {timeout:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return json.loads(out.read_text())


def check(result: dict, cfg: Config) -> None:
    assert result["world"] == 2
    assert len(result["losses"]) == cfg.steps
    assert result["max_rel_grad_err"] < 1e-4, result
    assert result["max_loss_diff"] < 1e-4, result
    # the FFT convolutions really ran as the fused operator
    assert result["sites"]["sites"] >= 1 and result["sites"]["rewritten"] == result["sites"]["sites"], result["sites"]


def test_ddp_gradients_and_losses_equal_one_process(tmp_path):
    cfg = Config(seqlen=128, global_batch=4, d_model=16, layers=2, steps=2, inner="aot_eager")
    result = run_two_processes(cfg, tmp_path)
    check(result, cfg)
    assert result["sites"]["rewritten"] == cfg.layers  # one graph (one DDP bucket) holds both layers' convolutions


# Not in CI: it passes alone (about 20 s) but one CI rehearsal under a load average of 8 saw a
# worker abort in gloo's teardown ("terminate called without an active exception") after the
# result was written.  Run it with `pytest -m slow tests/test_distributed.py`.
@pytest.mark.slow
def test_fsdp2_fully_shard_gradients_equal_one_process(tmp_path):
    cfg = Config(seqlen=128, global_batch=4, d_model=16, layers=2, steps=2, inner="aot_eager", fsdp=True)
    result = run_two_processes(cfg, tmp_path)
    check(result, cfg)
