"""What a graph node may do besides returning a value: decided from what is known, never guessed.

The fused operator reads its inputs where a site's result was, not where the transforms read
them, so a site is rewritten only if nothing between its first node and its result can change
a value it reads.  ``effect(node)`` classifies a node:

- ``PURE``: known to write nothing (an allow-list of Python operators and attribute reads; a
  torch callable whose ATen schemas write nothing for the arguments it was given; methods the
  same way, through their ATen schemas);
- ``WRITES``: known to write the listed argument values (an ATen schema's ``(a!)`` arguments,
  an ``inplace=`` flag bound by keyword or position, ``x[i] = v``, ``x += y``, ``out=``);
- ``MODE``: changes the grad mode, inference mode or autocast state of what follows;
- ``UNKNOWN``: anything else.  The matcher refuses a site with such a node inside it.

Whether a write matters is decided by storage: ``aliases(value, storages)`` compares the
storage of the written value's fake tensor with the storages of every tensor the site reads or
produces (views, ``.data`` and ``detach()`` share their base's storage).
"""

from __future__ import annotations

import builtins
import inspect
import math
import operator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

import torch
from torch.fx import Node
from torch.multiprocessing.reductions import StorageWeakRef

PURE, WRITES, MODE, UNKNOWN = "pure", "writes", "mode", "unknown"


@dataclass(frozen=True)
class Effect:
    kind: str
    written: tuple = ()  # argument values (Nodes, or lists of them) the call may write

    @property
    def pure(self) -> bool:
        return self.kind == PURE


_PURE_EFFECT = Effect(PURE)
_UNKNOWN_EFFECT = Effect(UNKNOWN)

# Python operators on tensors and sizes that return a new value (or a view) and write nothing.
PURE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
    operator.pow, operator.matmul, operator.neg, operator.pos, operator.abs, operator.invert,
    operator.and_, operator.or_, operator.xor, operator.lshift, operator.rshift,
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.not_,
    operator.getitem, operator.truth, getattr, builtins.len, builtins.min, builtins.max, builtins.abs,
    builtins.int, builtins.float, builtins.bool, builtins.round,
    math.sqrt, math.ceil, math.floor, math.log2, math.log, math.exp,
    torch._C._autograd._get_data_attr,  # p.data: an alias (writes through it are seen by storage)
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel,
    *(getattr(torch, name) for name in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_sum",
                                        "sym_ite", "sym_sqrt", "sym_fresh_size") if hasattr(torch, name)),
}
# x += y, x[i] = v, and the like: they write their first argument.
INPLACE_OPERATORS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.ipow,
    operator.imod, operator.imatmul, operator.iand, operator.ior, operator.ixor, operator.ilshift,
    operator.irshift, operator.setitem,
}
# Calls that change a mode for the nodes after them (Dynamo records `with` regions this way).
MODE_FUNCTIONS = {
    torch._C._set_grad_enabled: "torch.no_grad()/enable_grad()",
    torch.amp.autocast_mode._enter_autocast: "torch.autocast(...)",
    torch.amp.autocast_mode._exit_autocast: "torch.autocast(...)",
    torch.autograd.grad_mode._enter_inference_mode: "torch.inference_mode()",
    torch.autograd.grad_mode._exit_inference_mode: "torch.inference_mode()",
}
for _name in ("_set_autocast_enabled", "set_autocast_enabled", "_set_fwd_grad_enabled"):
    if hasattr(torch._C, _name):
        MODE_FUNCTIONS[getattr(torch._C, _name)] = "an autocast or grad-mode setter"
# Methods with no ATen schema of their own name that only read or convert.
PURE_METHODS = {
    "float", "double", "half", "bfloat16", "int", "long", "bool", "size", "dim", "numel", "ndimension",
    "contiguous", "type", "type_as", "view_as", "reshape_as", "expand_as", "is_contiguous", "is_complex",
    "is_floating_point", "element_size", "stride", "storage_offset", "__getitem__", "tolist", "item",
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
    "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pow__", "__rpow__", "__matmul__", "__rmatmul__",
    "__neg__", "__pos__", "__abs__", "__invert__", "__and__", "__or__", "__xor__", "__eq__", "__ne__", "__lt__",
    "__le__", "__gt__", "__ge__", "__len__",
}
# Dunder methods that write self (``x += y`` when Dynamo keeps the method form, ``x[i] = v``).
INPLACE_METHODS = {
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__", "__imatmul__",
    "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__setitem__",
}
# torch.nn.functional helpers written in Python without an ATen op of their name, that write
# nothing unless their `inplace` flag is set.
PURE_PY_FUNCTIONALS = {
    "pad", "relu", "relu6", "elu", "selu", "celu", "leaky_relu", "hardtanh", "silu", "mish", "hardswish",
    "hardsigmoid", "threshold", "rrelu", "glu", "softmax", "log_softmax", "softmin", "gelu", "softplus",
    "sigmoid", "tanh", "normalize", "layer_norm", "group_norm", "rms_norm", "linear", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "interpolate", "softsign",
    "tanhshrink", "logsigmoid", "hardshrink", "softshrink", "conv1d", "conv2d", "conv3d",
    "scaled_dot_product_attention",
}


def effect(node: Node) -> Effect:
    """What ``node`` may do besides producing its value (see the module docstring)."""
    if node.op in ("placeholder", "get_attr", "output"):
        return _PURE_EFFECT
    if node.op == "call_function":
        return _function_effect(node)
    if node.op == "call_method":
        return _method_effect(node)
    return _UNKNOWN_EFFECT  # call_module: whatever the module does


def mode_region(node: Node) -> str | None:
    """The `with` region whose boundary ``node`` is, as users write it, or None."""
    if node.op == "call_function":
        try:
            return MODE_FUNCTIONS.get(node.target)
        except TypeError:  # an unhashable target
            return None
    return None


def op_name(node: Node) -> str:
    """The call as a user would recognise it: ``F.leaky_relu``, ``Tensor.mul_``, ``aten.add_.Tensor``."""
    target = node.target
    if node.op == "call_method":
        return f"Tensor.{target}"
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target.__name__}" if target.namespace == "aten" else str(target)
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", str(target))
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module.startswith("_operator"):
        return f"operator.{name}"
    return f"torch.{name}" if module.startswith("torch") else name


def _function_effect(node: Node) -> Effect:
    target = node.target
    if node.kwargs.get("out") is not None:
        # whatever the schema calls its outputs (values/indices, min/max, mantissa/exponent)
        return Effect(WRITES, (node.kwargs["out"],) + _schema_effect(_schemas_of(target), node, False).written)
    try:
        if target in PURE_FUNCTIONS:
            return _PURE_EFFECT
        if target in INPLACE_OPERATORS:
            return Effect(WRITES, (node.args[0],))
        if target in MODE_FUNCTIONS:
            return Effect(MODE)
    except TypeError:
        return _UNKNOWN_EFFECT
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return _schema_effect(_schemas_of(target), node, self_first=False)
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", "")
    if module.startswith("torch.nn.functional") and name in PURE_PY_FUNCTIONALS:
        return _inplace_flag_effect(node) or _out_effect(node)
    aten = _aten_name(target)
    if aten is not None:
        schemas = _schemas(aten)
        if schemas:
            return _inplace_flag_effect(node) or _schema_effect(schemas, node, self_first=False)
    return _UNKNOWN_EFFECT


def _method_effect(node: Node) -> Effect:
    name = node.target
    if node.kwargs.get("out") is not None:
        return Effect(WRITES, (node.kwargs["out"],))
    if name in INPLACE_METHODS:
        return Effect(WRITES, (node.args[0],))
    if name in PURE_METHODS:
        return _PURE_EFFECT
    schemas = _schemas(f"aten::{name}")
    if schemas:
        return _schema_effect(schemas, node, self_first=True)
    return _UNKNOWN_EFFECT


@lru_cache(maxsize=None)
def _schemas(aten: str) -> tuple:
    try:
        return tuple(torch._C._jit_get_schemas_for_operator(aten))
    except RuntimeError:
        return ()


def _aten_name(target: Any) -> str | None:
    """aten::<name> for a torch callable that binds to an ATen operator of that name."""
    try:
        from torch.jit._builtins import _find_builtin

        found = _find_builtin(target)
    except Exception:  # noqa: BLE001  an unhashable or exotic callable: not known
        found = None
    if found is not None:
        return found
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", None)
    if name and (module == "torch" or module.startswith("torch._C")) and _schemas(f"aten::{name}"):
        return f"aten::{name}"
    return None


def _schemas_of(target: Any) -> tuple:
    if isinstance(target, torch._ops.OpOverload):
        return (target._schema,)
    if isinstance(target, torch._ops.OpOverloadPacket):
        return tuple(getattr(target, o)._schema for o in target.overloads())
    aten = _aten_name(target)
    return _schemas(aten) if aten is not None else ()


# Arguments that composite ATen ops update in place without marking them (a!) in their schema:
# batch_norm's and instance_norm's running statistics (native_batch_norm writes them when
# training).  Counted as written whenever they are passed.
UNMARKED_WRITES = {"running_mean", "running_var"}


def _schema_effect(schemas: Iterable, node: Node, self_first: bool) -> Effect:
    """WRITES with every argument some overload marks ``(a!)`` and the call passes, else PURE."""
    written = []
    for schema in schemas:
        for position, argument in enumerate(schema.arguments):
            info = argument.alias_info
            if (info is None or not info.is_write) and argument.name not in UNMARKED_WRITES:
                continue
            value = node.kwargs.get(argument.name)
            if value is None and not argument.kwarg_only and position < len(node.args):
                value = node.args[position]
            if value is None and self_first and position == 0 and node.args:
                value = node.args[0]
            if value is not None and all(value is not w for w in written):
                written.append(value)
    return Effect(WRITES, tuple(written)) if written else _PURE_EFFECT


def _inplace_flag_effect(node: Node) -> Effect | None:
    """WRITES(first argument) when a Python functional's ``inplace`` flag is bound true."""
    try:
        signature = inspect.signature(node.target)
    except (TypeError, ValueError):
        return None
    if "inplace" not in signature.parameters:
        return None
    try:
        bound = signature.bind(*node.args, **node.kwargs)
    except TypeError:
        return _UNKNOWN_EFFECT
    flag = bound.arguments.get("inplace", False)
    if flag is False:
        return None
    return Effect(WRITES, (node.args[0] if node.args else next(iter(bound.arguments.values())),))


def _out_effect(node: Node) -> Effect:
    out = node.kwargs.get("out")
    return Effect(WRITES, (out,)) if out is not None else _PURE_EFFECT


# ---- storage ----------------------------------------------------------------------------------


def storages(values: Iterable[Any]) -> set:
    """Weak references to the storages of the fake tensors behind ``values`` (Nodes or lists)."""
    found = set()
    for value in values:
        for tensor in _tensors(value):
            ref = _storage(tensor)
            if ref is not None:
                found.add(ref)
    return found


def aliases(value: Any, site_storages: set) -> bool:
    """Whether a written ``value`` may share memory with any of ``site_storages``.

    A written value without a fake tensor to compare (an unusual argument) counts as aliasing.
    """
    tensors = list(_tensors(value))
    if not tensors:
        return isinstance(value, Node)
    if _wraps_external_memory(value):
        return True
    for tensor in tensors:
        ref = _storage(tensor)
        if ref is None or ref in site_storages:
            return True
    return False


# Tensors made over memory another object owns (a numpy array, a buffer, a DLPack capsule) can
# share it with a site's tensors without sharing their storage object: a write to one is
# counted as a write to the site.
EXTERNAL_MEMORY = {"from_numpy", "frombuffer", "from_dlpack", "asarray", "as_tensor", "numpy", "from_file"}


def _wraps_external_memory(value: Any, depth: int = 16) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_wraps_external_memory(v, depth) for v in value)
    node = value
    while isinstance(node, Node) and depth > 0:
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if name in EXTERNAL_MEMORY:
            return True
        node = node.args[0] if node.args else None
        depth -= 1
    return False


def _tensors(value: Any):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
        return
    fake = value.meta.get("example_value") if isinstance(value, Node) else value
    if isinstance(fake, (list, tuple)):
        for item in fake:
            if isinstance(item, torch.Tensor):
                yield item
    elif isinstance(fake, torch.Tensor):
        yield fake


def _storage(tensor: torch.Tensor):
    try:
        return StorageWeakRef(tensor.untyped_storage())
    except Exception:  # noqa: BLE001  a tensor subclass without storage: compare conservatively
        return None
