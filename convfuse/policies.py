"""Rewrite policies: how exact each rewritten site must be.

``Exact`` (the default) keeps every result equal to eager up to float rounding.  The
approximate policies change *what* is computed, by a definition written in plain torch
(the rewrite puts that definition in the graph, so forward, gradients and every kernel
follow it):

- ``PartialKernel(length=K)``: the convolution with the kernel's first ``K`` taps along
  the convolved axis (taps ``K`` and beyond are zero): ``conv(u, k[..., :K])``.
  ``fraction=f`` keeps ``ceil(f * K_total)`` taps instead.  A length at least the
  kernel's is the exact convolution, and the report says so.
- ``FrequencySparse(bins=M)``: the convolution whose kernel spectrum at the site's FFT
  size ``n`` keeps its lowest ``M`` one-sided bins, the rest zeroed:
  ``k' = irfft(rfft(k, n)[..., :M], n)`` (irfft zero-pads the missing bins).
  ``keep=f`` keeps ``ceil(f * (n // 2 + 1))`` bins.
- ``Auto(max_rel_error=e)``: for a site whose kernel is a parameter or buffer, the most
  aggressive partial length or frequency cut whose relative output error on the example
  inputs, and whose relative change of the kernel itself, both stay within ``e``; else
  ``Exact``.

Policies are frozen dataclasses, validated when built, and serialisable both ways:
``str(p)`` / ``p.to_dict()`` and ``parse_policy("partial:length=1024")``,
``parse_policy({"policy": "freq", "keep": 0.25})``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Union


class PolicyError(ValueError):
    """A policy that cannot be built or cannot be parsed."""


def _check_length(cls: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"convfuse.{cls}: {name} must be a positive integer, got {value!r}")
    if value < 1:
        raise PolicyError(f"convfuse.{cls}: {name} must be >= 1, got {value}")


def _check_fraction(cls: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"convfuse.{cls}: {name} must be a number in (0, 1], got {value!r}")
    if not (0 < value <= 1) or math.isnan(value):
        raise PolicyError(f"convfuse.{cls}: {name} must be in (0, 1], got {value}")


def _one_of(cls: str, a: str, va: Any, b: str, vb: Any) -> None:
    if (va is None) == (vb is None):
        got = "both" if va is not None else "neither"
        raise PolicyError(f"convfuse.{cls}: give exactly one of {a}= or {b}= (got {got})")


class _Base:
    name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        d = {"policy": self.name}
        d.update({f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None})
        return d

    def __str__(self) -> str:
        args = ",".join(f"{k}={_fmt(v)}" for k, v in self.to_dict().items() if k != "policy")
        return f"{self.name}:{args}" if args else self.name

    @property
    def exact(self) -> bool:
        return False


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Exact(_Base):
    """Rewrite only into an operator that computes the same function up to float rounding."""

    name: ClassVar[str] = "exact"

    @property
    def exact(self) -> bool:
        return True


@dataclass(frozen=True)
class PartialKernel(_Base):
    """The convolution with the kernel's first ``length`` taps (or ``ceil(fraction * K)``)."""

    length: int | None = None
    fraction: float | None = None
    name: ClassVar[str] = "partial"

    def __post_init__(self) -> None:
        _one_of("PartialKernel", "length", self.length, "fraction", self.fraction)
        if self.length is not None:
            _check_length("PartialKernel", "length", self.length)
        else:
            _check_fraction("PartialKernel", "fraction", self.fraction)
            object.__setattr__(self, "fraction", float(self.fraction))

    def taps(self, K: int) -> int:
        """How many taps of a length-``K`` kernel are kept (``K``: nothing is dropped)."""
        if self.length is not None:
            return min(self.length, K)
        return min(K, max(1, math.ceil(self.fraction * K)))


@dataclass(frozen=True)
class FrequencySparse(_Base):
    """The convolution whose kernel spectrum keeps its lowest ``bins`` one-sided bins
    (or ``ceil(keep * (n // 2 + 1))``); the other bins are zero."""

    bins: int | None = None
    keep: float | None = None
    name: ClassVar[str] = "freq"

    def __post_init__(self) -> None:
        _one_of("FrequencySparse", "bins", self.bins, "keep", self.keep)
        if self.bins is not None:
            _check_length("FrequencySparse", "bins", self.bins)
        else:
            _check_fraction("FrequencySparse", "keep", self.keep)
            object.__setattr__(self, "keep", float(self.keep))

    def kept_bins(self, n: int) -> int:
        """How many of the ``n // 2 + 1`` one-sided bins at FFT size ``n`` are kept."""
        total = n // 2 + 1
        if self.bins is not None:
            return min(self.bins, total)
        return min(total, max(1, math.ceil(self.keep * total)))


@dataclass(frozen=True)
class Auto(_Base):
    """Per site with a constant kernel: the cheapest partial length or frequency cut whose
    relative error (on the example output and on the kernel) is at most ``max_rel_error``."""

    max_rel_error: float = 1e-3
    name: ClassVar[str] = "auto"

    def __post_init__(self) -> None:
        e = self.max_rel_error
        if isinstance(e, bool) or not isinstance(e, (int, float)) or math.isnan(e) or not 0 < e < 1:
            raise PolicyError(f"convfuse.Auto: max_rel_error must be a number in (0, 1), got {e!r}")
        object.__setattr__(self, "max_rel_error", float(e))


Policy = Union[Exact, PartialKernel, FrequencySparse, Auto]
POLICY_TYPES = (Exact, PartialKernel, FrequencySparse, Auto)
POLICIES: dict[str, type] = {
    "exact": Exact,
    "partial": PartialKernel, "partial_kernel": PartialKernel, "partialkernel": PartialKernel,
    "freq": FrequencySparse, "frequency": FrequencySparse, "frequency_sparse": FrequencySparse,
    "frequencysparse": FrequencySparse,
    "auto": Auto,
}


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise PolicyError(f"convfuse: policy argument {text!r} is not a number") from None


def _build(kind: str, kwargs: dict[str, Any], origin: Any) -> Policy:
    cls = POLICIES.get(kind.strip().lower())
    if cls is None:
        raise PolicyError(
            f"convfuse: unknown policy {origin!r}; available: exact, partial:length=K|fraction=F, "
            "freq:bins=M|keep=F, auto:max_rel_error=E"
        )
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise PolicyError(
            f"convfuse: policy {origin!r}: {cls.__name__} takes {', '.join(sorted(allowed)) or 'no arguments'}, "
            f"not {', '.join(unknown)}"
        )
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - fields checked above
        raise PolicyError(f"convfuse: policy {origin!r}: {exc}") from None


def parse_policy(value: Any) -> Policy:
    """A policy from an instance, its text (``"partial:length=1024"``, ``"freq:keep=0.25"``,
    ``"auto:max_rel_error=1e-3"``, ``"exact"``) or its ``to_dict()``; None is ``Exact()``."""
    if value is None:
        return Exact()
    if isinstance(value, POLICY_TYPES):
        return value
    if isinstance(value, type) and issubclass(value, POLICY_TYPES):
        raise PolicyError(f"convfuse: pass a policy instance such as {value.__name__}(...), not the class")
    if isinstance(value, dict):
        kwargs = dict(value)
        kind = kwargs.pop("policy", None)
        if not isinstance(kind, str):
            raise PolicyError(f"convfuse: policy dict {value!r} needs a 'policy' name")
        return _build(kind, kwargs, value)
    if isinstance(value, str):
        kind, _, rest = value.strip().partition(":")
        kwargs: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, text = item.partition("=")
            if not eq or not key.strip():
                raise PolicyError(f"convfuse: policy {value!r}: expected key=value, got {item!r}")
            if key.strip() in kwargs:
                raise PolicyError(f"convfuse: policy {value!r}: {key.strip()} given twice")
            kwargs[key.strip()] = _number(text.strip())
        return _build(kind, kwargs, value)
    raise PolicyError(
        f"convfuse: unknown policy {value!r}; pass a policy (convfuse.Exact(), convfuse.PartialKernel(length=K), "
        "convfuse.FrequencySparse(keep=F), convfuse.Auto(max_rel_error=E)) or its text such as 'partial:length=1024'"
    )
