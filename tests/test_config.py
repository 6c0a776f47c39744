"""convfuse.config: typed settings, read from the environment once, changed with patch()."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import torch

import convfuse
from convfuse import config
from convfuse.backends.dispatch import KernelUnavailable, choose_kernel
from convfuse.options import BackendOptions

ROOT = Path(__file__).resolve().parents[1]


def test_patch_as_context_manager_decorator_and_dict_nests_and_restores():
    before = config.snapshot()
    with config.patch(kernel="CPU", cpu_algo="fft") as p:
        assert (config.kernel, config.cpu_algo) == ("cpu", "fft")  # normalised like the environment
        with config.patch({"cpu_algo": "direct"}), config.patch("triton_warps", 8):
            assert (config.kernel, config.cpu_algo, config.triton_warps) == ("cpu", "direct", 8)
        assert (config.cpu_algo, config.triton_warps) == ("fft", 4)
        assert p.changes == {"kernel": "cpu", "cpu_algo": "fft"}
    assert config.snapshot() == before

    @config.patch(nd_cpu=False)
    def inside(depth: int) -> list[bool]:
        return [config.nd_cpu] + (inside(depth - 1) if depth else [])

    assert inside(2) == [False, False, False] and config.nd_cpu is True


def test_patch_restores_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with config.patch(cpu_cache_mb=1):
            raise RuntimeError
    assert config.cpu_cache_mb == 256.0


@pytest.mark.parametrize("name,value,expected", [
    ("kernel", "cuda-magic", "expected one of 'auto', 'reference', 'cpu', 'triton'"),
    ("cpu_algo", "fast", "expected one of 'fft', 'direct', 'ols' or None"),
    ("cpu_cache_mb", -1, ">= 0"),
    ("cpu_cache_mb", float("nan"), ">= 0"),
    ("nd_cpu", "0", "True or False"),
    ("triton_interpret", 1, "True or False"),
    ("triton_warps", 3, "1, 2, 4, 8, 16, 32"),
    ("triton_warps", True, "1, 2, 4, 8, 16, 32"),
    ("triton_fp32_dot", "bf16", "'tf32x3', 'tf32', 'ieee'"),
])
def test_bad_values_are_refused_before_anything_changes(name, value, expected):
    before = config.snapshot()
    with pytest.raises(config.ConfigError, match=re.escape(expected)):
        config.patch(name, value)
    with pytest.raises(config.ConfigError, match=f"convfuse.config.{name}="):
        setattr(config, name, value)
    with pytest.raises(config.ConfigError):  # the good change is not applied either
        config.patch({"triton_warps": 8, name: value} if name != "triton_warps" else {"kernel": "cpu", name: value})
    assert config.snapshot() == before


def test_unknown_names_are_refused():
    with pytest.raises(config.ConfigError, match="no setting 'cpu_algos'.*kernel, cpu_algo"):
        config.patch(cpu_algos="fft")
    with pytest.raises(config.ConfigError, match="no setting"):
        config.cpu_algos = "fft"  # a typo would otherwise change nothing, silently
    assert not hasattr(config, "cpu_algos")


def test_assignment_and_monkeypatch_are_checked_and_restored(monkeypatch):
    monkeypatch.setattr(config, "cpu_algo", "ols")
    assert config.cpu_algo == "ols" and config.snapshot().cpu_algo == "ols"
    monkeypatch.undo()
    assert config.cpu_algo is None


def test_the_environment_is_parsed_one_way():
    parse = config.from_environ
    for text in ("1", "true", "TRUE", " yes ", "On"):
        assert parse({"TRITON_INTERPRET": text}).triton_interpret is True
    for text in ("0", "false", "No", "off", "", "  "):
        assert parse({"TRITON_INTERPRET": text}).triton_interpret is False
    assert parse({"CONVFUSE_ND_CPU": "0"}).nd_cpu is False and parse({"CONVFUSE_ND_CPU": ""}).nd_cpu is True
    got = parse({"CONVFUSE_KERNEL": " CPU ", "CONVFUSE_CPU_ALGO": "Direct", "CONVFUSE_CPU_CACHE_MB": "0.5",
                 "CONVFUSE_TRITON_WARPS": "8", "CONVFUSE_TRITON_FP32_DOT": "tf32", "UNRELATED": "x"})
    assert got == config.Settings(kernel="cpu", cpu_algo="direct", cpu_cache_mb=0.5, triton_warps=8,
                                  triton_fp32_dot="tf32")
    assert parse({}) == config.Settings()
    for env, text in [("TRITON_INTERPRET", "maybe"), ("CONVFUSE_TRITON_WARPS", "four"),
                      ("CONVFUSE_CPU_CACHE_MB", "lots"), ("CONVFUSE_KERNEL", "bogus"), ("CONVFUSE_TRITON_WARPS", "6")]:
        with pytest.raises(config.ConfigError, match=re.escape(f"{env}={text!r}")):
            parse({env: text})


def test_a_compile_reads_a_snapshot_and_runtime_code_reads_the_module():
    with config.patch(kernel="reference", cpu_algo="direct"):
        opts = BackendOptions.parse(None)
    assert opts.kernel == "reference" and opts.settings.cpu_algo == "direct"
    assert config.kernel == "auto" and BackendOptions.parse(None).kernel == "auto"
    with pytest.raises(KernelUnavailable, match="interpreter"):
        with config.patch(triton_interpret=False):
            choose_kernel("triton", "cpu")


def test_the_cpu_algorithm_setting_reaches_the_operator():
    from convfuse.backends.cpu import plan_for
    from convfuse.spec import ConvParams

    p = ConvParams(2048, 0, 1024)
    assert plan_for(p, 1024, 1024).algo == "fft"
    with config.patch(cpu_algo="direct"):
        assert plan_for(p, 1024, 1024).algo == "direct"
        u, k = torch.randn(2, 3, 1024, dtype=torch.float64), torch.randn(3, 1024, dtype=torch.float64)
        got = torch.ops.convfuse.fft_conv(u, k, None, None, None, 2048, 0, 1024, 1.0, 0.0, False, torch.float64,
                                          "cpu")
    want = torch.ops.convfuse.fft_conv(u, k, None, None, None, 2048, 0, 1024, 1.0, 0.0, False, torch.float64,
                                       "reference")
    torch.testing.assert_close(got, want)


def test_nothing_else_reads_the_environment():
    readers = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "convfuse").rglob("*.py"))
               if path.name != "config.py" and re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text())]
    assert readers == []


def test_the_readme_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    for name, env, default, _ in config.describe():
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}` | `{env}` |")]
        assert len(rows) == 1, name


def test_patch_is_visible_to_other_threads():
    # Settings are process-wide (as torch's config modules): a pool thread sees the patch.
    seen = []
    with config.patch(cpu_algo="ols"):
        t = threading.Thread(target=lambda: seen.append(config.cpu_algo))
        t.start()
        t.join()
    assert seen == ["ols"]
    assert convfuse.config is config
