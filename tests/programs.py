"""Random FFT-convolution programs for differential testing (issue 3, item 6).

``import programs as P`` gives the whole generator; it lives in four modules:

- ``programs_record``: the choices, ``Program`` (a plain record of them: layout, rank, lengths, FFT
  size, norm modes, scales, casts, conj, window, skip, gate, multiply spelling, family, dynamic
  shapes, at most one near-miss mutation), its validity and the oracle (``is_convolution``,
  ``expected_skip``);
- ``programs_draw``: drawing programs, under hypothesis (``programs()``, shrinks) and under
  ``random.Random`` (``random_program(seed)``, used by bench/differential.py to run thousands
  reproducibly);
- ``programs_source``: input shapes and tensors, ``render`` (Python source) and ``build`` (exec'd
  under a file name registered in ``linecache``, so tracebacks and the report point at the line);
- ``programs_check``: ``check`` (compiled with convfuse, compared with eager and with the oracle),
  ``Mismatch`` and ``reproducer``.

Families of ``FAMILIES`` are drawn in every run; those of ``PENDING`` (not supported by the matcher
yet) only with ``pending=True``.
"""

from __future__ import annotations

from programs_check import FP32_EPS, Mismatch, as_dict, check, compare, fused_calls, reproducer
from programs_draw import FAMILY_SHARE, Chooser, draw_program, programs, random_program
from programs_record import (CASTS, FAMILIES, LAYOUT_OPS, LAYOUTS, LENGTHS, OUT_LAYOUT_OPS, MULS, N_CHOICES, NEAR_MISSES, NORMS, PENDING,
                             SCALE_FORMS, SCALE_WHERE, WINDOWS, Program, check_valid)
from programs_source import build, make_inputs, render, shapes

__all__ = [
    "CASTS", "FAMILIES", "LAYOUT_OPS", "OUT_LAYOUT_OPS", "LAYOUTS", "LENGTHS", "MULS", "N_CHOICES", "NEAR_MISSES", "NORMS", "PENDING",
    "SCALE_FORMS", "SCALE_WHERE", "WINDOWS", "Program", "check_valid",
    "FAMILY_SHARE", "Chooser", "draw_program", "programs", "random_program",
    "build", "make_inputs", "render", "shapes",
    "FP32_EPS", "Mismatch", "as_dict", "check", "compare", "fused_calls", "reproducer",
]
