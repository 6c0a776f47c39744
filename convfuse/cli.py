"""The ``convfuse`` command line: ``convfuse report TARGET`` says what convfuse does to a model.

    convfuse report examples/hyena.py:example
    convfuse report mypkg.models:build --check --bench --json report.json

TARGET names a callable that takes no arguments and returns ``(model, example_inputs)``:
the model (an ``nn.Module`` or any function) and a tuple of the inputs to call it with.

Exit codes: 0 the report was produced; 1 with ``--fail-on-skip`` when an FFT site was
skipped; 2 a usage error (no such file, module or callable, a callable that returned
something else, an unparsable policy); 3 the model failed to compile or run under
convfuse (a convfuse bug): one line with what failed and the cause's type and message,
``--verbose`` adds the traceback.

Rendering lives in ``cli_render``, the ``--check``/``--bench``/graph-break measurements
in ``cli_measure``; this module parses arguments, loads the target and runs the steps.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any, Callable

EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3

TARGET_HELP = """\
TARGET is PATH.py:CALLABLE or package.module:CALLABLE.  The callable takes no
arguments and returns (model, example_inputs): an nn.Module or function, and
a tuple of the inputs to call it with.  For example, a file my_model.py with

    def example():
        model = MyModel().eval()
        return model, (torch.randn(4, 64, 1024),)

is reported by `convfuse report my_model.py:example`.  CALLABLE may be dotted
(`module:Class.example`)."""

EXIT_HELP = """\
exit codes: 0 report produced; 1 with --fail-on-skip when an FFT site was
skipped; 2 usage error (no such file/module/callable, wrong return value,
unparsable policy); 3 the model failed to compile or run under convfuse (the
cause on one line; --verbose for the traceback)."""


class UsageError(Exception):
    """A problem with what the user asked for: exit code 2, one line, no traceback."""


class RunFailure(Exception):
    """The model failed under convfuse (not the user's fault): exit code 3.

    ``step`` says what was being done; ``cause`` is the exception, whose type and message
    are printed on the one error line (``--verbose`` adds the traceback).
    """

    def __init__(self, step: str, cause: BaseException) -> None:
        self.step, self.cause = step, cause
        super().__init__(f"{step} failed: {_one_line(cause)}")


# The one error line: the cause's message is trimmed so that the line fits in this many
# columns (two rows of a terminal 80 columns wide).
ERROR_WIDTH = 160
VERBOSE_HINT = " (rerun with --verbose for the traceback)"


# --------------------------------------------------------------------------- target


def _split_target(target: str) -> tuple[str, str]:
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise UsageError(f"target {target!r} is not PATH.py:CALLABLE or package.module:CALLABLE")
    return where, attr


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _import_file(path_text: str):
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"no such file: {path_text}")
    path = path.resolve()
    # Like `python path.py`: the file's folder comes first on sys.path, so its sibling imports work.
    sys.path.insert(0, str(path.parent))
    name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else "_convfuse_target"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path_text}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UsageError(f"importing {path_text} failed: {_one_line(exc)}") from exc
    return module


def _import_module(name: str):
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a console script does not have the cwd on sys.path
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(f"no such module: {name}") from exc
        raise UsageError(f"importing {name} failed: {_one_line(exc)}") from exc
    except Exception as exc:
        raise UsageError(f"importing {name} failed: {_one_line(exc)}") from exc


def load_target(target: str) -> tuple[Callable, tuple]:
    """``(model, example_inputs)`` from ``file.py:callable`` or ``package.module:callable``."""
    where, attr = _split_target(target)
    module = _import_file(where) if _is_path(where) else _import_module(where)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"no such callable: {attr!r} in {where}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{target}: {attr!r} is {_a(type(obj).__name__)}, not a callable")
    try:
        result = obj()
    except Exception as exc:
        raise UsageError(f"calling {target}() raised {_one_line(exc)}") from exc
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise UsageError(f"{target}() returned {_describe(result)}; expected (model, example_inputs_tuple)")
    model, inputs = result
    if not callable(model):
        raise UsageError(f"{target}() returned a model that is {_a(type(model).__name__)}, not callable")
    if not isinstance(inputs, (tuple, list)):
        raise UsageError(f"{target}() returned example inputs of type {type(inputs).__name__}; "
                         "expected a tuple, e.g. (x,)")
    return model, tuple(inputs)


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"{_a(type(value).__name__)} of {len(value)} item{'s' if len(value) != 1 else ''}"
    return _a(type(value).__name__)


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    return lines[0] if lines else ""


def root_cause(exc: BaseException) -> BaseException:
    """The exception that says what went wrong: through wrappers that only say where it happened.

    Dynamo's ``BackendCompilerFailed`` (first line ``backend=... raised:``) carries the backend's
    exception as ``inner_exception``; any exception whose first line is empty or ends in ``:``
    (an introduction to what follows) gives way to its ``__cause__``.
    """
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "inner_exception", None)
        if not isinstance(inner, BaseException):
            inner = exc.__cause__
        first = _first_line(exc)
        wrapper = type(exc).__name__ == "BackendCompilerFailed" or not first or first.endswith(":")
        if inner is None or not wrapper:
            break
        exc = inner
    return exc


def _one_line(exc: BaseException, width: int | None = None) -> str:
    """``Type: first line of the message`` of ``exc``'s root cause, in at most ``width`` columns.

    With no message, where it was raised (``AssertionError at file.py:12``) stands in for one.
    """
    exc = root_cause(exc)
    first = " ".join(_first_line(exc).split())
    if first:
        text = f"{type(exc).__name__}: {first}"
    else:
        frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
        text = type(exc).__name__
        if frames:
            from convfuse.cli_render import relative_path

            text += f" at {relative_path(frames[-1].filename)}:{frames[-1].lineno}"
    if width is not None and len(text) > width:
        text = text[: max(width - 3, 0)] + "..."
    return text


# --------------------------------------------------------------------------- policy


def make_policy(text: str):
    """The policy object for ``--policy TEXT`` (``NAME`` or ``NAME:KEY=VALUE,...``).

    ``convfuse.policies.parse_policy`` is the one parser of policy text (the Python API
    takes the same strings); its errors become one-line usage errors.
    """
    from convfuse.policies import parse_policy

    try:
        return parse_policy(text)
    except (ValueError, TypeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(message.removeprefix("convfuse: ")) from exc


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    from convfuse.backends.dispatch import KERNELS

    parser = argparse.ArgumentParser(
        prog="convfuse",
        description="convfuse: a torch.compile backend that runs FFT convolutions as one\nfused operator.",
        epilog=TARGET_HELP + "\n\nRun `convfuse report --help` for the report's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    report = commands.add_parser(
        "report",
        help="what convfuse does to a model: every FFT site, rewritten or why not",
        description="Compile a model with convfuse and report every FFT site: rewritten into the\n"
                    "fused operator, or skipped and why.",
        epilog=TARGET_HELP + "\n\n" + EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("target", metavar="TARGET", help="PATH.py:CALLABLE or package.module:CALLABLE (see below)")
    report.add_argument("--policy", metavar="TEXT",
                        help="rewrite policy: NAME or NAME:KEY=VALUE,... (default: exact)")
    report.add_argument("--kernel", choices=KERNELS, default=None,
                        help="implementation of the fused operator (default: auto, or $CONVFUSE_KERNEL)")
    report.add_argument("--dynamic", action="store_true", help="compile with dynamic shapes (dynamic=True)")
    report.add_argument("--json", metavar="PATH",
                        help="also write the report as JSON to PATH ('-': JSON on stdout, the table on stderr)")
    report.add_argument("--check", action="store_true",
                        help="run eager and convfuse-compiled; max abs/rel error, overall and per site")
    report.add_argument("--bench", action="store_true",
                        help="median times of eager, torch.compile (inductor) and convfuse; "
                             "each site alone: eager vs the fused operator")
    report.add_argument("--repeats", type=int, default=20, metavar="N",
                        help="timed samples per variant for --bench (default: 20)")
    report.add_argument("--fail-on-skip", action="store_true", help="exit with 1 when any FFT site was skipped")
    report.add_argument("--verbose", "-v", action="store_true",
                        help="progress on stderr, spec details, and tracebacks on errors")
    return parser


# --------------------------------------------------------------------------- the report command


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """torch.compile's ``options=`` for the backend: the kernel and the policy object."""
    from convfuse.options import BackendOptions

    options: dict[str, Any] = {"policy": make_policy(args.policy) if args.policy is not None else None}
    if args.kernel:
        options["kernel"] = args.kernel
    try:
        parsed = BackendOptions.parse(dict(options))  # CONVFUSE_KERNEL and defaults resolved here
    except ValueError as exc:
        raise UsageError(str(exc).removeprefix("convfuse: ")) from exc
    return {"kernel": parsed.kernel, "policy": parsed.policy}


def run_report(args: argparse.Namespace) -> int:
    import torch

    import convfuse
    from convfuse import cli_measure, cli_render

    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    options = _backend_options(args)
    ui = cli_render.Console(verbose=args.verbose, to_stderr=args.json == "-")
    dynamic = True if args.dynamic else None
    label = args.target
    with ui.stage(f"loading {label}"):
        model, inputs = load_target(label)
    with ui.stage("running the model eagerly"):
        try:
            with torch.no_grad():
                cli_measure.seeded(model, inputs)
        except Exception as exc:
            raise UsageError(f"{label}: the model failed on its own example inputs: {_one_line(exc)}") from exc
    with ui.stage("tracing and rewriting with convfuse"):
        try:
            report = convfuse.explain(model, *inputs, dynamic=dynamic, options=dict(options))
        except Exception as exc:
            raise RunFailure("convfuse.explain", exc) from exc
    ui.print_report(report, title=label, verbose=args.verbose)
    native = _native_cpu_line(report, args.verbose)
    if native:
        ui.note(native)
    breaks = check = bench = None
    if report.graphs > 1:
        with ui.stage("finding graph breaks"):
            breaks = _listed_once(_measured(cli_measure.graph_breaks, model, inputs))
        ui.print_graph_breaks(breaks, verbose=args.verbose)
    if args.check:
        with ui.stage("checking convfuse against eager"):
            check = _measured(cli_measure.check, model, inputs, options, dynamic)
        ui.print_check(check, report)
    if args.bench:
        bench = _measured(cli_measure.bench, model, inputs, options, dynamic, args.repeats, ui)
        ui.print_bench(bench, report)
    if args.json:
        _write_json(args.json, report, label, options, dynamic, check, bench, breaks)
        if args.json != "-":
            ui.note(f"wrote {args.json}")
    if args.fail_on_skip and report.skipped:
        return EXIT_SKIPPED
    return EXIT_OK


def _native_cpu_line(report, verbose: bool) -> str | None:
    """Where a site runs on CPU and its small calls run in Python rather than from C++ (no
    compiler, a failed build, native_cpu off: cpu_native.status() says which), a line saying so;
    with --verbose, the line also when they run from C++."""
    from convfuse.backends import cpu_native

    if not any(s.rewritten and s.kernel.startswith("cpu") for s in report.sites):
        return None
    if cpu_native.loaded():
        line = f"small CPU calls (16..1024 samples) run from C++: {cpu_native.status()}" if verbose else None
    else:
        line = (f"small CPU calls (16..1024 samples) run in Python, ~10-25 us slower each: native C++ "
                f"kernels {cpu_native.status()}")
    return textwrap.fill(line, width=78, break_long_words=True) if line else None


def _measured(fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise RunFailure(fn.__name__, exc) from exc


def _listed_once(breaks: dict[str, Any]) -> dict[str, Any]:
    """Graph breaks with one count: the breaks listed, each (source, reason) once with how often.

    ``torch._dynamo.explain`` counts ``graphs - 1`` breaks, but lists only the graphs that ended
    in a break, and a break inside a called function is listed twice (once from the caller's
    frame, once from its own).  The header printed, ``--json``'s ``graph_breaks`` and the list
    are the same breaks: ``graph_breaks == len(reasons)``.
    """
    listed: dict[tuple[str, str], dict[str, Any]] = {}
    for reason in breaks["reasons"]:
        key = (reason["source"], reason["reason"])
        if key in listed:
            listed[key]["times"] += 1
        else:
            listed[key] = {**reason, "times": 1}
    reasons = list(listed.values())
    return {**breaks, "graph_breaks": len(reasons), "reasons": reasons}


def _write_json(path: str, report, label: str, options: dict, dynamic, check, bench, breaks) -> None:
    data = json.loads(report.to_json())  # the one serializer; CLI-only results go under their own keys
    from convfuse.backends import cpu_native

    data["cli"] = {"target": label, "kernel": options["kernel"], "policy": str(options["policy"]),
                   "dynamic": bool(dynamic), "native_cpu": cpu_native.status()}
    if breaks is not None:
        data["graph_breaks"] = breaks
    if check is not None:
        data["check"] = check
    if bench is not None:
        data["bench"] = bench
    text = json.dumps(data, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on bad arguments, as argparse does
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return run_report(args)
    except UsageError as exc:
        code, message, error = EXIT_USAGE, f"convfuse report: error: {exc}", exc
    except RunFailure as exc:
        # One line, the cause on it: what failed, then the root exception's type and message,
        # trimmed so that the line (with the hint) fits in ERROR_WIDTH columns.
        head = f"convfuse report: {exc.step} failed: "
        hint = "" if args.verbose else VERBOSE_HINT
        cause = _one_line(exc.cause, max(ERROR_WIDTH - len(head) - len(hint), 20))
        code, message, error = EXIT_FAILED, head + cause + hint, exc
    except KeyboardInterrupt:
        return 130
    if args.verbose:
        traceback.print_exception(error.__cause__ or error, file=sys.stderr)
    print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
