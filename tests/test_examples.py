"""Every example model compiles with convfuse, matches eager (outputs and parameter gradients),
and its report shows its convolution sites rewritten."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from conftest import Compiled, assert_close_rel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.models import MODELS  # noqa: E402

NOT_YET: dict[str, str] = {}  # model name -> why its sites are expected to stay skipped


@pytest.mark.parametrize("name", list(MODELS))
def test_example_matches_eager_and_is_rewritten(name):
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    twin = copy.deepcopy(model)
    compiled = Compiled(twin)
    expected, got = model(*inputs), compiled(*inputs)
    assert_close_rel(got, expected, 1e-4)
    expected.square().sum().backward()
    got.square().sum().backward()
    for (pname, p), q in zip(model.named_parameters(), twin.parameters()):
        assert (p.grad is None) == (q.grad is None), pname
        if p.grad is not None:
            assert_close_rel(q.grad, p.grad, 1e-3)
    sites = compiled.report.sites
    assert sites, "no FFT site found"
    for site in sites:
        assert site.source.split(":")[0].endswith((".py",)), site.source
        if name in NOT_YET:
            assert site.status == "skipped" and site.reason
        else:
            assert site.status == "rewritten", site.line()
            assert site.pattern and site.kernel
