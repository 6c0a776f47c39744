"""convfuse's settings, in one place: ``convfuse.config``.

In the manner of ``torch._inductor.config``: each setting is an attribute of this module,
read where it is used, and changed for a while with ``patch``::

    from convfuse import config
    config.cpu_algo = "fft"                      # validated: a bad value raises, nothing changes
    with config.patch(kernel="reference"):       # or patch({"kernel": "reference"}), or as a decorator
        model = torch.compile(model, backend="convfuse")

Each setting starts from its environment variable, parsed once when this module is imported
(``from_environ``; a bad value fails the import with the variable's name), so ``CONVFUSE_KERNEL=cpu
python train.py`` keeps working; changing ``os.environ`` later changes nothing: use ``patch`` or
assignment.  Nothing else in convfuse reads the environment.

When each is read:
- at compile time: ``kernel``, ``cpu_no_gain_refusal``.  ``BackendOptions.parse`` takes a ``snapshot()`` of every setting
  once per compile (it is ``BackendOptions.settings``), and the compile reads that snapshot only;
  the kernel chosen is baked into the rewritten graph as the operator's ``kernel`` argument;
- per operator call: the others, which only say how an implementation runs a call (its algorithm,
  threads, precision of Triton's fp32 dots) or how much it may cache, never what it computes
  beyond floating point: runtime code reads this module's attributes at each call.

``patch`` and assignment change the process-wide value (as torch's config modules do): they are
not per thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

KERNELS = ("auto", "reference", "cpu", "triton")
CPU_ALGOS = ("fft", "direct", "ols")
FP32_DOT_CHOICES = ("tf32x3", "tf32", "ieee")
TRITON_WARPS = (1, 2, 4, 8, 16, 32)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class ConfigError(ValueError):
    """A setting given a value it does not take (from the environment, ``patch`` or assignment)."""


def parse_bool(text: str) -> bool:
    """The one reading of a boolean environment variable: 1/true/yes/on or 0/false/no/off/empty,
    any case (Triton reads TRITON_INTERPRET the same way)."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(_TRUE)} (true) or {', '.join(v for v in _FALSE if v)} (false)")


# ---- checks: value -> the value stored (normalised), or ValueError with what is expected


def _choice(choices: tuple, optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if optional and (value is None or value == ""):
            return None
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(map(repr, choices))}{' or None' if optional else ''}")

    return check


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("expected True or False")


def _warps(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in TRITON_WARPS:
        return value
    raise ValueError(f"expected one of {', '.join(map(str, TRITON_WARPS))}")


def _megabytes(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    raise ValueError("expected a finite number of MiB >= 0")


def _microseconds(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    raise ValueError("expected a finite number of microseconds >= 0")


def _setting(env: str, default: Any, check: Callable[[Any], Any], doc: str,
             parse: Callable[[str], Any] = lambda text: text) -> Any:
    """A field of ``Settings``: its environment variable, how its text is read, how values are checked."""
    return field(default=default, metadata={"env": env, "parse": parse, "check": check, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every setting's value at one moment (``snapshot()``); the fields are the settings."""

    kernel: str = _setting(
        "CONVFUSE_KERNEL", "auto", _choice(KERNELS),
        "the default of `options['kernel']`: which implementation a rewritten site runs (read at compile time)")
    cpu_algo: str | None = _setting(
        "CONVFUSE_CPU_ALGO", None, _choice(CPU_ALGOS, optional=True),
        "force the CPU algorithm (`fft`, `direct`, `ols`) where it is valid; unset: the cost model picks")
    cpu_cache_mb: float = _setting(
        "CONVFUSE_CPU_CACHE_MB", 256.0, _megabytes,
        "MiB of constant-kernel spectra the CPU path may cache", parse=float)
    cpu_cache_min_us: float = _setting(
        "CONVFUSE_CPU_CACHE_MIN_US", 300.0, _microseconds,
        "a constant kernel's spectrum is cached only where the cost model predicts its transform takes at "
        "least this long (a cached call compares the kernel's bits and runs in Python, not the C++ small-call "
        "kernels: ~100-220 us more a call at 2K-32K kernel samples); 0: always",
        parse=float)
    cpu_no_gain_refusal: bool = _setting(
        "CONVFUSE_CPU_NO_GAIN_REFUSAL", True, _bool,
        "with kernel='auto', a static-shape CPU site the cost model predicts no faster fused stays eager code "
        "(\"no gain at this size\" in the report; read at compile time)", parse=parse_bool)
    native_cpu: bool = _setting(
        "CONVFUSE_NATIVE_CPU", True, _bool,
        "small CPU calls of `fft_conv` run from C++ (built once per torch version with the system's C++ "
        "compiler, cached under ~/.cache/convfuse; read at import to build, per call after)", parse=parse_bool)
    nd_cpu: bool = _setting(
        "CONVFUSE_ND_CPU", True, _bool,
        "`fft_convnd` runs its CPU implementation on CPU tensors (false: the torch.fft reference)", parse=parse_bool)
    triton_interpret: bool = _setting(
        "TRITON_INTERPRET", False, _bool,
        "let kernel='triton' run CPU tensors in the Triton interpreter (tests only, ~1000x slower)", parse=parse_bool)
    triton_warps: int = _setting(
        "CONVFUSE_TRITON_WARPS", 4, _warps, "warps per Triton program", parse=int)
    triton_fp32_dot: str = _setting(
        "CONVFUSE_TRITON_FP32_DOT", "tf32x3", _choice(FP32_DOT_CHOICES),
        "precision of Triton's dots on fp32 operands: `tf32x3` (~fp32 accuracy), `tf32`, `ieee`")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name)))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Settings)}
NAMES: tuple[str, ...] = tuple(_FIELDS)


def _checked(name: str, value: Any) -> Any:
    f = _FIELDS.get(name)
    if f is None:
        raise ConfigError(f"convfuse.config has no setting {name!r}; the settings are {', '.join(NAMES)}")
    try:
        return f.metadata["check"](value)
    except ValueError as exc:
        raise ConfigError(f"convfuse.config.{name}={value!r}: {exc}") from None


def describe() -> list[tuple[str, str, Any, str]]:
    """(name, environment variable, default, meaning) of every setting (the README's table)."""
    return [(name, f.metadata["env"], f.default, f.metadata["doc"]) for name, f in _FIELDS.items()]


def from_environ(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings an environment gives (``os.environ`` by default): each variable that is set
    and not empty, parsed and checked; the defaults for the rest.  Raises ConfigError naming the
    variable for a value it cannot read."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, f in _FIELDS.items():
        env = f.metadata["env"]
        text = environ.get(env)
        if text is None or not text.strip():
            continue
        try:
            values[name] = f.metadata["check"](f.metadata["parse"](text))
        except ValueError as exc:
            raise ConfigError(f"{env}={text!r} (convfuse.config.{name}): {exc}") from None
    return Settings(**values)


def snapshot() -> Settings:
    """Every setting's current value, frozen: what a compile reads (``BackendOptions.settings``)."""
    module = sys.modules[__name__]
    return Settings(**{name: module.__dict__[name] for name in NAMES})


def _normalise(changes: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _checked(name, value) for name, value in changes.items()}


class patch(contextlib.ContextDecorator):
    """Change settings for a ``with`` block or a decorated function, then put them back.

    ``patch(kernel="cpu")``, ``patch({"kernel": "cpu"})`` or ``patch("kernel", "cpu")``, as in
    ``torch._inductor.config.patch``.  Every name and value is checked when the patch is made,
    so a bad one raises before anything changes.  Patches nest; each restores what it found.
    """

    def __init__(self, arg: str | Mapping[str, Any] | None = None, value: Any = None, **changes: Any):
        if isinstance(arg, str):
            changes = {arg: value, **changes}
        elif arg is not None:
            changes = {**arg, **changes}
        self.changes = _normalise(changes)
        self._saved: list[dict[str, Any]] = []

    def _recreate_cm(self) -> "patch":
        return patch(self.changes)  # a decorated function may run on several threads, or recurse

    def __enter__(self) -> "patch":
        module = sys.modules[__name__]
        self._saved.append({name: module.__dict__[name] for name in self.changes})
        module.__dict__.update(self.changes)
        _changed()
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.modules[__name__].__dict__.update(self._saved.pop())
        _changed()


# Called after any setting changes (assignment or patch): state derived from settings that is
# not keyed by them (the native CPU plan table) is dropped there.
_listeners: list[Callable[[], None]] = []


def on_change(listener: Callable[[], None]) -> None:
    _listeners.append(listener)


def _changed() -> None:
    for listener in _listeners:
        listener()


class _ConfigModule(types.ModuleType):
    """This module's class: assigning a setting checks it first (``config.kernel = "bogus"`` raises),
    and a name that is not a setting is refused (``config.cpu_algos = "fft"`` would change nothing)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIELDS:
            value = _checked(name, value)
        elif name not in self.__dict__ and not name.startswith("_"):
            _checked(name, value)  # raises: no such setting
        super().__setattr__(name, value)
        if name in _FIELDS:
            _changed()

@dataclass(frozen=True)
class Toolchain:
    """What the native CPU kernels' build reads from the standard (not convfuse) variables:
    ``$CXX`` (the compiler asked for; None: ``c++``, ``g++`` or ``clang++`` on PATH) and the cache
    root (``$XDG_CACHE_HOME``, else ``~/.cache``).  Read once, at import, with the settings."""

    cxx: str | None
    cache_root: str


def _toolchain_from(environ: Mapping[str, str]) -> Toolchain:
    return Toolchain(cxx=(environ.get("CXX") or "").strip() or None,
                     cache_root=environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"))


toolchain = _toolchain_from(os.environ)

# The settings, from the environment, once.
globals().update(from_environ().as_dict())
kernel: str
cpu_algo: str | None
cpu_cache_mb: float
cpu_cache_min_us: float
cpu_no_gain_refusal: bool
native_cpu: bool
nd_cpu: bool
triton_interpret: bool
triton_warps: int
triton_fp32_dot: str

sys.modules[__name__].__class__ = _ConfigModule
