"""The operators' Autograd-key kernel: custom_op's autograd, without its per-call Python cost.

``torch.library.custom_op`` puts a Python kernel on the Autograd key of every operator it
defines; ``register_autograd`` only gives that kernel a formula.  Its wrapper flattens the
arguments, builds guards and redispatches on every call, gradients wanted or not: measured on
this project's 2-core machine, one thread, an operator with an empty kernel (bench/fixed_cost.py):

    a CPU Python kernel alone, through the dispatcher       ~5 us
    + custom_op's autograd wrapper                          ~30-50 us
    + the thin kernel below                                 ~6-8 us

so at small sizes the wrapper was most of a call.  ``register`` overrides that kernel with one
that does what custom_op's does, and no more:

- a gradient is wanted (grad mode on and a tensor argument requires grad): an ``autograd.Function`` whose forward runs the operator below autograd and whose
  ``setup_context`` / ``backward`` are the operator's formula, as custom_op's generated Function;
- otherwise, redispatch below autograd; and when every tensor argument is a plain CPU tensor and
  no dispatch mode or tracer is active (nothing below autograd but the CPU kernel could run), call
  the CPU kernel itself, which is what that redispatch reaches.

An operator without a formula (``backward=None``) raises at backward, as custom_op's does.

Forward-mode AD through dual tensors (``torch.autograd.forward_ad``): the kernels below autograd
compute values (the C++ ones from raw pointers), so a tangent would be lost silently; a call
with a dual argument runs the operator's definition in plain torch ops (``tangent_reference``),
which carries it, or raises where an operator has none.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad
from torch.nn import Parameter

_LIBRARY = torch.library.Library("convfuse", "IMPL")
_STRIDED = torch.strided
_len_dispatch_stack = torch._C._len_torch_dispatch_stack
_is_tracing = torch._C._is_tracing
_functorch_active = torch._C._are_functorch_transforms_active
_grad_enabled = torch._C.is_grad_enabled
_any_requires_grad = torch._C._any_requires_grad


def _plain_cpu(args, tensor_positions: tuple[int, ...]) -> bool:
    """Nothing between the Autograd key and the CPU kernel would act on this call: no dispatch
    mode (fake, proxy), tracer or functorch transform, and every tensor a plain strided CPU
    tensor or Parameter (a subclass may dispatch in Python).  ~1 us: attribute checks only, of
    the arguments the schema types as tensors (``tensor_positions``; the dispatcher passes no
    tensor anywhere else)."""
    if _len_dispatch_stack() or _is_tracing() or _functorch_active():
        return False
    for i in tensor_positions:
        if i >= len(args):
            break
        a = args[i]
        t = type(a)
        if t is Tensor or t is Parameter:
            if not a.is_cpu or a.layout is not _STRIDED:
                return False
        elif isinstance(a, Tensor):
            return False
    return True


def _forward_mode_error(name: str) -> NotImplementedError:
    return NotImplementedError(
        f"{name}: forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) is not supported: the "
        "operator has no forward-mode formula, and its result would carry no tangent. Use reverse mode "
        "(torch.autograd.grad, torch.func.vjp/jacrev), or leave the site to eager (convfuse.region / scope)")


def refuse_forward_mode(name: str) -> None:
    """Raise where a torch.func forward-mode transform (jvp, jacfwd, hessian's outer jacfwd) is
    active: redispatched below autograd the operator's result carries no tangent, which
    torch.func reads as a zero tangent (a wrong answer, silently; torch's own custom_op does the
    same).  The operators have no forward-mode formula."""
    stack = torch._C._functorch.get_interpreter_stack() or ()
    if any(i.key() == torch._C._functorch.TransformType.Jvp for i in stack):
        raise _forward_mode_error(name)


# torch.autograd.forward_ad's open level (-1: none), a module global since torch 1.9; a torch
# without it has every call's tensors checked
_LEVELS_KNOWN = isinstance(getattr(_forward_ad, "_current_level", None), int)


def _dual(a) -> bool:
    if isinstance(a, Tensor):
        return _forward_ad.unpack_dual(a).tangent is not None
    return isinstance(a, (list, tuple)) and any(_dual(t) for t in a)


def carries_tangent(args, tensor_positions: Optional[tuple[int, ...]] = None) -> bool:
    """A forward-mode AD level is open (torch.autograd.forward_ad) and a tensor argument (at
    ``tensor_positions``, or any, tensor lists included) is a dual tensor of it.  One attribute
    read when no level is open."""
    if _LEVELS_KNOWN and _forward_ad._current_level < 0:
        return False
    positions = range(len(args)) if tensor_positions is None else tensor_positions
    return any(_dual(args[i]) for i in positions if i < len(args))


def guard_forward_mode(op, tangent_reference: Optional[Callable] = None) -> None:
    """For an operator that keeps custom_op's own Autograd kernel (tensor-list arguments):
    put in front of it what the thin kernel does in forward mode (``refuse_forward_mode``; a
    dual argument runs ``tangent_reference``, or raises without one).  Built from torch's own
    ``make_autograd_impl``; where a torch lacks it the operator keeps custom_op's kernel as it is."""
    try:
        from torch._library.autograd import make_autograd_impl

        overload = getattr(torch.ops.convfuse, op._name.split("::")[-1]).default
        inner = make_autograd_impl(overload, op)
    except Exception:  # noqa: BLE001  an older or newer torch: nothing guarded, nothing broken
        return
    name = op._name

    def kernel(keyset, *args, **kwargs):
        if carries_tangent((*args, *kwargs.values())):
            if tangent_reference is None:
                raise _forward_mode_error(name)
            return tangent_reference(*args, **kwargs)
        if _functorch_active():
            refuse_forward_mode(name)
        return inner(keyset, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
        _LIBRARY.impl(name.split("::")[-1], kernel, "Autograd", with_keyset=True)


def register(op, backward: Optional[Callable], setup_context: Optional[Callable],
             cpu_kernel: Optional[Callable] = None, also_on: Optional[str] = None,
             tangent_reference: Optional[Callable] = None) -> None:
    """Install the thin Autograd kernel on ``op`` (a ``custom_op`` with no tensor-list argument or
    result), with custom_op's formula signatures: ``setup_context(ctx, inputs, output)`` and
    ``backward(ctx, *grads)``.  As custom_op's, the kernel gets the arguments the dispatcher
    passes, which omit trailing ones equal to their defaults: the formula must accept that.
    ``cpu_kernel``: the function registered on the op's CPU key, called directly when the
    redispatch could reach nothing else.  ``also_on``: another operator of the same schema that
    gets the same kernel (fft_conv's twin, which the C++ kernels hand the calls they do not run:
    cpu_native); the kernel still redispatches and records ``op`` itself.  ``tangent_reference``:
    the operator's definition in plain torch ops, called with every argument (defaults filled in)
    where one is a forward-mode dual tensor (``carries_tangent``); without it such a call raises."""
    overload = getattr(torch.ops.convfuse, op._name.split("::")[-1]).default
    name = op._name
    schema = overload._schema
    defaults = tuple(a.default_value if a.has_default_value() else None for a in schema.arguments)
    tensor_positions = tuple(i for i, a in enumerate(schema.arguments) if str(a.type) in ("Tensor", "Optional[Tensor]"))
    if any(str(a.type) in ("List[Tensor]", "List[Optional[Tensor]]") for a in (*schema.arguments, *schema.returns)):
        raise TypeError(f"{name}: tensor-list arguments need custom_op's own register_autograd")

    class _Formula(torch.autograd.Function):
        # forward(ctx, *args), as custom_op's generated Function: a Function with a separate
        # setup_context binds its arguments with inspect.signature on every apply (~10 us)
        @staticmethod
        def forward(ctx, *args):
            with torch._C._AutoDispatchBelowAutograd():
                out = overload(*args)
            # the dispatcher drops trailing arguments equal to their defaults; the formula sees them all
            if setup_context is not None:
                setup_context(ctx, (*args, *defaults[len(args):]), out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            if backward is None:
                raise RuntimeError(f"{name} has no autograd formula (it is a backward's operator): "
                                   "differentiate the operator whose backward called it instead")
            return backward(ctx, *grads)

    _Formula.__name__ = _Formula.__qualname__ = f"{name.split('::')[-1]}_autograd"

    def kernel(*args):
        if carries_tangent(args, tensor_positions):
            if tangent_reference is None:
                raise _forward_mode_error(name)
            return tangent_reference(*args, *defaults[len(args):])
        if _grad_enabled() and _any_requires_grad(*args):
            return _Formula.apply(*args)
        if cpu_kernel is not None and _plain_cpu(args, tensor_positions):
            return cpu_kernel(*args)
        if _functorch_active():
            refuse_forward_mode(name)
        with torch._C._AutoDispatchBelowAutograd():
            return overload(*args)

    with warnings.catch_warnings():
        # torch warns (once) that a kernel replaces custom_op's own on the same key: that is the point
        warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
        _LIBRARY.impl(name.split("::")[-1], kernel, "Autograd")
        if also_on is not None:
            _LIBRARY.impl(also_on, kernel, "Autograd")
