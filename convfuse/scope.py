"""Which sites a compile rewrites, and with which policy.

Three ways to say it, from coarse to fine:

1. ``options={"policy": P}``: every site (the default scope ``"all"``).
2. ``@convfuse.region(P)`` on a module class, a module instance or a function marks a
   convfuse region with its policy (``P`` omitted: the compile's policy).  With
   ``options={"scope": "marked"}`` only sites inside marked regions are rewritten; the
   others are left to eager and reported as out of scope.
3. ``options={"module_policies": {"blocks.0": P0, "blocks.1.*": P1}}``: per module, a
   mapping from qualified module names (as ``model.named_modules()`` spells them;
   ``fnmatch`` patterns allowed) to policies.

Why a name -> policy mapping and not ``filter_fn(module, name)`` + one policy: a mapping
gives several modules several policies in one compile (a filter selects one set for one
policy); it is plain data, so it goes through ``torch.compile(options=...)``, the CLI
and the JSON report unchanged, and the report can say which entry chose a policy; and
the backend only sees the FX graph, where a module is a name and a class from
``nn_module_stack`` (not the instance a filter would expect).

Which policy a site gets (first that applies): the innermost module whose name matches a
``module_policies`` entry (the most specific entry among several matching the same module:
an exact name, else the longest pattern); then the innermost marked region with a policy (function
regions before module regions); then the compile's ``policy``.

How regions are found in the graph: a module class or instance is found through
``node.meta["nn_module_stack"]`` (values are ``(path, class)``; marking an instance
swaps its ``__class__`` for a marked subclass so that the class there says so), a
function through the frames of ``node.meta["stack_trace"]`` that fall in its code's
file and line range.
"""

from __future__ import annotations

import fnmatch
import re
import types
from dataclasses import dataclass
import weakref
from typing import Any, Mapping

import torch

from convfuse.policies import Policy, PolicyError, parse_policy

SCOPES = ("all", "marked")
_MARK = "__convfuse_region__"


@dataclass(frozen=True)
class RegionMark:
    """What ``convfuse.region`` attached: the region's policy (None: the compile's)."""

    policy: Policy | None
    what: str  # "class Block", "instance of Block", "function conv"


# function regions: code object -> (file, first line, last line, mark)
_FUNCTION_REGIONS: dict[types.CodeType, tuple[str, int, int, RegionMark]] = {}
_MARKED_SUBCLASSES: dict[tuple[type, Any], type] = {}
# marked classes, also found by their forward's frames: the model passed to torch.compile
# is the root of nn_module_stack and does not appear in it
_MARKED_CLASSES: "weakref.WeakSet[type]" = weakref.WeakSet()


def region(target: Any = None, /, policy: Any = None) -> Any:
    """Mark a module class, a module instance or a function as a convfuse region.

    ``@convfuse.region`` / ``@convfuse.region()`` / ``@convfuse.region(PartialKernel(length=1024))``
    on a class or function, or ``convfuse.region(model.blocks[0], FrequencySparse(keep=0.25))``
    on an instance (returned, marked in place).  The policy may be given as text
    (``"freq:keep=0.25"``).  Compile with ``options={"scope": "marked"}`` to rewrite only
    marked regions; without it, a region's policy still applies to its sites.
    """
    if target is None or _is_policy_like(target):
        chosen = parse_policy(target) if target is not None else (None if policy is None else parse_policy(policy))
        return lambda obj: _mark(obj, chosen)
    return _mark(target, None if policy is None else parse_policy(policy))


def _is_policy_like(value: Any) -> bool:
    from convfuse.policies import POLICY_TYPES

    return isinstance(value, (str, dict, *POLICY_TYPES))


def _mark(obj: Any, policy: Policy | None) -> Any:
    if isinstance(obj, type):
        if not issubclass(obj, torch.nn.Module):
            raise TypeError(f"convfuse.region: {obj.__name__} is a class but not a torch.nn.Module")
        setattr(obj, _MARK, RegionMark(policy, f"class {obj.__name__}"))
        _MARKED_CLASSES.add(obj)
        return obj
    if isinstance(obj, torch.nn.Module):
        cls = type(obj)
        base = getattr(cls, "__convfuse_base__", cls)  # re-marking an instance replaces its mark
        key = (base, policy)
        sub = _MARKED_SUBCLASSES.get(key)
        if sub is None:
            sub = type(base.__name__, (base,), {
                _MARK: RegionMark(policy, f"instance of {base.__name__}"),
                "__convfuse_base__": base,
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                # Pickle and deepcopy the instance as its own class, unmarked.
                "__reduce_ex__": _reduce_unmarked,
            })
            _MARKED_SUBCLASSES[key] = sub
        obj.__class__ = sub
        return obj
    code = getattr(obj, "__code__", None)
    if isinstance(code, types.CodeType):
        mark = RegionMark(policy, f"function {getattr(obj, '__qualname__', code.co_name)}")
        _FUNCTION_REGIONS[code] = (*_code_span(code), mark)
        try:
            setattr(obj, _MARK, mark)
        except AttributeError:
            pass
        return obj
    raise TypeError(
        f"convfuse.region: cannot mark {type(obj).__name__}; mark a torch.nn.Module class, a module "
        "instance or a function"
    )


def _reduce_unmarked(self, protocol):
    """Pickle (and deepcopy) a marked instance as an instance of its own, unmarked class: the
    marked subclass is made at run time and cannot be imported by name."""
    return (_new_unmarked, (type(self).__convfuse_base__,), self.__getstate__())


def _new_unmarked(cls: type) -> Any:
    return cls.__new__(cls)


def unmark(obj: Any) -> Any:
    """Remove a region mark from a class, instance or function."""
    if isinstance(obj, torch.nn.Module) and hasattr(type(obj), "__convfuse_base__"):
        obj.__class__ = type(obj).__convfuse_base__
    elif isinstance(obj, type) and _MARK in obj.__dict__:
        delattr(obj, _MARK)
        _MARKED_CLASSES.discard(obj)
    elif getattr(obj, "__code__", None) in _FUNCTION_REGIONS:
        del _FUNCTION_REGIONS[obj.__code__]
        if hasattr(obj, _MARK):
            delattr(obj, _MARK)
    return obj


# ---- module names --------------------------------------------------------------------------------


def parse_module_policies(value: Any) -> tuple[tuple[str, Policy], ...]:
    """``{"blocks.0": policy, ...}`` as ``((pattern, policy), ...)``, each policy parsed."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PolicyError(
            f"convfuse: options['module_policies'] must map module names to policies, got {type(value).__name__}"
        )
    out = []
    for name, policy in value.items():
        if not isinstance(name, str) or not name:
            raise PolicyError(f"convfuse: options['module_policies'] key {name!r} is not a module name")
        try:
            out.append((name, parse_policy(policy)))
        except PolicyError as exc:
            raise PolicyError(f"convfuse: options['module_policies'][{name!r}]: {exc}") from None
    return tuple(out)


_ROOT = re.compile(r"^L\[['\"][^'\"]*['\"]\]\.?")
_ITEM = re.compile(r"\[['\"]?([^\]'\"]+)['\"]?\]")


def qualified_name(path: str) -> str:
    """Dynamo's module path (``L['self'].blocks[0]``, ``L['self'].blocks.0``) as
    ``named_modules()`` spells it (``blocks.0``)."""
    name = _ROOT.sub("", str(path))
    name = _ITEM.sub(r".\1", name).replace("._modules.", ".").lstrip(".")
    return name.removeprefix("_modules.")


def module_stack(node: torch.fx.Node) -> list[tuple[str, type]]:
    """(qualified name, class) of the modules the node was traced in, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for value in stack.values():
        if isinstance(value, tuple) and len(value) == 2:
            path, cls = value
            out.append((qualified_name(path), cls if isinstance(cls, type) else type(None)))
    return out


def _frames(stack_trace: str | None) -> list[tuple[str, int]]:
    return [(f, int(line)) for f, line in re.findall(r'File "([^"]+)", line (\d+)', stack_trace or "")]


def _code_span(code: types.CodeType) -> tuple[str, int, int]:
    lines = [line for _, _, line in code.co_lines() if line is not None]
    return code.co_filename, code.co_firstlineno, max(lines, default=code.co_firstlineno)


def _in_frames(frames: list[tuple[str, int]], code: types.CodeType) -> bool:
    file, first, last = _code_span(code)
    return any(f == file and first <= line <= last for f, line in frames)


def region_marks(node: torch.fx.Node) -> list[RegionMark]:
    """The marked regions around ``node``, innermost first: functions (by stack frames), then
    modules (by nn_module_stack), then a marked class of the compiled root module (by its
    forward's frames: the root does not appear in nn_module_stack)."""
    frames = _frames(node.meta.get("stack_trace"))
    modules = module_stack(node)
    function_marks = [
        mark for file, line in reversed(frames)
        for f, first, last, mark in list(_FUNCTION_REGIONS.values())
        if f == file and first <= line <= last
    ]
    module_marks = [getattr(cls, _MARK) for _, cls in reversed(modules) if isinstance(getattr(cls, _MARK, None), RegionMark)]
    in_stack = [cls for _, cls in modules]
    root_marks = [
        cls.__dict__[_MARK] for cls in list(_MARKED_CLASSES)
        if isinstance(cls.__dict__.get(_MARK), RegionMark)
        and not any(issubclass(c, cls) for c in in_stack)
        and isinstance(code := getattr(getattr(cls, "forward", None), "__code__", None), types.CodeType)
        and _in_frames(frames, code)
    ]
    return list(dict.fromkeys(function_marks + module_marks + root_marks))


def _specificity(hit: tuple[str, Policy]) -> tuple[bool, int]:
    """An exact name beats any pattern; among patterns, the longer one wins."""
    pattern = hit[0]
    return (not any(c in pattern for c in "*?["), len(pattern))


@dataclass(frozen=True)
class SiteScope:
    """What the scope rules say about one site."""

    in_scope: bool
    policy: Policy
    chosen_by: str  # "options", "region: class Block", "module_policies['blocks.0']"
    reason: str = ""  # why out of scope


def resolve(node: torch.fx.Node, scope: str, default: Policy,
            module_policies: tuple[tuple[str, Policy], ...] = ()) -> SiteScope:
    """The scope decision and the asked policy for the site at ``node``."""
    modules = module_stack(node)
    marks = region_marks(node)
    if scope == "marked" and not marks:
        return SiteScope(False, default, "", "outside every convfuse.region (options scope='marked')")
    for name, _ in reversed(modules):
        hits = [(pattern, policy) for pattern, policy in module_policies if fnmatch.fnmatchcase(name, pattern)]
        if hits:
            pattern, policy = max(hits, key=_specificity)
            return SiteScope(True, policy, f"module_policies[{pattern!r}] ({name})")
    for mark in marks:
        if mark.policy is not None:
            return SiteScope(True, mark.policy, f"region: {mark.what}")
    if marks:
        return SiteScope(True, default, f"region: {marks[0].what}")
    return SiteScope(True, default, "options")


def check_scope(value: Any) -> str:
    scope = str(value if value is not None else "all").lower()
    if scope not in SCOPES:
        raise ValueError(f"convfuse: options['scope']={value!r}; expected one of {', '.join(SCOPES)}")
    return scope


def is_marked(obj: Any) -> bool:
    if isinstance(obj, (type, torch.nn.Module)):
        cls = obj if isinstance(obj, type) else type(obj)
        return isinstance(getattr(cls, _MARK, None), RegionMark)
    return getattr(obj, "__code__", None) in _FUNCTION_REGIONS

