"""Train a small Hyena language model on associative recall, compiled with convfuse, on CPU.

    python examples/train_hyena.py                       # convfuse, writes train_hyena.png
    python examples/train_hyena.py --compare             # eager and convfuse from the same seed, side by side
    python examples/train_hyena.py --policy partial:fraction=0.25   # exact and a partial-kernel policy, both plotted
    python examples/train_hyena.py --policy freq:keep=0.25          # ... a frequency-sparse policy
    python examples/train_hyena.py --eager               # eager only (the baseline)

The task is generated on the fly and has structure a model can only learn by looking
back: each sequence draws a random map from ``keys`` key tokens to value tokens and is a
stream of ``key value`` pairs in which every value is the one its key maps to in this
sequence. Once a key has appeared, the token after its next occurrence is fully
determined, so the loss on value tokens can fall to zero; key tokens are random, their
loss floor is ln(keys). ``--task copy`` is the other option: a random first half that the
second half repeats.

The model is ``HyenaLM`` from ``examples/hyena.py``; its long convolutions are FFT
convolutions that convfuse rewrites into ``torch.ops.convfuse.fft_conv``, forward and
backward. Data, initial weights and optimizer are identical across modes for a seed, so
``--compare`` shows that the compiled model trains exactly like the eager one (to float
rounding, which grows slowly over many steps, as it does between any two correct kernels).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from convfuse.report import collecting  # noqa: E402
from examples.hyena import HyenaLM  # noqa: E402


# ---- data -------------------------------------------------------------------------------------


def recall_batch(gen: torch.Generator, batch: int, seqlen: int, keys: int = 8, values: int = 8):
    """(inputs, targets, value_mask): next-token prediction on ``key value`` pairs.

    Token ids: keys are 0..keys-1, values keys..keys+values-1. value_mask marks the target
    positions that are a value whose key already appeared earlier in the sequence: the
    positions where recall is possible and its accuracy is measured.
    """
    pairs = seqlen // 2 + 1
    mapping = torch.randint(values, (batch, keys), generator=gen) + keys
    k = torch.randint(keys, (batch, pairs), generator=gen)
    v = torch.gather(mapping, 1, k)
    seq = torch.stack([k, v], dim=-1).reshape(batch, 2 * pairs)[:, : seqlen + 1]
    first = F.one_hot(k, keys).cumsum(1)  # occurrences of each key so far, inclusive
    seen = torch.gather(first, 2, k[..., None])[..., 0] > 1  # this key occurred in an earlier pair
    value_mask = torch.stack([torch.zeros_like(seen), seen], dim=-1).reshape(batch, 2 * pairs)[:, 1: seqlen + 1]
    return seq[:, :-1], seq[:, 1:], value_mask


def copy_batch(gen: torch.Generator, batch: int, seqlen: int, vocab: int = 16):
    """(inputs, targets, mask): the second half repeats the first; the mask marks the repeats."""
    half = (seqlen + 1) // 2
    first = torch.randint(vocab, (batch, half), generator=gen)
    seq = torch.cat([first, first], dim=1)[:, : seqlen + 1]
    mask = torch.zeros(batch, seqlen, dtype=torch.bool)
    mask[:, half - 1:] = True
    return seq[:, :-1], seq[:, 1:], mask


TASKS = {"recall": (recall_batch, 16), "copy": (copy_batch, 16)}  # name -> (generator, vocabulary size)


# ---- training ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    losses: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)  # on masked (recallable) positions
    seconds: float = 0.0
    compile_seconds: float = 0.0
    report: str = ""  # convfuse's rewrite report of the first step (empty in eager)


def build_model(args, seed: int) -> HyenaLM:
    torch.manual_seed(seed)
    vocab = TASKS[args.task][1]
    return HyenaLM(vocab=vocab, d_model=args.d_model, n_layers=args.layers, max_len=args.seqlen)


def compile_model(model, mode: str, policy=None, inner: str = "inductor"):
    """``mode``: "eager" (the model as is) or "convfuse" (torch.compile with the backend).

    ``inner`` compiles the rest of the graph (convfuse's option; "aot_eager" skips Inductor's compile time).
    """
    if mode == "eager":
        return model
    options = {"inner": inner} if policy is None else {"policy": policy, "inner": inner}
    return torch.compile(model, backend="convfuse", options=options)


def step_fn(model, opt):
    def step(inputs, targets, mask):
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            hit = (logits.argmax(-1) == targets)[mask]
            acc = hit.float().mean().item() if hit.numel() else float("nan")
        return loss.item(), acc
    return step


class Progress:
    """A textual progress bar (tqdm when it is installed)."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=label, file=sys.stderr)
            except ImportError:
                pass

    def update(self, i: int, loss: float, acc: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}")
            return
        done = i + 1
        if not self.tty and done % max(1, self.total // 10) and done != self.total:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.total - done)
        width = 24
        filled = int(width * done / self.total)
        line = (f"{self.label:>9} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"loss {loss:.4f} acc {acc:.2f} {elapsed:.0f}s<{eta:.0f}s")
        print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.tty:
            print(file=sys.stderr)


def train(args, mode: str, policy=None, label: str | None = None, progress: bool = True) -> RunResult:
    """Train one model for ``args.steps`` steps; the same seed gives the same data and weights in every mode."""
    label = label or mode
    model = build_model(args, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    step = step_fn(compile_model(model, mode, policy, args.inner), opt)
    make, _ = TASKS[args.task]
    gen = torch.Generator().manual_seed(args.seed + 1)
    result = RunResult(label)
    bar = Progress(args.steps, label, progress)
    start = time.perf_counter()
    for i in range(args.steps):
        batch = make(gen, args.batch, args.seqlen)
        t0 = time.perf_counter()
        if i == 0:
            with collecting() as report:
                loss, acc = step(*batch)
            result.compile_seconds = time.perf_counter() - t0  # the first step compiles (convfuse)
            result.report = str(report) if report.sites else ""
        else:
            loss, acc = step(*batch)
        result.losses.append(loss)
        result.accuracy.append(acc)
        bar.update(i, loss, acc)
    bar.close()
    result.seconds = time.perf_counter() - start
    return result


def tail_mean(values: list[float], n: int = 10) -> float:
    tail = [v for v in values[-n:] if not math.isnan(v)]
    return sum(tail) / max(1, len(tail))


def summary(r: RunResult) -> str:
    per_step = (r.seconds - r.compile_seconds) / max(1, len(r.losses) - 1)
    return (f"{r.label}: loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f} (mean of last 10: {tail_mean(r.losses):.4f}), "
            f"recall accuracy (last 10) {tail_mean(r.accuracy):.3f}, {r.seconds:.0f} s "
            f"(first step {r.compile_seconds:.1f} s, then {per_step * 1e3:.0f} ms/step)")


def side_by_side(a: RunResult, b: RunResult, first: int) -> str:
    lines = [f"{'step':>5} {a.label:>12} {b.label:>12} {'|diff|':>10}"]
    for i in range(min(first, len(a.losses), len(b.losses))):
        lines.append(f"{i:>5} {a.losses[i]:>12.6f} {b.losses[i]:>12.6f} {abs(a.losses[i] - b.losses[i]):>10.2e}")
    return "\n".join(lines)


def plot(results: list[RunResult], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[examples]'): no plot written", file=sys.stderr)
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    styles = [dict(linestyle="-", linewidth=2.2, alpha=0.6), dict(linestyle="--", linewidth=1.2),
              dict(linestyle="-", linewidth=1.0)]
    for r, style in zip(results, styles * len(results)):  # identical curves stay visible on top of each other
        ax_loss.plot(range(1, len(r.losses) + 1), r.losses, label=r.label, **style)
        ax_acc.plot(range(1, len(r.accuracy) + 1), r.accuracy, label=r.label, **style)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy (all tokens)")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy on recallable tokens")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def resolve_policy(text: str | None):
    """A policy object for ``--policy``, or None with a message when this convfuse does not have it."""
    if text is None:
        return None
    from convfuse.policies import parse_policy

    try:
        return parse_policy(text)
    except (ValueError, TypeError) as exc:
        print(f"--policy {text!r} is not available in this convfuse ({exc}); training with the exact policy only",
              file=sys.stderr)
        return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), default="recall")
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--eager", action="store_true", help="train the eager model only")
    mode.add_argument("--compare", action="store_true", help="train eager and convfuse from the same seed")
    p.add_argument("--policy", help="also train with this convfuse policy, as convfuse.policies.parse_policy reads it "
                   "('partial:fraction=0.25', 'partial:length=256', 'freq:keep=0.25', 'freq:bins=128'), and plot it")
    p.add_argument("--inner", default="inductor", choices=["inductor", "aot_eager", "eager"],
                   help="what compiles the rest of each graph around convfuse's operator")
    p.add_argument("--first", type=int, default=10, help="--compare prints this many steps side by side")
    p.add_argument("--plot", type=Path, default=Path("train_hyena.png"))
    p.add_argument("--json", type=Path, help="write every run's per-step losses here")
    p.add_argument("--report", action="store_true", help="print convfuse's rewrite report of each compiled run")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    print(f"task={args.task} L={args.seqlen} B={args.batch} d_model={args.d_model} layers={args.layers} "
          f"steps={args.steps} lr={args.lr} seed={args.seed} threads={torch.get_num_threads()}")
    progress = not args.no_progress
    results: list[RunResult] = []
    if args.eager or args.compare:
        results.append(train(args, "eager", progress=progress))
    if not args.eager:
        results.append(train(args, "convfuse", progress=progress))
    policy = resolve_policy(args.policy)
    if policy is not None and str(policy) != "exact":
        results.append(train(args, "convfuse", policy, label=f"convfuse[{policy}]", progress=progress))

    for r in results:
        if r.report and (args.report or r.label.startswith("convfuse[")):
            print(f"{r.label} rewrite report:\n{r.report}")
        print(summary(r))
    status = 0
    if args.compare:
        eager, fused = results[0], results[1]
        print(side_by_side(eager, fused, args.first))
        first = min(args.first, len(eager.losses))
        worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(eager.losses[:first], fused.losses[:first]))
        final = abs(tail_mean(eager.losses) - tail_mean(fused.losses))
        print(f"first {first} steps: max relative loss difference {worst:.2e}; "
              f"final loss (mean of last 10) eager {tail_mean(eager.losses):.4f} convfuse {tail_mean(fused.losses):.4f} "
              f"difference {final:.2e}")
        status = 0 if worst < 1e-4 else 1
    if len(results) > 1 and results[-1].label.startswith("convfuse["):
        exact, approx = results[-2], results[-1]
        print(f"final loss (mean of last 10): {exact.label} {tail_mean(exact.losses):.4f}, "
              f"{approx.label} {tail_mean(approx.losses):.4f}")
    title = f"Hyena LM, {args.task}, L={args.seqlen}, B={args.batch}, d={args.d_model}, {args.layers} layers"
    if plot(results, args.plot, title):
        print(f"loss curve written to {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({r.label: {"loss": r.losses, "accuracy": r.accuracy} for r in results}))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
