"""Rewrite policies: how exact each rewritten site must be.

``Exact`` (the default) keeps every result equal to eager up to float rounding.
The approximate policies (partial kernels, frequency sparsity, an error-budget
auto mode) are validated dataclasses of the same shape; until they land, asking
for one is an error rather than a silent exact run presented as sparse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Exact:
    """Rewrite only into an operator that computes the same function up to float rounding."""

    name = "exact"

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.name, **asdict(self)}

    def __str__(self) -> str:
        return self.name


Policy = Exact
POLICIES: dict[str, type] = {"exact": Exact}


def parse_policy(value: Any) -> Policy:
    """A policy object from a policy instance or its name."""
    if value is None:
        return Exact()
    if isinstance(value, Exact):
        return value
    if isinstance(value, str) and value.strip().lower() in POLICIES:
        return POLICIES[value.strip().lower()]()
    raise ValueError(
        f"convfuse: unknown policy {value!r}; available: {', '.join(POLICIES)} "
        "(pass an instance such as convfuse.Exact())"
    )
