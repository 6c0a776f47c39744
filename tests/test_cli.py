"""`convfuse report`: driven as a subprocess on a model file written the way a user would.

Each subprocess imports torch and compiles (seconds on 2 cores), so the subprocess tests
are few and each checks several things; the many bad-target spellings run in-process
through ``convfuse.cli.main``, the same code path minus the interpreter start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convfuse import cli
from convfuse import cli_render
from convfuse.cli_render import plain_table, relative_source, shorten_path, wrap
from convfuse.report import RewriteReport, SiteReport

REPO = Path(__file__).resolve().parents[1]

MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class HyenaConv(nn.Module):
        def __init__(self, H=4, L=32):
            super().__init__()
            self.k = nn.Parameter(torch.randn(H, L))
            self.D = nn.Parameter(torch.randn(H))

        def forward(self, u):
            L = u.shape[-1]
            k_f = torch.fft.rfft(self.k, n=2 * L) / (2 * L)
            u_f = torch.fft.rfft(u, n=2 * L)
            y = torch.fft.irfft(u_f * k_f, n=2 * L, norm="forward")[..., :L]
            return y + u * self.D[:, None]


    def spectral_mask(x, mask):
        # a filter in frequency with a real mask: not a convolution of two signals
        return torch.fft.irfft(torch.fft.rfft(x) * mask, n=x.shape[-1])


    class Mixed(nn.Module):
        def __init__(self, H=4, L=32):
            super().__init__()
            self.conv = HyenaConv(H, L)
            self.register_buffer("mask", torch.rand(L // 2 + 1))

        def forward(self, u):
            return spectral_mask(self.conv(u), self.mask)


    def hyena():
        torch.manual_seed(0)
        return HyenaConv(), (torch.randn(2, 4, 32),)


    def mixed():
        torch.manual_seed(0)
        return Mixed(), (torch.randn(2, 4, 32),)


    def with_break():
        torch.manual_seed(0)
        conv = HyenaConv()

        def broken(u):
            y = conv(u)
            torch._dynamo.graph_break()
            return conv(y)

        return broken, (torch.randn(2, 4, 32),)


    class Chained(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = HyenaConv(), HyenaConv()

        def forward(self, u):
            return self.b(self.a(u))


    def chained():
        torch.manual_seed(0)
        return Chained(), (torch.randn(2, 4, 32),)


    def not_a_pair():
        return HyenaConv()


    def inputs_not_tuple():
        return HyenaConv(), torch.randn(2, 4, 32)


    def raises():
        raise RuntimeError("boom")


    def wrong_shape():
        return HyenaConv(H=4), (torch.randn(2, 5, 32),)


    def nested_break():
        torch.manual_seed(0)
        conv = HyenaConv()

        def inner(y):
            y = y + 1
            torch._dynamo.graph_break()  # inside a called function: Dynamo lists it from both frames
            return y * 3

        def f(u):
            return conv(inner(conv(u)) * 2)

        return f, (torch.randn(2, 4, 32),)
''')


def line_of(snippet: str) -> int:
    """The line of MODEL that contains ``snippet`` (1-based, as tracebacks count)."""
    return next(i for i, line in enumerate(MODEL.splitlines(), 1) if snippet in line)


CONV_LINE = line_of('y = torch.fft.irfft(u_f * k_f')
MASK_LINE = line_of('return torch.fft.irfft(torch.fft.rfft(x) * mask')
BREAK_LINE = line_of('torch._dynamo.graph_break()')
NESTED_BREAK_LINE = line_of('torch._dynamo.graph_break()  # inside a called function')


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "usermodel.py"
    path.write_text(MODEL)
    return path


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("CONVFUSE_KERNEL", None)
    env["COLUMNS"] = "80"
    return subprocess.run([sys.executable, "-m", "convfuse.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_plain(text: str) -> None:
    assert "\x1b" not in text, "colour codes in non-terminal output"
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert not too_wide, too_wide


def test_table_json_and_fail_on_skip(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = run_cli("report", "usermodel.py:mixed", "--json", str(out), "--fail-on-skip", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # a site was skipped
    text = proc.stdout
    assert_plain(text)
    assert "2 FFT sites, 1 rewritten (50%)" in text
    rows = [line for line in text.splitlines() if line[:3] in ("1  ", "2  ")]
    assert len(rows) == 2
    conv, mask = rows
    assert "rewritten" in conv and "causal-conv" in conv and f"usermodel.py:{CONV_LINE}" in conv  # relative to cwd
    assert " -1 " in conv and " 64 " in conv  # axis, n
    assert "skipped" in mask and f"usermodel.py:{MASK_LINE}" in mask
    assert "shapes: u=2x4x32 k=4x32 out=2x4x32" in text
    assert "reason: " in text

    data = json.loads(out.read_text())
    assert data["summary"] == "2 FFT sites, 1 rewritten (50%)"
    assert [s["status"] for s in data["sites"]] == ["rewritten", "skipped"]
    assert data["sites"][0]["spec"]["n"] == 64 and data["sites"][1]["reason"]
    assert data["cli"]["target"] == "usermodel.py:mixed"
    assert "check" not in data and "bench" not in data
    # where the small CPU calls run, in words (cpu_native.status(): "loaded (...)" or why not)
    from convfuse.backends import cpu_native

    assert data["cli"]["native_cpu"] == cpu_native.status()
    assert ("small CPU calls" in text) != cpu_native.loaded()  # said where they run in Python

    # The one serializer: the JSON's report keys are exactly what the Python API writes.
    import convfuse

    sys.path.insert(0, str(tmp_path))
    try:
        import usermodel  # type: ignore[import-not-found]

        model, inputs = usermodel.mixed()
        api = json.loads(convfuse.explain(model, *inputs).to_json())
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("usermodel", None)
    assert {k: data[k] for k in api} == api
    assert set(data) - set(api) == {"cli"}


def test_report_says_when_small_cpu_calls_run_in_python(model_file: Path, tmp_path: Path) -> None:
    proc = run_cli("report", "usermodel.py:mixed", cwd=tmp_path, env={"CONVFUSE_NATIVE_CPU": "0"})
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # the note is wrapped at 78 columns
    assert_plain(proc.stdout)
    assert "small CPU calls (16..1024 samples) run in Python" in text
    assert "off (CONVFUSE_NATIVE_CPU=0)" in text


def test_check_bench_and_clean_exit(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = run_cli("report", str(model_file) + ":hyena", "--check", "--bench", "--repeats", "2",
                   "--fail-on-skip", "--json", str(out), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert_plain(proc.stdout)
    assert "1 FFT site, 1 rewritten (100%)" in proc.stdout
    assert "check: eager vs convfuse (no_grad, 1 output): ok" in proc.stdout
    for name in ("eager", "inductor", "convfuse"):
        assert f"  {name} " in proc.stdout
    data = json.loads(out.read_text())
    assert data["check"]["ok"] and data["check"]["max_rel_error"] < 1e-4
    (site_error,) = data["check"]["sites"]  # per site: the fused op's output vs the node it replaced
    assert (site_error["graph"], site_error["node"]) == (0, data["sites"][0]["node"])
    assert site_error["max_rel_error"] < 1e-4
    assert "site 1: max abs error" in proc.stdout
    assert set(data["bench"]["median_ms"]) == {"eager", "inductor", "convfuse"}
    assert data["bench"]["repeats"] == 2
    (site_time,) = data["bench"]["sites"]  # per site: its eager nodes vs the fused operator
    assert set(site_time["median_ms"]) == {"eager", "convfuse"} and site_time["speedup"] > 0
    assert "site 1: eager " in proc.stdout


def test_graph_breaks_dynamic_and_json_on_stdout(model_file: Path, tmp_path: Path) -> None:
    proc = run_cli("report", "usermodel.py:with_break", "--dynamic", "--json", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout is the JSON alone; the table went to stderr
    assert data["cli"]["dynamic"] is True
    assert data["graphs"] == 2 and [s["graph"] for s in data["sites"]] == [0, 1]
    assert data["graph_breaks"]["graph_breaks"] == 1
    assert data["graph_breaks"]["reasons"][0]["source"].endswith(f"usermodel.py:{BREAK_LINE}")
    assert "2 FFT sites, 2 rewritten (100%) in 2 graphs" in proc.stderr
    assert "graph breaks: 1 (2 graphs" in proc.stderr
    assert f"usermodel.py:{BREAK_LINE}" in proc.stderr  # the graph_break() line, relative to cwd


def test_usage_error_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("report", "missing.py:example", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["convfuse report: error: no such file: missing.py"]
    assert proc.stdout == ""


def test_report_help_explains_target(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "TARGET is PATH.py:CALLABLE or package.module:CALLABLE" in out
    assert "convfuse report my_model.py:example" in out
    assert_plain(out)


def test_examples_hyena(tmp_path: Path) -> None:
    proc = run_cli("report", "examples/hyena.py:example", "--json", str(tmp_path / "h.json"), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert_plain(proc.stdout)
    assert "examples/hyena.py:" in proc.stdout
    data = json.loads((tmp_path / "h.json").read_text())
    assert data["sites"] and all(s["status"] == "rewritten" for s in data["sites"])


# ---------------------------------------------------------------- in-process: the same main()


@pytest.fixture
def in_process(model_file: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(model_file.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield lambda *args: cli.main(list(args))
    for name in set(sys.modules) - before:
        if name in ("usermodel", "_convfuse_target"):
            del sys.modules[name]


@pytest.mark.parametrize("target, message", [
    ("missing.py:example", "no such file: missing.py"),
    ("usermodel.py:nope", "no such callable: 'nope' in usermodel.py"),
    ("usermodel:nope", "no such callable: 'nope' in usermodel"),
    ("no_such_pkg.models:example", "no such module: no_such_pkg.models"),
    ("usermodel.py", "is not PATH.py:CALLABLE or package.module:CALLABLE"),
    ("usermodel.py:not_a_pair", "returned a HyenaConv; expected (model, example_inputs_tuple)"),
    ("usermodel.py:inputs_not_tuple", "returned example inputs of type Tensor; expected a tuple"),
    ("usermodel.py:raises", "raised RuntimeError: boom"),
    ("usermodel.py:torch", "is a module, not a callable"),
    ("usermodel.py:wrong_shape", "the model failed on its own example inputs: RuntimeError"),
])
def test_bad_targets(in_process, capsys, target: str, message: str) -> None:
    assert in_process("report", target) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convfuse report: error: ") and message in err[0], err


@pytest.mark.parametrize("policy, message", [
    ("bogus", "unknown policy 'bogus'"),
    ("exact:length", "expected key=value, got 'length'"),
    ("partial:length=1,length=2", "length given twice"),
    ("partial:length=abc", "'abc' is not a number"),
    ("partial:length=0", "length must be >= 1"),
])
def test_bad_policies(in_process, capsys, policy: str, message: str) -> None:
    assert in_process("report", "usermodel.py:hyena", "--policy", policy) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_verbose_shows_the_traceback(in_process, capsys) -> None:
    assert in_process("report", "usermodel.py:raises", "--verbose") == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "boom" in err


def test_no_command_and_top_level_help(capsys) -> None:
    assert cli.main([]) == 2
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "report" in out and "TARGET is PATH.py:CALLABLE" in out
    assert_plain(out)


def test_policy_text() -> None:
    assert str(cli.make_policy("exact")) == "exact"
    assert str(cli.make_policy("Partial:length=1024")) == "partial:length=1024"
    assert str(cli.make_policy("freq:keep=0.25")) == "freq:keep=0.25"
    assert cli.make_policy("auto:max_rel_error=1e-3").max_rel_error == 1e-3


def test_plain_table_fits_80_columns(tmp_path: Path) -> None:
    long = "/very/long/path/" + "deeply/nested/" * 6 + "model_file_with_a_long_name.py:1234"
    report = RewriteReport(graphs=2, sites=[
        SiteReport("rewritten", "causal-conv", long, kernel="reference", policy="partial:length=1024,keep=0.25",
                   shapes={"u": [64, 768, 32768], "k": [768, 32768], "out": [64, 768, 32768]}),
        SiteReport("skipped", "spectral-filter", long, reason="a very long reason " * 12, graph=1),
    ])
    text = plain_table(report)
    assert_plain(text)
    assert "model_file_with_a_long_name.py:1234" in text  # abbreviated from the left, kept whole below
    assert "partial:length=1024,keep=0.25" in text
    assert relative_source(str(tmp_path / "m.py") + ":3", cwd=str(tmp_path)) == "m.py:3"
    assert relative_source("/elsewhere/m.py:3", cwd=str(tmp_path)) == "/elsewhere/m.py:3"


def test_policy_text_reaches_the_report(in_process, capsys, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    assert in_process("report", "usermodel.py:hyena", "--policy", "partial:length=8", "--json", str(out)) == 0
    text = capsys.readouterr().out
    assert_plain(text)
    assert "partial:length=8" in text and "policy: " in text  # the column and the detail line
    data = json.loads(out.read_text())
    assert data["cli"]["policy"] == "partial:length=8"
    site = data["sites"][0]
    assert site["policy"] == site["policy_applied"] == "partial:length=8"
    assert site["rel_error"] is not None and site["rel_error"] > 0


def test_convfuse_failure_is_exit_3(in_process, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import convfuse

    def broken_explain(*args, **kwargs):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr(convfuse, "explain", broken_explain)
    assert in_process("report", "usermodel.py:hyena") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["convfuse report: convfuse.explain failed: RuntimeError: kernel exploded "
                   "(rerun with --verbose for the traceback)"]


def test_check_per_site_on_chained_sites(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first conv's output feeds only the second conv: it has no surviving user to be identified by.
    from convfuse import cli_measure

    monkeypatch.syspath_prepend(str(model_file.parent))
    import usermodel  # type: ignore[import-not-found]

    try:
        model, inputs = usermodel.chained()
        result = cli_measure.check(model, inputs, {"kernel": "auto", "policy": None}, None)
    finally:
        sys.modules.pop("usermodel", None)
    assert result["ok"] and result["outputs"] == 1
    (second,) = result["sites"]
    assert second["max_rel_error"] < 1e-4 and second["node"]
    assert result["sites_not_measured"] == 1


# ---------------------------------------------------------------- exit code 3: the cause on the one line


def _failing_backend(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """convfuse's backend raising ``exc`` inside torch.compile: Dynamo wraps it in BackendCompilerFailed."""
    import convfuse.api

    def backend(gm, example_inputs, **kwargs):
        raise exc

    monkeypatch.setattr(convfuse.api, "convfuse_backend", backend)


def test_exit_3_prints_the_cause_without_verbose(in_process, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_backend(monkeypatch, RuntimeError("kernel exploded in the backend\nsecond line"))
    assert in_process("report", "usermodel.py:hyena") == 3
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    # Dynamo's "backend=... raised:" wrapper gives way to the backend's own exception.
    assert err == ["convfuse report: convfuse.explain failed: RuntimeError: kernel exploded in the backend "
                   "(rerun with --verbose for the traceback)"]
    assert "BackendCompilerFailed" not in captured.err and captured.out == ""


def test_exit_3_trims_a_long_cause_and_names_where_an_empty_one_was_raised(
        in_process, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_backend(monkeypatch, ValueError("shape mismatch " + "(64, 768, 32768) " * 40))
    assert in_process("report", "usermodel.py:hyena") == 3
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert len(line) <= cli.ERROR_WIDTH
    assert "ValueError: shape mismatch (64, 768, 32768)" in line
    assert line.endswith("... (rerun with --verbose for the traceback)")

    def raises_bare(*args, **kwargs):
        raise AssertionError  # no message: where it was raised stands in for one

    import convfuse

    monkeypatch.setattr(convfuse, "explain", raises_bare)
    assert in_process("report", "usermodel.py:hyena") == 3
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "convfuse.explain failed: AssertionError at " in line and "test_cli.py:" in line, line


def test_exit_3_verbose_keeps_the_traceback(in_process, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_backend(monkeypatch, RuntimeError("kernel exploded in the backend"))
    assert in_process("report", "usermodel.py:hyena", "--verbose") == 3
    err = capsys.readouterr().err
    assert "Traceback" in err
    last = err.strip().splitlines()[-1]
    assert last == "convfuse report: convfuse.explain failed: RuntimeError: kernel exploded in the backend"


def test_root_cause() -> None:
    try:
        try:
            raise KeyError("the key")
        except KeyError as inner:
            raise RuntimeError("while doing things:") from inner
    except RuntimeError as outer:
        assert cli.root_cause(outer) is outer.__cause__
        assert cli._one_line(outer) == "KeyError: 'the key'"
    informative = RuntimeError("the real message")
    informative.__cause__ = KeyError("detail")
    assert cli.root_cause(informative) is informative  # a message of its own: kept
    assert cli._one_line(RuntimeError("x" * 50), 20) == "RuntimeError: xxx..."


def test_target_that_fails_to_load(in_process, capsys, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import torch\nVALUE = 1 / 0\n\ndef example():\n    return None\n")
    assert in_process("report", "broken.py:example") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["convfuse report: error: importing broken.py failed: ZeroDivisionError: division by zero"]


# ---------------------------------------------------------------- paths cut from the left, words never split


def test_source_paths_are_cut_at_a_separator() -> None:
    path = "/home/someone/projects/examples/models.py:70"
    assert shorten_path(path, 80) == path
    assert shorten_path(path, 25) == ".../examples/models.py:70"
    assert shorten_path(path, 24) == ".../models.py:70"  # never ".../amples/models.py:70"
    assert shorten_path(path, 12) == "models.py:70"  # the file name and line whole, as long as they fit
    assert shorten_path(path, 10) == "...s.py:70"  # only then the name itself (from the left)
    assert shorten_path("deep/dir/usermodel.py:mixed", 24) == ".../usermodel.py:mixed"  # a TARGET too


def test_plain_table_cuts_long_sources_at_a_separator() -> None:
    long_dir = "/very/long/path/" + "deeply/nested/" * 6
    source = long_dir + "models.py:1234"
    report = RewriteReport(graphs=1, sites=[
        SiteReport("rewritten", "causal-conv", source, kernel="cpu-fft", policy="exact"),
        SiteReport("skipped", "spectral-filter", source, reason="a spectrum multiplied by a real mask " * 4),
    ])
    text = plain_table(report)
    assert_plain(text)
    rows = [line for line in text.splitlines() if line[:3] in ("1  ", "2  ")]
    for row in rows:
        (cell,) = [token for token in row.split() if token.endswith("models.py:1234")]
        assert cell.startswith(".../") and source.endswith("/" + cell[4:]), cell  # whole components
    # The full path on the line below, broken only after a "/", and whole when put back together.
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("source: "))
    pieces = [lines[start].split("source: ", 1)[1]]
    pieces += [line.strip() for line in lines[start + 1:start + 3] if not line.lstrip().startswith(("1", "2", "reason"))]
    assert all(piece.endswith("/") for piece in pieces[:-1])
    assert "".join(pieces) == source


def test_reasons_wrap_at_word_boundaries() -> None:
    reason = ("the spectrum u_f is multiplied by a real-valued mask (a frequency-domain filter) in "
              "torch.ops.aten._foreach_mul_.Scalar at non-singleton dimension -1, causal-conv refused; " * 3)
    report = RewriteReport(graphs=1, sites=[SiteReport("skipped", "spectral-filter", "m.py:3", reason=reason)])
    text = plain_table(report)
    assert_plain(text)
    body = text.split("reason: ", 1)[1]
    assert body.split() == reason.split()  # every word whole: none cut at a hyphen or at the margin
    for width in (50, 60, 80):  # every word narrower than a line: none split
        lines = wrap(reason, width, initial_indent="   reason: ", subsequent_indent=" " * 11)
        assert all(len(line) <= width for line in lines)
        assert " ".join(lines).split()[1:] == reason.split()
    token = "/a/" + "long_directory/" * 8 + "file.py:12"  # wider than a line: split after a "/" only
    lines = wrap("see " + token, 40, subsequent_indent="  ")
    assert all(len(line) <= 40 for line in lines) and "".join(line.strip() for line in lines) == "see " + token
    assert len(lines) > 2 and all(line.endswith("/") for line in lines[:-1])


def test_rich_table_is_not_wrapped_by_rich(capsys) -> None:
    rich_console = pytest.importorskip("rich.console")
    import io

    source = "/very/long/path/" + "deeply/nested/" * 6 + "models.py:1234"
    report = RewriteReport(graphs=1, sites=[SiteReport("skipped", "spectral-filter", source, reason="why " * 40)])
    ui = cli_render.Console()
    buffer = io.StringIO()
    ui.rich = rich_console.Console(file=buffer, width=60, force_terminal=True, color_system=None)
    ui.print_report(report)
    table = buffer.getvalue()
    assert table.splitlines() == plain_table(report).splitlines()  # soft_wrap: rich adds no line breaks


# ---------------------------------------------------------------- graph breaks: one count


def test_graph_break_count_is_the_list(capsys) -> None:
    reason = "Call to `torch._dynamo.graph_break()`\n  Explanation: User-inserted graph break.\n  Hint: remove it"
    measured = {"graphs": 4, "graph_breaks": 3, "reasons": [  # Dynamo's own count: graphs - 1
        {"reason": reason, "source": "/x/m.py:19"}, {"reason": reason, "source": "/x/m.py:19"}]}
    breaks = cli._listed_once(measured)
    assert breaks["graph_breaks"] == len(breaks["reasons"]) == 1 and breaks["reasons"][0]["times"] == 2
    cli_render.Console().print_graph_breaks(breaks)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("graph breaks: 1 (4 graphs;")
    assert out[1].startswith("  1. /x/m.py:19 (2 times): Call to `torch._dynamo.graph_break()`")
    # The header counts what is listed even when given a count that disagrees.
    cli_render.Console().print_graph_breaks({**measured, "graph_breaks": 7})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("graph breaks: 2 (") and [line[:5] for line in out[1:] if line[2:3].isdigit()] == \
        ["  1. ", "  2. "]


def test_long_path_and_nested_break_end_to_end(model_file: Path, tmp_path: Path, capsys,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path.joinpath(*["a_rather_long_directory_name"] * 3)
    deep.mkdir(parents=True)
    (deep / "usermodel.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    out = tmp_path / "b.json"
    target = str(deep.relative_to(tmp_path) / "usermodel.py") + ":nested_break"
    try:
        assert cli.main(["report", target, "--json", str(out)]) == 0
    finally:
        sys.modules.pop("usermodel", None)
        sys.modules.pop("_convfuse_target", None)
    text = capsys.readouterr().out
    assert_plain(text)
    lines = text.splitlines()
    title = lines[0].removeprefix("convfuse report: ")
    assert title.startswith(".../") and target.endswith("/" + title[4:]), title  # cut at a "/"
    rows = [line for line in lines if line[:3] in ("1  ", "2  ")]
    assert len(rows) == 2
    for row in rows:  # the source cell: cut at a "/", the file name and line whole
        (cell,) = [token for token in row.split() if token.endswith(f"usermodel.py:{CONV_LINE}")]
        assert cell in (f".../usermodel.py:{CONV_LINE}", f".../a_rather_long_directory_name/usermodel.py:{CONV_LINE}")
    header = next(line for line in lines if line.startswith("graph breaks: "))
    listed = [line for line in lines if line[:2] == "  " and line[2:3].isdigit() and ". " in line]
    assert header.startswith(f"graph breaks: {len(listed)} (")
    assert len(listed) == 1 and f"usermodel.py:{NESTED_BREAK_LINE}" in listed[0]
    data = json.loads(out.read_text())["graph_breaks"]
    assert data["graph_breaks"] == len(data["reasons"]) == len(listed)
