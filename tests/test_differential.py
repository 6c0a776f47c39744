"""Differential testing (issue 3, item 6): random FFT-convolution programs and near misses.

Each program from ``tests/programs.py`` is compiled with convfuse (the rest of the graph eager)
and must equal eager in outputs and gradients (fp32: 1e-4 of the output's scale; fp16 inputs
upcast and cast back: 2.5e-3), must be rewritten exactly when it is a convolution (unless the
oracle expects a skip, ``Program.expected_skip``, whose reason the site must give), and every
skipped site must say why. 30% of the convolutions (``programs.FAMILY_SHARE``) are other spellings,
as many of each of ``programs.FAMILIES`` (full ffts, ifft().real, roll and index_select windows,
in-place products, sums of spectra, rfft2); the near misses are as many of each kind. What the
matcher does not support yet (``programs.PENDING``, ``Program.pending``) is not drawn here;
``python bench/differential.py --all`` runs it.

derandomize=True: CI draws the same programs on every run. The example counts keep this file
to well under 3 minutes on 2 cores (under a minute on an idle machine, 224 programs; a program costs
0.1-1.5 s: one Dynamo trace, forward, backward).
``python bench/differential.py`` runs 10,000.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import programs as P

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CONVOLUTIONS = 160  # in all: the plain spelling and, FAMILY_SHARE of them, an equal number per family
PER_FAMILY = round(CONVOLUTIONS * P.FAMILY_SHARE / len(P.FAMILIES))  # 7
PLAIN = CONVOLUTIONS - PER_FAMILY * len(P.FAMILIES)  # 111
PER_NEAR_MISS = 8  # 64 near misses


def _assert_no_mismatch(p: P.Program) -> None:
    mismatches = P.check(p)
    assert not mismatches, "\n".join(m.describe() for m in mismatches) + "\n\n" + P.render(p) + f"\n{p!r}"


@settings(max_examples=PLAIN, **SETTINGS)
@given(P.programs(near_misses=False, family=""))
def test_random_convolution_is_rewritten_and_matches_eager(p):
    _assert_no_mismatch(p)


@pytest.mark.parametrize("family", P.FAMILIES)
@settings(max_examples=PER_FAMILY, **SETTINGS)
@given(data=st.data())
def test_random_convolution_of_a_family_is_rewritten_and_matches_eager(family, data):
    """Each family in proportion (a share drawn at random would leave a rare one out of a CI run)."""
    _assert_no_mismatch(data.draw(P.programs(near_misses=False, family=family), label="program"))


@pytest.mark.parametrize("miss", P.NEAR_MISSES)
@settings(max_examples=PER_NEAR_MISS, **SETTINGS)
@given(data=st.data())
def test_random_near_miss_is_left_alone_with_a_reason(miss, data):
    p = data.draw(P.programs(miss=miss), label="program")
    assert not p.is_convolution
    _assert_no_mismatch(p)


def test_generator_covers_every_choice():
    """The random drawer reaches every layout, n choice, window, multiply, near miss and family."""
    seen = set()
    for seed in range(600):
        p = P.random_program(seed, pending=True)
        P.render(p)  # every drawn program renders
        seen.update({p.layout, p.n, p.window, p.mul, p.miss, p.family})
        seen.update(m for m in p.norms)
        seen.update(p.layout_ops + p.out_layout_ops)
    wanted = set(P.LAYOUT_OPS) | set(P.OUT_LAYOUT_OPS) | set(P.LAYOUTS) | set(P.N_CHOICES) | set(P.WINDOWS) | set(P.MULS) | set(P.NEAR_MISSES) \
        | set(P.FAMILIES) | set(P.PENDING) | set(P.NORMS)
    assert wanted <= seen, wanted - seen


def test_reproducer_points_at_the_generated_source():
    p = P.Program(batch=(2, 3), L=5, K=3, n="L+K-1", skip=True, gate=True)
    fn, src, filename = P.build(p)
    import linecache

    assert linecache.getline(filename, 1).startswith("def program(")
    assert "torch.fft.irfft" in src


def test_numerics_check_catches_a_wrong_value_and_tolerates_rounding_noise():
    import torch

    found = []

    def bad(kind, detail):
        found.append(detail)

    x = torch.randn(4, 16, dtype=torch.float64)
    exp = x.float()
    P.compare(bad, "wrong", exp * 1.001, exp, lambda: x, 1e-4)  # a 0.1% error is a mismatch
    assert len(found) == 1
    # an exact zero that eager computes as rounding noise of O(1) terms: any noise of that size passes
    zero = torch.zeros(4, 16, dtype=torch.float64)
    noise = torch.randn(4, 16) * 1e-7
    P.compare(bad, "noise", torch.randn(4, 16) * 1e-7, noise, lambda: zero, 1e-4)
    assert len(found) == 1
    P.compare(bad, "not noise", noise + 1e-3, noise, lambda: zero, 1e-4)
    assert len(found) == 2
