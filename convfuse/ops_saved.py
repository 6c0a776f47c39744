"""``convfuse::saved_copy``: a copy of an operand the fused operators save for backward.

The operators save their inputs for backward (``ctx.save_for_backward(u, k, ...)``); eager's
FFT program saves spectra it made itself.  Where an operand is memory the user can reach after
the forward (a graph input, a parameter, a graph output, memory the graph writes in place),
changing it before ``backward()`` changes nothing in eager, but would change what the fused
operator's backward reads: autograd's version check raises where eager runs, or (a saved view of
an input that Inductor rebuilds with ``reinterpret_tensor``, which has no version counter of its
own) the gradient comes out wrong.  ``passes/saved_inputs.py`` routes such operands through
this operator, so what is saved is memory only the compiled graph owns.

It is an operator of its own, not ``aten.clone``: AOTAutograd's min-cut partitioner would
recompute a clone of a forward input in the backward (saving the input costs nothing), which
would save the input again; an opaque operator is never recomputed.  Its gradient is the
identity, so double backward passes through it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from convfuse import ops_autograd


@torch.library.custom_op("convfuse::saved_copy", mutates_args=())
def saved_copy(x: Tensor) -> Tensor:
    # preserve_format: a dense view (a permuted operand) is copied as it lies, at memcpy speed
    return x.clone()


@saved_copy.register_fake
def _(x):
    return torch.empty_like(x)


def _backward(ctx, grad):
    return grad


ops_autograd.register(saved_copy, _backward, None, cpu_kernel=lambda x: x.clone(),
                      tangent_reference=lambda x: x.clone())
