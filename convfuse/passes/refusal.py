"""``Refusal``: why a site is left to eager, in words a user can act on, and its family."""

from __future__ import annotations


class Refusal(Exception):
    """This site is not provably a convolution convfuse can run; ``reason`` says why."""

    def __init__(self, reason: str, family: str = "unrecognised"):
        super().__init__(reason)
        self.reason = reason
        self.family = family
