"""What convfuse knows about FFT convolutions, as data and small named functions.

Everything the matcher needs to recognise a spelling lives here: which callables
are transforms and how their arguments bind, what scale each norm mode applies,
which operations only scale, cast, conjugate or multiply a value.  Widening the
matcher to a new spelling means adding a row here, not a template.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import torch
from torch.fx import Node

_EMPTY = inspect.Parameter.empty


def _signature(*params: str | tuple[str, Any]) -> inspect.Signature:
    return inspect.Signature(
        [
            inspect.Parameter(p if isinstance(p, str) else p[0], inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              default=_EMPTY if isinstance(p, str) else p[1])
            for p in params
        ]
    )


@dataclass(frozen=True)
class Transform:
    """A torch.fft function over one axis (``n=``, ``dim=``) or several (``s=``, ``dim=(...)``)."""

    name: str
    inverse: bool
    one_sided: bool  # rfft/irfft: the spectrum holds bins 0..n//2 of a real signal (of the last axis)
    signature: inspect.Signature
    multi_axis: bool = False


_ONE_AXIS = _signature("input", ("n", None), ("dim", -1), ("norm", None))

# irfft(rfft(u, n) * rfft(k, n), n) is the cyclic convolution of u and k at size n:
# the convolution theorem for the unnormalised DFT pair (forward sum, inverse 1/n).
# The full complex pair is the same theorem: ifft(fft(u, n) * fft(k, n)).real for real u, k.
_MULTI_AXIS = _signature("input", ("s", None), ("dim", None), ("norm", None))
_TWO_AXIS = _signature("input", ("s", None), ("dim", (-2, -1)), ("norm", None))
# The same theorem over several axes (GFNet's global filters): irfftn(rfftn(u) * rfftn(k)).
TRANSFORMS: dict[Callable, Transform] = {
    torch.fft.rfft: Transform("rfft", inverse=False, one_sided=True, signature=_ONE_AXIS),
    torch.fft.irfft: Transform("irfft", inverse=True, one_sided=True, signature=_ONE_AXIS),
    torch.fft.fft: Transform("fft", inverse=False, one_sided=False, signature=_ONE_AXIS),
    torch.fft.ifft: Transform("ifft", inverse=True, one_sided=False, signature=_ONE_AXIS),
    torch.fft.rfft2: Transform("rfft2", inverse=False, one_sided=True, signature=_TWO_AXIS, multi_axis=True),
    torch.fft.irfft2: Transform("irfft2", inverse=True, one_sided=True, signature=_TWO_AXIS, multi_axis=True),
    torch.fft.rfftn: Transform("rfftn", inverse=False, one_sided=True, signature=_MULTI_AXIS, multi_axis=True),
    torch.fft.irfftn: Transform("irfftn", inverse=True, one_sided=True, signature=_MULTI_AXIS, multi_axis=True),
}
# Transforms convfuse recognises as FFTs (so the report lists them) without yet rewriting them.
OTHER_FFTS = {
    torch.fft.fft2, torch.fft.ifft2, torch.fft.fftn, torch.fft.ifftn, torch.fft.hfft, torch.fft.ihfft,
}


def transform_of(node: Node) -> Transform | None:
    if node.op == "call_function":
        return TRANSFORMS.get(node.target)
    return None


def transform_axes(args: dict[str, Any], rank: int, transform: Transform, what: str) -> tuple[int, ...]:
    """The negative axes a transform runs over, ascending: (dim,) for a one-axis transform."""
    from convfuse.passes.refusal import Refusal

    if not transform.multi_axis:
        return (axis_of(args["dim"], rank, what),)
    dims, sizes = args["dim"], args["s"]
    if dims is None:
        if sizes is None:
            raise Refusal(f"{transform.name} over every axis (dim=None, s=None) includes the batch: not a filter")
        dims = tuple(range(-len(sizes), 0))
    dims = tuple(axis_of(d, rank, what) for d in (dims if isinstance(dims, (tuple, list)) else (dims,)))
    if len(set(dims)) != len(dims) or list(dims) != sorted(dims):
        raise Refusal(f"{transform.name} over axes {dims}: only distinct axes in increasing order are supported")
    return dims


def size_args(args: dict[str, Any], transform: Transform) -> list | None:
    """The transform's explicit sizes (``n=`` as one, ``s=``), or None when it takes the shape's."""
    if not transform.multi_axis:
        return None if args["n"] is None else [args["n"]]
    sizes = args["s"]
    if isinstance(sizes, Node):  # s=x.shape[-2:]: a torch.Size the graph computes
        from convfuse.passes.sizes import SymSize

        value = sizes.meta.get("example_value")
        if not isinstance(value, (tuple, list)):
            return [sizes]  # not a sequence: the caller refuses it
        return [SymSize(v, v if isinstance(v, int) else ("index", sizes, i)) for i, v in enumerate(value)]
    return None if sizes is None else list(sizes)


def is_fft(node: Node) -> bool:
    return node.op == "call_function" and (node.target in TRANSFORMS or node.target in OTHER_FFTS)


def is_inverse_fft(node: Node) -> bool:
    t = transform_of(node)
    if t is not None:
        return t.inverse
    return is_fft(node) and node.target.__name__.startswith(("fft_i", "i"))


def bind(node: Node, transform: Transform) -> dict[str, Any]:
    """The transform's arguments by name; a call they do not describe (``out=``) is refused."""
    from convfuse.passes.refusal import Refusal

    if node.kwargs.get("out") is not None:
        raise Refusal(
            f"`{node.name}` ({transform.name}) writes its result into `out=`: the fused operator returns a new "
            "tensor, so the site is left to eager (assign the result instead of passing out=)",
            family="writes-in-place",
        )
    try:
        bound = transform.signature.bind(*node.args, **{k: v for k, v in node.kwargs.items() if k != "out"})
    except TypeError as exc:
        raise Refusal(f"`{node.name}` calls {transform.name} with arguments convfuse does not know: {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def axis_of(dim: Any, rank: int, what: str) -> int:
    """A transform's ``dim`` as a negative axis; a symbolic or non-integer one is refused."""
    from convfuse.passes.refusal import Refusal

    if isinstance(dim, bool) or not isinstance(dim, int):
        raise Refusal(
            f"{what} runs along dim={getattr(dim, 'name', dim)!s}, which is not a constant integer here: an axis "
            "that reaches the graph as an input becomes symbolic under dynamic shapes (passed as an argument, or "
            "a literal that a graph break before this call turned into an input of a new graph); remove the "
            "graph break (see convfuse report's graph breaks) or pass the axis as a literal in the same graph",
            family="symbolic-axis",
        )
    if not -rank <= dim < rank:
        raise Refusal(f"{what} runs along dim={dim} of a rank-{rank} tensor")
    return dim - rank if dim >= 0 else dim


# Norm modes as the power of n each transform multiplies by (torch.fft docs: "backward"
# is the default and leaves the forward unscaled and the inverse scaled by 1/n).
FORWARD_NORM_POWER = {None: Fraction(0), "backward": Fraction(0), "ortho": Fraction(-1, 2), "forward": Fraction(-1)}
INVERSE_NORM_POWER = {None: Fraction(-1), "backward": Fraction(-1), "ortho": Fraction(-1, 2), "forward": Fraction(0)}
# The cyclic convolution is irfft(rfft(u) * rfft(k)) with default norms, whose scales
# multiply to n^-1: a site's extra scale is n^(sum of its norm powers + 1).
CONVOLUTION_NORM_POWER = Fraction(1)


def norm_power(norm: str | None, inverse: bool) -> Fraction:
    table = INVERSE_NORM_POWER if inverse else FORWARD_NORM_POWER
    if norm not in table:
        raise ValueError(f"unknown FFT norm mode {norm!r}")
    return table[norm]


# ---- elementwise arithmetic -------------------------------------------------------------

MUL_FUNCTIONS = {operator.mul, torch.mul, torch.multiply}
MUL_METHODS = {"mul", "multiply", "__mul__", "__rmul__"}
DIV_FUNCTIONS = {operator.truediv, torch.div, torch.true_divide, torch.divide}
DIV_METHODS = {"div", "true_divide", "divide", "__truediv__"}
INPLACE_MUL_FUNCTIONS = {operator.imul}
SUB_FUNCTIONS = {operator.sub, torch.sub, torch.subtract}
SUB_METHODS = {"sub", "subtract", "__sub__"}
ADD_FUNCTIONS = {operator.add, torch.add}
ADD_METHODS = {"add", "__add__", "__radd__"}
CONJ_FUNCTIONS = {torch.conj, torch.conj_physical}
REAL_FUNCTIONS = {torch.real}


def is_real_part(node: Node) -> bool:
    """x.real (Dynamo records getattr(x, "real")) or torch.real(x)."""
    if node.op != "call_function":
        return False
    if node.target is getattr and len(node.args) == 2 and node.args[1] == "real":
        return True
    return node.target in REAL_FUNCTIONS and len(node.args) == 1
CONJ_METHODS = {"conj", "conj_physical"}
EINSUM_FUNCTIONS = {torch.einsum}


def is_call(node: Node, functions: set, methods: set) -> bool:
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_method":
        return node.target in methods
    return False


def binary_operands(node: Node) -> tuple[Any, Any] | None:
    """(a, b) of a binary elementwise call, or None when it carries extra arguments (alpha=, out=...)."""
    if len(node.args) != 2:
        return None
    if node.kwargs and set(node.kwargs) - {"rounding_mode"} or node.kwargs.get("rounding_mode") is not None:
        return None
    return node.args[0], node.args[1]


# ---- casts ------------------------------------------------------------------------------

CAST_METHOD_DTYPES = {"float": torch.float32, "double": torch.float64, "half": torch.float16,
                      "bfloat16": torch.bfloat16}


def cast_target_dtype(node: Node) -> torch.dtype | None:
    """The dtype a pure dtype cast converts to, or None when the node is not one.

    Only casts that change nothing but the dtype qualify: `.to(dtype)`, `.to(dtype=...)`,
    `.float()` and friends, `.type(dtype)`; a `.to(device)` or `copy=True` is not a cast.
    """
    if node.op != "call_method":
        return None
    if node.target in CAST_METHOD_DTYPES and len(node.args) == 1 and not node.kwargs:
        return CAST_METHOD_DTYPES[node.target]
    if node.target in ("to", "type"):
        args, kwargs = node.args[1:], dict(node.kwargs)
        if len(args) == 1 and isinstance(args[0], torch.dtype) and not kwargs:
            return args[0]
        if not args and set(kwargs) == {"dtype"} and isinstance(kwargs["dtype"], torch.dtype):
            return kwargs["dtype"]
    return None


def is_exact_upcast(src: torch.dtype, dst: torch.dtype) -> bool:
    """Every value of src is representable in dst (so the cast can be folded into fp32 compute)."""
    if not (src.is_floating_point and dst.is_floating_point):
        return False
    return src == dst or torch.finfo(dst).bits > torch.finfo(src).bits and (src, dst) != (torch.float16, torch.bfloat16)
