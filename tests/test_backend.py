"""The backend as users reach it: entry point, options, environment, logging, end to end with Inductor."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import convfuse
import spellings as sp
from conftest import Compiled, assert_close_rel
from convfuse import config
from convfuse.options import BackendOptions
from convfuse.report import collecting

REPO = Path(__file__).resolve().parents[1]


def test_backend_name_works_in_a_fresh_interpreter_without_importing_convfuse():
    code = textwrap.dedent("""
        import sys, torch
        def f(u, k):
            L = u.shape[-1]
            y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)
            return y[..., :L]
        u, k = torch.randn(2, 4, 16), torch.randn(4, 16)
        out = torch.compile(f, backend="convfuse", options={"inner": "eager"})(u, k)
        assert "convfuse" in sys.modules  # loaded through the torch_dynamo_backends entry point
        print(float((out - f(u, k)).abs().max()))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


def _gelu_hyena(u, k, D):
    return torch.nn.functional.gelu(sp.hyena_fftconv(u, k, D)) * 2  # work left for Inductor


@pytest.mark.parametrize("fn, inductor", [(_gelu_hyena, True), (sp.hyena_fftconv, False)], ids=["gelu", "alone"])
def test_hyena_end_to_end_with_inductor_matches_eager_forward_and_grads(fn, inductor, caplog):
    """Default options: Inductor compiles what the rewrite leaves, unless that is only views of
    the fused operator's operands (then the graph runs as captured: nothing to fuse)."""
    torch.manual_seed(0)
    args = [torch.randn(2, 8, 64, requires_grad=True), torch.randn(8, 64, requires_grad=True),
            torch.randn(8, requires_grad=True)]
    compiled = torch.compile(fn, backend="convfuse")
    eager_args = [a.detach().clone().requires_grad_() for a in args]
    with caplog.at_level(logging.INFO, logger="convfuse"), collecting() as report:
        got = compiled(*args)
    expected = fn(*eager_args)
    assert report.rewritten, str(report)
    assert ("run as captured" in caplog.text) != inductor, caplog.text
    assert_close_rel(got, expected, 1e-5)
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, args, g), torch.autograd.grad(expected, eager_args, g)):
        assert_close_rel(a, b, 1e-5)


def test_options_are_validated():
    assert BackendOptions.parse({"kernel": "reference"}).kernel == "reference"
    assert BackendOptions.parse({"policy": "exact"}).policy == convfuse.Exact()
    with pytest.raises(ValueError, match="kernel"):
        BackendOptions.parse({"kernel": "cuda-magic"})
    with pytest.raises(ValueError, match="unknown option"):
        BackendOptions.parse({"polcy": "exact"})
    with pytest.raises(ValueError, match="unknown policy"):
        BackendOptions.parse({"policy": "sparse-please"})
    assert BackendOptions.parse({"max_autotune": True}).inductor == {"max_autotune": True}


def test_config_sets_the_default_kernel_read_once_per_compile():
    with config.patch(kernel="reference"):
        opts = BackendOptions.parse(None)
        compiled = Compiled(sp.s4_mul)
        compiled(torch.randn(2, 4, 16), torch.randn(4, 16))
    assert opts.kernel == "reference" and opts.settings.kernel == "reference"
    assert compiled.report.sites[0].kernel == "reference"
    assert BackendOptions.parse(None).settings == config.snapshot()  # the patch is gone
    with pytest.raises(ValueError, match="kernel"):
        config.patch(kernel="bogus")


def test_environment_sets_the_settings_at_import():
    # The environment is read once, when convfuse.config is imported: a fresh interpreter.
    code = textwrap.dedent("""
        import torch, convfuse
        from convfuse import config
        from convfuse.options import BackendOptions
        s = BackendOptions.parse(None)
        print(s.kernel, config.triton_interpret, config.cpu_algo, config.cpu_cache_mb, config.nd_cpu,
              config.triton_warps, config.triton_fp32_dot)
    """)
    env = dict(os.environ, CONVFUSE_KERNEL="Reference", TRITON_INTERPRET="true", CONVFUSE_CPU_ALGO="ols",
               CONVFUSE_CPU_CACHE_MB="1.5", CONVFUSE_ND_CPU="0", CONVFUSE_TRITON_WARPS="8",
               CONVFUSE_TRITON_FP32_DOT="ieee", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["reference", "True", "ols", "1.5", "False", "8", "ieee"]
    # A value a setting does not take fails the import, naming the variable.
    env["CONVFUSE_KERNEL"] = "bogus"
    result = subprocess.run([sys.executable, "-c", "import convfuse"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode != 0 and "CONVFUSE_KERNEL='bogus'" in result.stderr


def test_unavailable_kernel_is_a_skip_with_a_reason_not_a_crash():
    compiled = Compiled(sp.s4_mul, kernel="triton")
    u, k = torch.randn(2, 4, 16), torch.randn(4, 16)
    torch.testing.assert_close(compiled(u, k), sp.s4_mul(u, k))
    site = compiled.report.sites[0]
    if site.status == "skipped":  # Triton cannot run here (no GPU, no interpreter)
        assert "triton" in site.reason.lower()
    else:
        assert site.kernel == "triton"


def test_mode_is_accepted():
    f = torch.compile(sp.s4_mul, backend="convfuse", mode="max-autotune-no-cudagraphs")
    u, k = torch.randn(2, 4, 16), torch.randn(4, 16)
    torch.testing.assert_close(f(u, k), sp.s4_mul(u, k), rtol=1e-5, atol=1e-5)


def test_explain_report_api():
    report = convfuse.explain(sp.hyena_fftconv, torch.randn(2, 4, 16), torch.randn(4, 16), torch.randn(4))
    (site,) = report.sites
    assert site.status == "rewritten" and site.reason == "" and site.pattern == "causal-conv"
    assert "spellings.py:" in site.source
    d = site.to_dict()
    assert d["spec"]["n"] == 32 and d["spec"]["skip"] is True and d["kernel"].startswith("cpu") and d["policy"] == "exact"
    assert '"rewritten"' in report.to_json() and "1 FFT site, 1 rewritten (100%)" in str(report)
    skipped = convfuse.explain(sp.real_mask_filter, torch.randn(2, 4, 16), torch.randn(4, 17))
    assert skipped.sites[0].status == "skipped" and skipped.sites[0].reason


def test_constant_kernel_is_detected_for_parameters():
    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = torch.nn.Parameter(torch.randn(4, 16))

        def forward(self, u):
            return sp.s4_mul(u, self.k)

    report = convfuse.explain(Conv(), torch.randn(2, 4, 16))
    assert report.sites[0].spec.constant_kernel
    report = convfuse.explain(sp.s4_mul, torch.randn(2, 4, 16), torch.randn(4, 16))
    assert not report.sites[0].spec.constant_kernel


def test_rewrites_and_skips_are_logged(caplog):
    with caplog.at_level(logging.INFO, logger="convfuse"):
        convfuse.explain(sp.hyena_fftconv, torch.randn(2, 4, 16), torch.randn(4, 16), torch.randn(4))
        convfuse.explain(sp.real_mask_filter, torch.randn(2, 4, 16), torch.randn(4, 17))
    text = caplog.text
    assert "[rewritten] causal-conv" in text and "[skipped] spectral-filter" in text


def test_torch_logs_shows_convfuse():
    code = "import torch, convfuse, tests_spellings as sp; convfuse.explain(sp.s4_mul, torch.randn(2, 4, 16), torch.randn(4, 16))"
    env = dict(os.environ, TORCH_LOGS="+convfuse", PYTHONPATH=os.path.dirname(__file__))
    code = code.replace("tests_spellings", "spellings")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[rewritten]" in result.stderr
