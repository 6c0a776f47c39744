"""Mutation testing of the passes, the operator and the caches (issue 12 item 9): not a test.

CI never runs this, and mutmut is not a test dependency: install it yourself into the same
environment (``pip install 'mutmut>=3,<4'``).  For every target file the script

1. copies the tree (``--tree``, default this checkout: ``convfuse/``, ``tests/``, ``examples/``,
   ``pyproject.toml``) into its own scratch directory and writes a ``setup.cfg`` ``[mutmut]``
   section there (mutmut 3 reads its configuration from the current directory only, and
   builds ``mutants/`` next to it: nothing is written into the checkout);
2. runs ``mutmut run`` on that target alone with the target's test selection (``TESTS``:
   the tests of that module, chosen to be fast; ``--tests`` replaces it), one worker at a
   time (``--max-children``), each mutant forked from a fork server that has imported
   pytest and torch but run nothing (a process that has run the suite holds Dynamo's caches
   and the CPU kernel cache, and a compiled function's cache hit would hide a mutant);
3. rechecks each survivor against slower tests (``--recheck TESTS``; by default
   ``tests/test_differential.py`` for files under ``passes/``, 4-8 minutes per survivor here;
   ``--recheck`` alone: none): plain pytest in the mutant tree with ``MUTANT_UNDER_TEST``
   set, which is how mutmut's trampolines pick the mutant;
4. writes ``bench/results/mutation-<date>.md``: killed / survived / timeout per file and
   the survivors' diffs, with the line of the source each one changes.

``--max-mutants N`` runs an evenly spaced sample of N mutants per file; ``--budget MIN``
gives the run MIN minutes, shared equally by the files still to run, and stops mutmut when a
file's share is spent: what was not reached is counted as "not checked", and ``--resume
--workdir DIR`` goes on from there.  bench/README.md has the costs and the last results.

What mutmut 3 cannot mutate: module-level code (constants such as ``MAX_ENTRIES``) and
decorated functions other than static/class methods (so the bodies of the
``torch.library.custom_op`` functions ``fft_conv`` and ``fft_conv_grad`` in ``ops.py``, and
anything under ``functools.cache``, are never mutated); mutants there are not counted.

    nice -n 10 python bench/mutation.py --target convfuse/passes/sizes.py --max-mutants 40
    nice -n 10 python bench/mutation.py --tree /tmp/base --budget 40 \
        --target convfuse/passes/algebra.py --target convfuse/backends/cpu_cache.py
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each target's own tests: fast ones (a surviving mutant runs every test that reaches the
# mutated function, and mutation multiplies the suite's time by the number of mutants).
# Files a tree does not have are left out (older trees have fewer).
PASS_TESTS = ["tests/test_rewrite.py", "tests/test_families.py", "tests/test_bad_input.py",
              "tests/test_sound_writes.py", "tests/test_sound_modes.py", "tests/test_sound_roles.py",
              "tests/test_sound_crashes.py", "tests/test_layout.py"]
TESTS = {
    "convfuse/passes/policy.py": ["tests/test_policies.py", "tests/test_policies_scope.py"],
    "convfuse/passes/match_nd.py": PASS_TESTS + ["tests/test_ops_nd.py"],
    "convfuse/ops.py": ["tests/test_ops.py", "tests/test_bad_input.py", "tests/backends/test_cpu_grad.py",
                        "tests/test_nonfinite.py"],
    "convfuse/ops_nd.py": ["tests/test_ops_nd.py"],
    "convfuse/backends/cpu_cache.py": ["tests/backends/test_cpu.py", "tests/backends/test_cpu_grad.py",
                                       "tests/test_ops_nd.py", "tests/test_cache_soundness.py"],
    "convfuse/backends/cpu_nd.py": ["tests/test_ops_nd.py", "tests/backends/test_convnd_kept.py", "tests/test_gfnet_spectrum.py",
                                    "tests/backends/test_native.py"],
    "convfuse/backends/cpu_cost.py": ["tests/backends/test_cpu_plan.py", "tests/backends/test_cpu_sizes.py",
                                      "tests/backends/test_cpu_sparse.py"],
}
SLOW_RECHECK = {"convfuse/passes/": ["tests/test_differential.py"]}
COPIED = ["convfuse", "tests", "examples", "pyproject.toml"]

INSTALL_HINT = ("mutmut 3.x is needed and is not a test dependency of convfuse; install it into this "
                "environment with:\n    {python} -m pip install 'mutmut>=3,<4'")


def default_targets(tree: Path) -> list[str]:
    passes = sorted(str(p.relative_to(tree)) for p in (tree / "convfuse" / "passes").glob("*.py"))
    return passes + ["convfuse/ops.py", "convfuse/backends/cpu_cache.py"]


def tests_for(tree: Path, target: str) -> list[str]:
    if target in TESTS:
        tests = TESTS[target]
    elif target.startswith("convfuse/passes/"):
        tests = PASS_TESTS
    else:
        raise SystemExit(f"no test selection known for {target}: give one with --tests")
    return [t for t in tests if (tree / t).exists()]


def recheck_for(target: str) -> list[str]:
    return next((tests for prefix, tests in SLOW_RECHECK.items() if target.startswith(prefix)), [])


def check_mutmut() -> list[str]:
    """The command that runs mutmut in this interpreter's environment; exits with the install hint."""
    try:
        import importlib.metadata

        version = importlib.metadata.version("mutmut")
    except importlib.metadata.PackageNotFoundError:
        print(INSTALL_HINT.format(python=sys.executable), file=sys.stderr)
        raise SystemExit(2)
    if not version.startswith("3."):
        print(f"mutmut {version} found; " + INSTALL_HINT.format(python=sys.executable), file=sys.stderr)
        raise SystemExit(2)
    script = Path(sys.executable).parent / "mutmut"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from mutmut.__main__ import cli; cli()"]


def slug(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", target.removesuffix(".py")).strip("_")


def prepare(tree: Path, work: Path, target: str, tests: list[str]) -> None:
    if work.exists():
        shutil.rmtree(work)
    # mutants/ exists before mutmut starts: it is on PYTHONPATH, and an entry that is not a
    # directory when the interpreter first looks is cached as unusable for the whole process.
    (work / "mutants").mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "mutants")
    for name in COPIED:
        src = tree / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, work / name)
    lines = "\n    ".join(tests)
    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = convfuse\n"
        f"only_mutate = {target}\n"
        f"pytest_add_cli_args_test_selection =\n    {lines}\n"
        "also_copy =\n    examples\n"
        # torch is not fork-safe after it has run: fork every mutant from a server that has
        # only collected the tests.
        "process_isolation = forkserver\n"
        "use_git_change_detection = false\n"
    )


HELPER_NAMES = """
import json, sys
from pathlib import Path
from mutmut.mutation.file_mutation import mutate_file_contents
from mutmut.utils.format_utils import get_mutant_name
target = sys.argv[1]
mutated = mutate_file_contents(target, Path(target).read_text())
print(json.dumps([get_mutant_name(Path(target), name) for name in mutated.mutant_names]))
"""

HELPER_RESULTS = """
import json, sys
from pathlib import Path
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
target = sys.argv[1]
m = SourceFileMutationData(path=Path(target))
m.load()
out = {}
for name, code in m.exit_code_by_key.items():
    status = status_by_exit_code[code]
    if code == 2:  # pytest interrupted: the run was stopped while this mutant ran
        status = "not checked"
    entry = {"status": status, "exit_code": code, "seconds": m.durations_by_key.get(name)}
    if status not in ("killed", "not checked"):
        entry["diff"] = get_diff_for_mutant(name, path=target)
    out[name] = entry
print(json.dumps(out))
"""


def helper(work: Path, code: str, *args: str) -> object:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=work, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"mutmut helper failed in {work}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def sample(names: list[str], count: int | None) -> list[str]:
    if count is None or count >= len(names):
        return names
    return [names[(i * len(names)) // count] for i in range(count)]


def run_mutmut(cmd: list[str], work: Path, names: list[str], max_children: int, deadline: float | None,
               log: Path) -> int:
    env = dict(os.environ, PYTHONPATH=str(work / "mutants"))  # subprocesses of tests import the mutants too
    env.pop("MUTANT_UNDER_TEST", None)
    argv = [*cmd, "run", "--max-children", str(max_children), *names]
    with open(log, "a") as out:
        proc = subprocess.Popen(argv, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # mutmut saves each result as it comes, so stopping it loses only the mutant under
            # test (its fork server does not stop on SIGINT: terminate, then kill the group)
            print("  time budget reached: stopping mutmut", flush=True)
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
            return proc.wait()


def recheck(work: Path, name: str, tests: list[str], timeout: float) -> str:
    """'killed' when the slower tests fail with this mutant active, 'survived' when they pass."""
    env = dict(os.environ, PYTHONPATH=str(work / "mutants"), MUTANT_UNDER_TEST=name)
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "--rootdir=.", *tests]
    try:
        result = subprocess.run(argv, cwd=work / "mutants", env=env, capture_output=True, text=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "timeout"
    return {0: "survived", 1: "killed"}.get(result.returncode, f"error (pytest exit {result.returncode})")


def source_line(source: str, name: str, diff: str) -> int | None:
    """The line of the original file a mutant changes: its function's ``def`` line plus the
    offset of the diff's first removed line (the diff is of the function alone, from its
    ``def``), checked against the source text (else the nearest line with the removed text)."""
    func = name.rpartition(".")[2].rpartition("__mutmut_")[0]
    if func.startswith("xǁ"):
        cls, _, fname = func[2:].partition("ǁ")
    else:
        cls, fname = None, func[2:]
    span = None
    for node in ast.walk(ast.parse(source)):
        if cls and isinstance(node, ast.ClassDef) and node.name == cls:
            span = next(((f.lineno, f.end_lineno) for f in node.body
                         if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name == fname), span)
        elif not cls and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == fname \
                and node.col_offset == 0:
            span = (node.lineno, node.end_lineno)
    if span is None:
        return None
    offset, removed = None, None
    for line in diff.splitlines():
        if line.startswith("@@"):
            offset = int(re.match(r"@@ -(\d+)", line).group(1))
        elif offset is None or line.startswith(("---", "+++", "+")):
            continue
        elif line.startswith("-"):
            removed = line[1:].strip()
            break
        else:
            offset += 1
    if removed is None:
        return span[0]
    lines = source.splitlines()
    guess = span[0] + offset - 1
    candidates = [i + 1 for i in range(span[0] - 1, min(span[1], len(lines))) if lines[i].strip() == removed]
    if guess in candidates or not candidates:
        return guess
    return min(candidates, key=lambda i: abs(i - guess))


def summarize(results: dict[str, dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in results.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return counts


def write_report(path: Path, tree: Path, records: list[dict], args: argparse.Namespace, started: float) -> None:
    def git(*a):
        r = subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True, check=False)
        return r.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--", "convfuse", "tests") else ""
    import importlib.metadata

    lines = [
        f"# Mutation testing, {datetime.date.today().isoformat()}",
        "",
        f"`python bench/mutation.py {' '.join(args.argv)}` on commit {commit}{dirty} of `{tree}`, "
        f"mutmut {importlib.metadata.version('mutmut')}, {args.max_children} worker(s), "
        f"{(time.monotonic() - started) / 60:.1f} min for this invocation (minutes per file: over every "
        "resumed run).",
        "",
        "| file | mutants | run | killed | survived | timeout | other | not checked | killed by recheck | minutes "
        "| tests |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        c = rec["counts"]
        known = {"killed", "survived", "timeout", "not checked"}
        other = sum(v for k, v in c.items() if k not in known)
        run = rec["selected"] - c.get("not checked", 0)
        lines.append(
            f"| `{rec['target']}` | {rec['total']} | {run} of {rec['selected']} | {c.get('killed', 0)} | "
            f"{c.get('survived', 0)} | {c.get('timeout', 0)} | {other} | {c.get('not checked', 0)} | "
            f"{rec['rechecked_killed']} | {rec['minutes']:.1f} | {' '.join(rec['tests'])} |")
    lines += ["", "\"survived\" counts mutants that the test selection did not kill, including those the "
              "recheck (slower tests, in the last column) killed.", ""]
    for rec in records:
        survivors = {k: v for k, v in rec["results"].items() if v["status"] not in ("killed", "not checked")}
        if not survivors:
            continue
        lines += [f"## `{rec['target']}`: {len(survivors)} not killed", ""]
        for name, entry in sorted(survivors.items(), key=lambda kv: (kv[1].get("line") or 0, kv[0])):
            extra = f", recheck: {entry['recheck']}" if "recheck" in entry else ""
            lines += [f"### `{name}` (line {entry.get('line')}): {entry['status']}{extra}", "",
                      "```diff", entry.get("diff", "").strip(), "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=ROOT, help="the source tree to mutate (copied first)")
    ap.add_argument("--target", action="append", help="a file to mutate, relative to the tree (repeatable)")
    ap.add_argument("--tests", nargs="+", help="the test selection, replacing the target's own")
    ap.add_argument("--recheck", nargs="*", help="slower tests to run against each survivor "
                    "(default: the differential test for passes/; give no value to skip)")
    ap.add_argument("--max-mutants", type=int, help="an evenly spaced sample of this many mutants per file")
    ap.add_argument("--budget", type=float, help="minutes for the whole run, shared by the files still to "
                    "run; a file whose share is spent is stopped")
    ap.add_argument("--max-children", type=int, default=1, help="parallel mutant workers (default 1)")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a fresh one under /tmp)")
    ap.add_argument("--resume", action="store_true", help="reuse --workdir's trees and the results mutmut "
                    "saved there (a stopped run goes on where it stopped)")
    ap.add_argument("--out", type=Path, help="report path (default bench/results/mutation-<date>.md)")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv

    cmd = check_mutmut()
    tree = args.tree.resolve()
    targets = args.target or default_targets(tree)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="convfuse-mutation-"))
    out = args.out or ROOT / "bench" / "results" / f"mutation-{datetime.date.today().isoformat()}.md"
    started = time.monotonic()
    deadline = None if args.budget is None else started + args.budget * 60
    records = []
    for target in targets:
        if not (tree / target).is_file():
            raise SystemExit(f"{target} is not a file in {tree}")
        if deadline is not None and time.monotonic() > deadline - 60:
            print(f"{target}: skipped, the time budget is spent")
            continue
        tests = args.tests or tests_for(tree, target)
        work = workdir / slug(target)
        meta = work / "mutants" / (target + ".meta")
        resumed = args.resume and meta.exists()
        if not resumed:
            prepare(tree, work, target, tests)
        names = helper(work, HELPER_NAMES, target)
        chosen = sample(names, args.max_mutants)
        done = {k for k, v in json.loads(meta.read_text())["exit_code_by_key"].items() if v not in (None, 2)} \
            if resumed else set()
        todo = [name for name in chosen if name not in done]
        print(f"{target}: {len(names)} mutants, running {len(todo)} of {len(chosen)} with {' '.join(tests)} "
              f"(in {work})", flush=True)
        t0 = time.monotonic()
        # the time left, shared equally by this target and the ones after it
        share = None if deadline is None else t0 + (deadline - t0) / (len(targets) - targets.index(target))
        rc = run_mutmut(cmd, work, todo, args.max_children, share, work / "mutmut.log") if todo else 0
        if not (work / "mutants" / (target + ".meta")).exists():
            print(f"  mutmut exited {rc} before testing any mutant; see {work / 'mutmut.log'}")
            continue
        results = {k: v for k, v in helper(work, HELPER_RESULTS, target).items() if k in set(chosen)}
        source = (tree / target).read_text()
        for name, entry in results.items():
            if "diff" in entry:
                entry["line"] = source_line(source, name, entry["diff"])
        recheck_tests = recheck_for(target) if args.recheck is None else args.recheck
        rechecked_killed = 0
        if recheck_tests:
            for name, entry in results.items():
                if entry["status"] != "survived":
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    entry["recheck"] = "not run (budget)"
                    continue
                entry["recheck"] = recheck(work, name, recheck_tests, timeout=900)
                rechecked_killed += entry["recheck"] == "killed"
        clock = work / "minutes.json"  # mutmut's time on this file, over every resumed run
        minutes = (json.loads(clock.read_text()) if clock.exists() else 0.0) + (time.monotonic() - t0) / 60
        clock.write_text(json.dumps(minutes))
        counts = summarize(results)
        print(f"  mutmut exit {rc}, {(time.monotonic() - t0) / 60:.1f} min: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
              + (f"; recheck killed {rechecked_killed}" if recheck_tests else ""), flush=True)
        records.append(dict(target=target, total=len(names), selected=len(chosen), counts=counts, results=results,
                            tests=tests + [f"(recheck: {' '.join(recheck_tests)})"] * bool(recheck_tests),
                            rechecked_killed=rechecked_killed, minutes=minutes))
        write_report(out, tree, records, args, started)  # after every file: a stopped run keeps its numbers
    if records:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
