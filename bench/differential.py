"""Differential testing at scale: N random FFT-convolution programs (and near misses) against eager.

    python bench/differential.py                 # 10,000 programs, the families the matcher supports
    python bench/differential.py -n 500 --seed 7 # fewer, another stream
    python bench/differential.py --all           # also the families it does not support yet (programs.PENDING)
    python bench/differential.py --family rfft2 -n 300  # every convolution of one family (programs.FAMILIES)
    python bench/differential.py --seconds 1800  # stop after a time budget (prints how many ran)
    python bench/differential.py --replay 1234   # run and print program number 1234 of the stream
    python bench/differential.py --mixing -n 400 # channel-mixing programs (tests/programs_mixing.py)

Program i is ``tests/programs.random_program(seed + i)`` with inputs from the same seed, so every
mismatch is reproducible from its number. Each program is compiled with convfuse (the rest of the
graph eager), compared with eager (outputs and gradients), and checked against the oracle
(rewritten exactly when it is a convolution; skipped sites have a reason; the report's source line
is the transform's line). At the end: the count that ran, the mismatches grouped by kind with the
features they share and a shrunk (minimal) program each; every mismatching program is written to
``--out`` (default bench/results/differential_mismatches.txt). Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import torch  # noqa: E402

import programs as P  # noqa: E402

torch._logging.set_logs(dynamo=50)  # quiet recompilation / graph-break chatter


def run_one(p: P.Program, seed: int) -> list[P.Mismatch]:
    try:
        return P.check(p, seed)
    except Exception as exc:  # eager itself failed: a generator bug, reported as such
        return [P.Mismatch("generator", f"{type(exc).__name__}: {str(exc)[:300]}", p, P.render(p), p.features())]


def group_key(m: P.Mismatch) -> str:
    detail = re.sub(r"\bs\d+", "s#", m.detail)  # symbolic sizes
    detail = re.sub(r"`[^`]*`", "`.`", detail)  # node names
    detail = re.sub(r"[-+]?\d[\d.e+-]*", "#", detail)
    return f"{m.kind}: {detail[:220]}"  # the skip reason is part of the group


def shrink(m: P.Mismatch, seed: int, budget: int = 25) -> tuple[P.Mismatch, int]:
    """Turn features off one at a time while a mismatch of the same group persists."""
    key, best, tries = group_key(m), m, 0
    progress = True
    while progress and tries < budget:
        progress = False
        for q in best.program.simpler():
            tries += 1
            found = [x for x in run_one(q, seed) if group_key(x) == key]
            if found:
                best, progress = found[0], True
                break
            if tries >= budget:
                break
    return best, seed


def run_mixing(n: int, seed0: int, seconds: float | None) -> int:
    """Program i is programs_mixing.draw_program(seed0 + i), conv for even i, spectral layers for odd."""
    import random

    import programs_mixing as PM
    from programs_draw import Chooser

    t0, ran, bad, kinds = time.time(), 0, [], collections.Counter()
    for i in range(n):
        if seconds is not None and time.time() - t0 > seconds:
            break
        seed = seed0 + i
        torch.manual_seed(seed)
        program = PM.draw_program(Chooser(rng=random.Random(seed)), "conv" if i % 2 == 0 else "modes")
        kind, module, x, miss = program
        kinds[f"{kind}{' near miss ' + miss if miss else ''}"] += 1
        try:
            problems = PM.check(program)
        except Exception as exc:  # noqa: BLE001  eager itself failed: a generator bug, reported as such
            problems = [f"generator: {type(exc).__name__}: {str(exc)[:200]}"]
        ran += 1
        if problems:
            bad.append((seed, problems))
            print(f"#{i} (seed {seed}) mismatch: {'; '.join(problems)}", flush=True)
        if (i + 1) % 100 == 0:
            print(f"... {i + 1} programs, {len(bad)} with mismatches, {time.time() - t0:.0f}s", flush=True)
    print(f"\nran {ran} channel-mixing programs in {time.time() - t0:.0f}s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + f"; {len(bad)} with mismatches")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10_000, help="programs to run (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="first seed of the stream (default 0)")
    ap.add_argument("--all", action="store_true", help="also draw the families the matcher does not support yet")
    ap.add_argument("--family", default=None, choices=("",) + P.FAMILIES + P.PENDING, metavar="NAME",
                    help="every program is a convolution of this family (one of programs.FAMILIES or PENDING, "
                         "'' for the plain spelling); implies --no-near-misses")
    ap.add_argument("--no-near-misses", action="store_true", help="convolutions only")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "differential_mismatches.txt"))
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--replay", type=int, default=None, help="run program number I of the stream, verbosely")
    ap.add_argument("--mixing", action="store_true",
                    help="channel-mixing programs instead (FFT conv1d/conv2d and FNO layers, with near misses)")
    args = ap.parse_args(argv)
    if args.mixing:
        return run_mixing(args.n, args.seed, args.seconds)

    def program(i):
        return P.random_program(args.seed + i, near_misses=not args.no_near_misses and args.family is None,
                                pending=args.all or args.family in P.PENDING, family=args.family)

    if args.replay is not None:
        p = program(args.replay)
        print(P.render(p))
        print(repr(p))
        for m in run_one(p, args.seed + args.replay):
            print(m.describe())
        return 0

    t0 = time.time()
    ran, convs, misses, pending, expect_skip = 0, 0, 0, 0, 0
    bad: list[tuple[int, P.Mismatch]] = []
    feature_total: collections.Counter = collections.Counter()
    for i in range(args.n):
        if args.seconds is not None and time.time() - t0 > args.seconds:
            break
        seed = args.seed + i
        p = program(i)
        ran += 1
        convs += p.is_convolution
        misses += not p.is_convolution
        pending += bool(p.pending)
        expect_skip += bool(p.expected_skip)
        feature_total.update(p.features())
        found = run_one(p, seed)
        bad += [(seed, m) for m in found]
        if found:
            print(f"#{i} mismatch: " + "; ".join(m.describe()[:200] for m in found), flush=True)
        if (i + 1) % 100 == 0:
            print(f"... {i + 1} programs, {len({s for s, _ in bad})} with mismatches, {time.time() - t0:.0f}s",
                  flush=True)
    elapsed = time.time() - t0

    groups: dict[str, list[tuple[int, P.Mismatch]]] = collections.defaultdict(list)
    for seed, m in bad:
        groups[group_key(m)].append((seed, m))
    programs_bad = len({s for s, _ in bad})
    print(f"\nran {ran} programs in {elapsed:.0f}s ({convs} convolutions incl. {pending} pending and "
          f"{expect_skip} expected skips, {misses} near misses); {programs_bad} programs with mismatches, "
          f"{len(bad)} mismatches in {len(groups)} groups")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        stream = (f"--seed {args.seed}{' --all' if args.all else ''}{' --no-near-misses' if args.no_near_misses else ''}"
                  f"{f' --family {args.family!r}' if args.family is not None else ''}")
        f.write(f"# bench/differential.py -n {args.n} {stream}: ran {ran}, {programs_bad} programs with mismatches\n")
        f.write(f"# reproduce one: python bench/differential.py {stream} --replay <seed - first seed>\n\n")
        for key, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            feats = collections.Counter(f for _, m in items for f in set(m.features))
            common = sorted(f for f, c in feats.items() if c == len(items))
            # features over-represented in this group against all programs run
            enriched = sorted(((c / len(items)) / (feature_total[f] / ran), f) for f, c in feats.items()
                              if feature_total[f] and c / len(items) >= 0.5)[::-1][:8]
            print(f"\n== {len(items)} x {key}")
            print(f"   features in all of them: {' '.join(common) or '-'}")
            print(f"   over-represented: {' '.join(f'{f}(x{r:.1f})' for r, f in enriched if r > 1.2) or '-'}")
            f.write(f"{'=' * 100}\n# GROUP {len(items)} x {key}\n# common features: {' '.join(common)}\n\n")
            seed0, m0 = items[0]
            if not args.no_shrink:
                small, _ = shrink(m0, seed0)
                print("   minimal program (shrunk from seed %d):" % seed0)
                print("\n".join("      " + line for line in P.reproducer(small, seed0).splitlines()))
                f.write(f"# minimal program (shrunk from seed {seed0}):\n{P.reproducer(small, seed0)}\n")
            for seed, m in items:
                f.write(f"# ---- seed {seed}\n{P.reproducer(m, seed)}\n")
    print(f"\nran {ran} programs; mismatches: {len(bad)} in {programs_bad} programs; written to {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
