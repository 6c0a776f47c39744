"""How ``convfuse report`` prints: plain text in 80 columns, or ``rich`` on a terminal.

Plain text is the complete output (pipes, files, CI logs): no colours, no line wider
than 80 columns.  ``rich`` is optional (not a dependency); when it is importable and
stdout is a terminal it draws the same table and a spinner while compiling.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

WIDTH = 80
GAP = "  "
ELLIPSIS = "..."


def relative_path(path: str, cwd: str | None = None) -> str:
    """``path`` relative to ``cwd`` when it is an absolute path under it, else unchanged."""
    if not os.path.isabs(path):
        return path
    try:
        rel = os.path.relpath(path, cwd or os.getcwd())
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel


def relative_source(source: str, cwd: str | None = None) -> str:
    """``file:line`` with the file relative to ``cwd`` when it lies under it."""
    path, sep, line = source.rpartition(":")
    if not sep or not line.isdigit():
        return source
    return f"{relative_path(path, cwd)}:{line}"


def shorten(text: str, width: int, keep_end: bool = False) -> str:
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return text[:width]
    if keep_end:
        return ELLIPSIS + text[-(width - len(ELLIPSIS)):]
    return text[: width - len(ELLIPSIS)] + ELLIPSIS


def _split_suffix(text: str) -> tuple[str, str]:
    """``("dir/file.py", ":70")`` from ``dir/file.py:70`` (or ``:callable``): the suffix stays with the name."""
    path, sep, tail = text.rpartition(":")
    if sep and path and tail and "/" not in tail and os.sep not in tail:
        return path, sep + tail
    return text, ""


def shortest_path(text: str) -> str:
    """What ``shorten_path`` keeps at the least: ``.../file.py:70`` (the file name and its suffix whole)."""
    path, suffix = _split_suffix(text)
    parts = path.replace(os.sep, "/").split("/")
    return text if len(parts) == 1 else f"{ELLIPSIS}/{parts[-1]}{suffix}"


def shorten_path(text: str, width: int) -> str:
    """``text`` (a path, ``path:line`` or ``path:callable``) in ``width`` columns, cut from the left at
    a path separator: ``.../examples/models.py:70``.  The file name and what follows it are kept
    whole; only when they alone are wider than ``width`` is the name itself cut (from the left)."""
    if len(text) <= width:
        return text
    path, suffix = _split_suffix(text)
    parts = path.replace(os.sep, "/").split("/")
    kept = parts[-1] + suffix
    for part in reversed(parts[:-1]):
        if len(f"{ELLIPSIS}/{part}/{kept}") > width:
            break
        kept = f"{part}/{kept}"
    if len(parts) > 1 and len(f"{ELLIPSIS}/{kept}") <= width:
        return f"{ELLIPSIS}/{kept}"
    return shorten(kept, width, keep_end=True)


BREAK_AFTER = ("/\\", ".,;:=", "_-")  # where a token wider than a line may be split, tried in order


def _split_token(token: str, room: int) -> list[str]:
    """A token wider than ``room``, in pieces of at most ``room`` columns, each ending at the last
    separator that fits (a path separator first, then punctuation, then ``_``/``-``); cut mid-word
    only when a piece has no separator at all."""
    pieces, rest = [], token
    while len(rest) > room:
        for separators in BREAK_AFTER:
            cut = max(rest.rfind(c, 0, room) for c in separators) + 1  # after the separator
            if cut > 0:
                break
        else:
            cut = room
        pieces.append(rest[:cut])
        rest = rest[cut:]
    return pieces + [rest] if rest else pieces


def wrap(text: str, width: int = WIDTH, initial_indent: str = "", subsequent_indent: str = "") -> list[str]:
    """``text`` in lines of at most ``width`` columns, broken at spaces only.

    Unlike ``textwrap`` (which breaks words at hyphens and cuts a long word wherever the line
    ends), a word is never split unless it is wider than a whole line; then it is split after a
    path separator or punctuation (``_split_token``) and continues on the next line.
    """
    room = width - max(len(initial_indent), len(subsequent_indent))
    lines: list[str] = []
    line, empty = initial_indent, True
    for word in text.split():
        pieces = _split_token(word, max(room, 1)) if len(word) > room else [word]
        for k, piece in enumerate(pieces):
            glue = "" if empty or k else " "
            if empty or len(line) + len(glue) + len(piece) <= width:
                line, empty = line + glue + piece, False
            else:
                lines.append(line)
                line = subsequent_indent + piece
    if not empty:
        lines.append(line)
    return lines


def shapes_text(shapes: dict[str, list]) -> str:
    return " ".join(f"{name}={'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def brief_reason(reason: str) -> str:
    """Dynamo's break reason without its hints and debug context: the first line and the explanation."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    if not lines:
        return "<no reason given>"
    keep = [lines[0]] + [line for line in lines[1:] if line.startswith("Explanation:")]
    return " ".join(keep)


def policy_detail(site: Any) -> str:
    """What the policy did at a site, when that is more than "exact": asked -> applied, why, cost, error."""
    asked, applied = site.policy, getattr(site, "policy_applied", "")
    note, error = getattr(site, "policy_note", ""), getattr(site, "rel_error", None)
    if not applied or (asked == applied == "exact" and not note):
        return ""
    parts = [] if asked == applied else [f"{asked} -> {applied}"]
    if note:
        parts.append(note)
    if error is not None and applied != "exact":
        parts.append(f"rel error {error:.2e} vs exact")
    saved = [f"{value:.3g} {unit}" for unit, value in (("flops", getattr(site, "flops_saved", None)),
                                                      ("bytes", getattr(site, "bytes_saved", None))) if value]
    if saved:
        parts.append(f"saves ~{' and '.join(saved)} per call")
    return "; ".join(parts)


def site_rows(report: Any) -> list[dict[str, str]]:
    rows = []
    for i, site in enumerate(report.sites, 1):
        spec = site.spec
        rows.append({
            "#": str(i),
            "graph": str(site.graph),
            "status": site.status,
            "family": site.pattern,
            "source": relative_source(site.source),
            "axis": str(spec.axis) if spec is not None else "-",
            "n": str(spec.n) if spec is not None else "-",
            "kernel": site.kernel or "-",
            "policy": (getattr(site, "policy_applied", "") or site.policy) if site.rewritten else "-",
            "policy detail": policy_detail(site),
            "shapes": shapes_text(site.shapes) if site.shapes else "",
            "spec": spec.describe() if spec is not None else "",
            "reason": site.reason,
        })
    return rows


# Columns of the plain table, in order; those that shrink first when 80 columns are too few.
COLUMNS = ("#", "graph", "status", "family", "source", "axis", "n", "kernel", "policy")
SHRINK = (("source", 14), ("kernel", 10), ("policy", 6), ("family", 8), ("n", 5))  # abbreviated cells get a full-text line


def plain_table(report: Any, width: int = WIDTH, verbose: bool = False) -> str:
    """One row per site, then indented detail lines (shapes, spec, reason) wrapped to ``width``."""
    rows = site_rows(report)
    columns = [c for c in COLUMNS if c != "graph" or report.graphs > 1]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    total = sum(widths.values()) + len(GAP) * (len(columns) - 1)
    # A source is cut at a path separator and keeps its file name and line whole (.../models.py:70):
    # the column shrinks no narrower than that, unless nothing else is left to shrink.
    whole_name = max([len(shortest_path(r["source"])) for r in rows], default=0)
    steps = [(c, max(floor, whole_name) if c == "source" else floor) for c, floor in SHRINK]
    for column, floor in steps + [("source", dict(SHRINK)["source"])]:
        if total <= width:
            break
        cut = min(total - width, max(0, widths[column] - max(floor, len(column))))
        widths[column] -= cut
        total -= cut
    right = {"#", "graph", "axis", "n"}

    def line(cells: dict[str, str]) -> str:
        parts = []
        for c in columns:
            text = shorten_path(cells[c], widths[c]) if c == "source" else shorten(cells[c], widths[c])
            parts.append(text.rjust(widths[c]) if c in right else text.ljust(widths[c]))
        return GAP.join(parts).rstrip()

    out = [line({c: c for c in columns}), "-" * min(width, total)]
    indent = " " * (widths["#"] + len(GAP))
    for row in rows:
        out.append(line(row))
        details = []
        for c in ("source", "family", "policy", "n"):
            if len(row[c]) > widths[c] and not (c == "policy" and row["policy detail"]):
                details.append((c, row[c]))  # abbreviated above: the full text here
        if row["shapes"]:
            details.append(("shapes", row["shapes"]))
        if row["policy detail"]:
            details.append(("policy", row["policy detail"]))
        if verbose and row["spec"]:
            details.append(("spec", row["spec"]))
        if row["reason"]:
            details.append(("reason", row["reason"]))
        for label, text in details:
            out += wrap(text, width, initial_indent=f"{indent}{label}: ",
                        subsequent_indent=indent + " " * (len(label) + 2))
    return "\n".join(out)


def _rich_console():
    if not sys.stdout.isatty():
        return None
    try:
        from rich.console import Console as RichConsole
    except ImportError:
        return None
    return RichConsole()


class Console:
    """Where the report goes: stdout as plain text, or through rich on a terminal."""

    def __init__(self, verbose: bool = False, width: int = WIDTH, to_stderr: bool = False) -> None:
        self.verbose = verbose
        self.width = width
        self.stream = sys.stderr if to_stderr else sys.stdout  # stderr when stdout carries the JSON
        self.rich = None if to_stderr else _rich_console()

    def _print(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def stage(self, message: str) -> Iterator[None]:
        """A spinner on a terminal (rich), a line on stderr with --verbose, else nothing."""
        if self.rich is not None:
            from rich.console import Console as RichConsole

            with RichConsole(stderr=True).status(f"{message}..."):
                yield
            return
        if self.verbose:
            print(f"convfuse: {message}...", file=sys.stderr, flush=True)
        yield

    def note(self, text: str) -> None:
        self._print(text)

    def print_report(self, report: Any, title: str = "", verbose: bool = False) -> None:
        if title:
            head = "convfuse report: "
            where, sep, attr = title.rpartition(":")
            title = f"{relative_path(where)}{sep}{attr}"
            self._print(head + shorten_path(title, self.width - len(head)))
        if not report.sites:
            self._print("no FFT sites found (no irfft/irfftn/ifft in the compiled graphs)")
        elif self.rich is not None:
            self._rich_table(report, verbose)
        else:
            self._print(plain_table(report, self.width, verbose))
        graphs = f" in {report.graphs} graph{'s' if report.graphs != 1 else ''}"
        self._print(report.summary() + graphs)

    def _rich_table(self, report: Any, verbose: bool) -> None:
        """The plain table at the terminal's width, its status words coloured."""
        from rich.text import Text

        text = Text(plain_table(report, max(self.width, self.rich.width), verbose))
        text.stylize("bold", 0, text.plain.index("\n"))
        text.highlight_regex(r"(?m)(?<=  )rewritten(?=  )", "green")
        text.highlight_regex(r"(?m)(?<=  )skipped(?=  )", "yellow")
        self.rich.print(text, soft_wrap=True)

    def print_graph_breaks(self, breaks: dict[str, Any], verbose: bool = False) -> None:
        """The count is the number of breaks listed: one value, read off the list itself."""
        reasons, graphs = breaks["reasons"], breaks["graphs"]
        self._print(f"graph breaks: {len(reasons)} ({graphs} graph{'s' if graphs != 1 else ''}; "
                    "convfuse sees each graph on its own)")
        for i, reason in enumerate(reasons, 1):
            text = reason["reason"] if verbose else brief_reason(reason["reason"])
            number = f"  {i}. "
            times = reason.get("times", 1)
            seen = f" ({times} times)" if times > 1 else ""
            source = shorten_path(relative_source(reason["source"]), self.width - len(number) - len(seen) - 1)
            for chunk in wrap(f"{source}{seen}: {text}", self.width, initial_indent=number,
                              subsequent_indent=" " * len(number)):
                self._print(chunk)

    def print_check(self, check: dict[str, Any], report: Any = None) -> None:
        verdict = {True: "ok", False: "MISMATCH", None: "no bound (approximate policy)"}[check["ok"]]
        n = check["outputs"]
        self._print(f"check: eager vs convfuse (no_grad, {n} output{'s' if n != 1 else ''}): {verdict}")
        tolerance = f" (tolerance {check['tolerance']:.0e})" if check["tolerance"] is not None else ""
        self._print(f"  max abs error {check['max_abs_error']:.2e}, max rel error {check['max_rel_error']:.2e}"
                    + tolerance)
        for chunk in wrap(check.get("note", ""), self.width, initial_indent="  ", subsequent_indent="    "):
            self._print(chunk)
        number = {(site.graph, site.node): i for i, site in enumerate(getattr(report, "sites", []), 1)}
        if check.get("sites"):
            self._print("  per site (the fused operator's output vs the node it replaced):")
        for err in check.get("sites", []):
            which = number.get((err["graph"], err["node"]))
            label = f"site {which}" if which is not None else shorten(err["node"] or err["replaced"], 20)
            self._print(f"    {label}: max abs error {err['max_abs_error']:.2e}, "
                        f"max rel error {err['max_rel_error']:.2e}")
        self._unmeasured(check)

    def print_bench(self, bench: dict[str, Any], report: Any = None) -> None:
        self._print(f"bench (forward, no_grad, median of {bench['repeats']} interleaved samples):")
        for name, ms in bench["median_ms"].items():
            speedup = bench["speedup_vs_eager"][name]
            self._print(f"  {name:<9} {ms:10.3f} ms  {speedup:5.2f}x vs eager")
        number = {(site.graph, site.node): i for i, site in enumerate(getattr(report, "sites", []), 1)}
        if bench.get("sites"):
            self._print("  per site (its eager nodes vs the fused operator, alone):")
        for row in bench.get("sites", []):
            which = number.get((row["graph"], row["node"]))
            label = f"site {which}" if which is not None else shorten(row["node"], 20)
            t = row["median_ms"]
            self._print(f"    {label}: eager {t['eager']:.3f} ms, convfuse {t['convfuse']:.3f} ms "
                        f"({row['speedup']:.2f}x)")
        self._unmeasured(bench)
        for chunk in wrap(bench.get("note", ""), self.width, initial_indent="  ", subsequent_indent="    "):
            self._print(chunk)

    def _unmeasured(self, result: dict[str, Any]) -> None:
        n = result.get("sites_not_measured", 0)
        text = (f"{n} rewritten site{'s' if n != 1 else ''} not measured alone (an output that feeds only "
                "other rewritten sites cannot be told apart from them)")
        for chunk in wrap(text, self.width, initial_indent="    ", subsequent_indent="    ") if n else ():
            self._print(chunk)
