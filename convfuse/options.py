"""The backend's options: torch.compile(..., backend="convfuse", options={...}, mode=...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from convfuse import config
from convfuse.backends.dispatch import KERNELS
from convfuse.policies import Policy, parse_policy
from convfuse.scope import check_scope, parse_module_policies

INNER_COMPILERS = ("inductor", "aot_eager", "eager")


@dataclass(frozen=True)
class BackendOptions:
    policy: Policy
    kernel: str = "auto"  # auto | reference | cpu | triton (convfuse.config.kernel is the default)
    inner: str = "inductor"  # what compiles the rest of the graph
    mode: str | None = None  # torch.compile mode, handed to inductor
    inductor: dict[str, Any] = field(default_factory=dict)  # other keys: inductor config patches
    scope: str = "all"  # "all" | "marked": only sites inside convfuse.region(...) marks (convfuse/scope.py)
    module_policies: tuple = ()  # ((module name pattern, policy), ...) from {"blocks.0": policy}
    # convfuse.config as this compile read it, once (convfuse/config.py): the compile reads this
    settings: config.Settings = field(default_factory=config.snapshot)

    @staticmethod
    def parse(options: dict[str, Any] | None, mode: str | None = None) -> "BackendOptions":
        settings = config.snapshot()
        options = dict(options or {})
        policy = parse_policy(options.pop("policy", None))
        scope = check_scope(options.pop("scope", None))
        module_policies = parse_module_policies(options.pop("module_policies", None))
        kernel = str(options.pop("kernel", None) or settings.kernel).lower()
        if kernel not in KERNELS:
            raise ValueError(f"convfuse: options['kernel']={kernel!r}; expected one of {', '.join(KERNELS)}")
        inner = str(options.pop("inner", "inductor")).lower()
        if inner not in INNER_COMPILERS:
            raise ValueError(f"convfuse: options['inner']={inner!r}; expected one of {', '.join(INNER_COMPILERS)}")
        if options:
            from torch._inductor import config as inductor_config

            unknown = sorted(k for k in options if not hasattr(inductor_config, k))
            if unknown:
                raise ValueError(
                    f"convfuse: unknown option(s) {', '.join(unknown)}; convfuse takes policy, scope, module_policies, "
                    "kernel, inner, "
                    "and inductor config keys"
                )
            if inner != "inductor":
                raise ValueError(f"convfuse: inductor options {sorted(options)} given with inner={inner!r}")
        return BackendOptions(policy=policy, kernel=kernel, inner=inner, mode=mode, inductor=options, scope=scope,
                              module_policies=module_policies, settings=settings)
