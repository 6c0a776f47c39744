"""A convfuse-compiled Hyena LM under torch.distributed (gloo, CPU): DDP, or FSDP2 with --fsdp.

    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py             # DDP
    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py --fsdp      # FSDP2 (fully_shard)

Every rank builds the same model from the same seed, compiles it with convfuse, and trains
on its shard of each global batch. Rank 0 then trains the same model in one process on the
whole global batch (eager, no distribution) and checks that the first step's gradients and
every step's loss agree: data parallelism averages the shards' gradients, which is the
gradient of the mean loss over the global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from convfuse.report import collecting  # noqa: E402
from examples.hyena import HyenaLM  # noqa: E402
from examples.train_hyena import recall_batch  # noqa: E402


@dataclass
class Config:
    seqlen: int = 256
    global_batch: int = 4
    d_model: int = 32
    layers: int = 2
    steps: int = 3
    lr: float = 1e-2
    seed: int = 0
    fsdp: bool = False
    inner: str = "inductor"  # what compiles the rest of the graph (tests use "aot_eager": faster compiles)
    compile: bool = True


def build(cfg: Config) -> HyenaLM:
    torch.manual_seed(cfg.seed)
    return HyenaLM(vocab=16, d_model=cfg.d_model, n_layers=cfg.layers, max_len=cfg.seqlen)


def batches(cfg: Config):
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    return [recall_batch(gen, cfg.global_batch, cfg.seqlen)[:2] for _ in range(cfg.steps)]


def loss_of(model, inputs, targets) -> torch.Tensor:
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def full_grad(p: torch.Tensor) -> torch.Tensor:
    g = p.grad
    return g.full_tensor() if hasattr(g, "full_tensor") else g  # FSDP2 grads are sharded DTensors


def single_process(cfg: Config) -> dict:
    """The reference: the whole global batch in one eager process."""
    model = build(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    losses, grads = [], None
    for i, (x, y) in enumerate(batches(cfg)):
        loss = loss_of(model, x, y)
        opt.zero_grad()
        loss.backward()
        if i == 0:
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "grads": grads}


def distributed(cfg: Config, rank: int, world: int) -> dict:
    """This rank's part of data-parallel training; returns the global losses and first-step gradients."""
    model = build(cfg)
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        wrapped = model
    else:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(model)
    runner = torch.compile(wrapped, backend="convfuse", options={"inner": cfg.inner}) if cfg.compile else wrapped
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    per_rank = cfg.global_batch // world
    losses, grads, seconds = [], None, []
    for i, (x, y) in enumerate(batches(cfg)):
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        t0 = time.perf_counter()
        with collecting() as report:
            loss = loss_of(runner, x[rows], y[rows])
            opt.zero_grad()
            loss.backward()
        if i == 0:
            sites = {"rewritten": len(report.rewritten), "sites": len(report.sites), "graphs": report.graphs}
        if i == 0:
            grads = {n: full_grad(p).detach().clone() for n, p in model.named_parameters()}
        opt.step()
        seconds.append(time.perf_counter() - t0)
        mean = loss.detach().clone()
        dist.all_reduce(mean)  # gloo has no AVG: sum, then divide
        losses.append(mean.item() / world)
    return {"losses": losses, "grads": grads, "seconds": seconds, "sites": sites}


def compare(got: dict, ref: dict) -> dict:
    """Largest relative gradient error (over parameters) and largest loss difference."""
    grad_err = 0.0
    for name, g in ref["grads"].items():
        scale = g.abs().max().clamp_min(1e-12)
        grad_err = max(grad_err, ((got["grads"][name] - g).abs().max() / scale).item())
    loss_err = max(abs(a - b) for a, b in zip(got["losses"], ref["losses"]))
    return {"max_rel_grad_err": grad_err, "max_loss_diff": loss_err}


def worker(rank: int, world: int, init_method: str, cfg: Config, out: str | None = None) -> dict | None:
    """One process: join the group, train, and on rank 0 compare against the single-process run."""
    torch.set_num_threads(1)
    # FSDP2 warns that HyenaLM returns a view (its head's output); nothing here modifies it in place.
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        got = distributed(cfg, rank, world)
        dist.barrier()
        result = None
        if rank == 0:
            ref = single_process(cfg)
            result = {"config": asdict(cfg), "world": world, "losses": got["losses"], "reference_losses": ref["losses"],
                      "step_seconds": got["seconds"], "sites": got["sites"], **compare(got, ref)}
            if out:
                Path(out).write_text(json.dumps(result))
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cfg = Config()
    for name, value in asdict(cfg).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", default=value)
        else:
            p.add_argument(flag, type=type(value), default=value)
    p.add_argument("--no-compile", action="store_true", help="run the distributed model eagerly")
    p.add_argument("--json", help="rank 0 writes its result here")
    args = p.parse_args(argv)
    cfg = Config(**{k: getattr(args, k) for k in asdict(cfg)})
    if args.no_compile:
        cfg.compile = False
    if "RANK" not in os.environ:
        print("launch with: torchrun --standalone --nproc_per_node 2 examples/ddp_train.py", file=sys.stderr)
        return 2
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cfg.global_batch % world:
        raise SystemExit(f"--global-batch {cfg.global_batch} is not divisible by {world} processes")
    result = worker(rank, world, "env://", cfg, args.json)
    if rank == 0:
        kind = "FSDP2 (fully_shard)" if cfg.fsdp else "DDP"
        print(f"{kind}, gloo, {world} processes, convfuse={'on' if cfg.compile else 'off'} inner={cfg.inner}; "
              f"global batch {cfg.global_batch}, L={cfg.seqlen}")
        sites = result["sites"]
        print(f"convfuse rewrote {sites['rewritten']} of {sites['sites']} FFT sites in {sites['graphs']} graph(s) "
              f"on rank 0; step times (s): {', '.join(f'{t:.2f}' for t in result['step_seconds'])}")
        print(f"{'step':>5} {'distributed':>12} {'1 process':>12}")
        for i, (a, b) in enumerate(zip(result["losses"], result["reference_losses"])):
            print(f"{i:>5} {a:>12.6f} {b:>12.6f}")
        print(f"first-step gradients: max relative error {result['max_rel_grad_err']:.2e}; "
              f"losses: max difference {result['max_loss_diff']:.2e}")
        ok = result["max_rel_grad_err"] < 1e-4 and result["max_loss_diff"] < 1e-4
        print("OK" if ok else "MISMATCH")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
