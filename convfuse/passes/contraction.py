"""The other spellings of a per-frequency channel contraction, as the two-operand einsum they compute.

Published FFT convolutions and FNO layers write ``einsum('bcf,ocf->bof', U, K)`` also as

    (U.permute(0, 2, 1).unsqueeze(-2) @ K.permute(2, 0, 1)).squeeze(-2).permute(0, 2, 1)
    torch.matmul(x_ft[..., :m].permute(2, 0, 1), W.permute(2, 0, 1)).permute(1, 2, 0)
    torch.bmm(U.permute(2, 0, 1), K.permute(2, 0, 1)).permute(1, 2, 0)
    view_as_complex(stack([op(a[..., 0], b[..., 0]) - op(a[..., 1], b[..., 1]),
                           op(a[..., 1], b[..., 0]) + op(a[..., 0], b[..., 1])], dim=-1))
        (a = view_as_real(U), b = view_as_real(W), op an einsum or matmul spelling; also with
         .real / .imag planes and torch.complex(re, im))

``einsum_form(node)`` reads such a value as ``EinsumForm(equation, left, right, nodes)``: the
einsum of ``left`` and ``right`` (the tensors before any of these views; for real arithmetic the
complex tensors whose planes it reads) that equals ``node``, and every node the form consumes.
A plain two-operand einsum is its own form.  A real (..., 2) weight parameter read as planes has
no complex tensor in the graph to name: no form (the caller refuses).  Grouped contractions come
out as the einsum they are, for the caller to refuse.

How: every axis carries a letter (an index of the contraction) or is UNIT, a size-1 axis a view
inserted that carries none.  The leaves' axes get fresh letters; the views on each operand side
move them (the rules below, as data); the core (einsum, matmul, bmm, mm: a matmul is the einsum
'...nk,...km->...nm' with its batch axes right-aligned) identifies the letters it pairs; the views
on the output side move the result's.  Soundness: a form is returned only when every axis is
accounted for: no real letter is broadcast (an einsum or matmul broadcasting a size-1 axis of a
leaf against a longer one computes something no two-operand einsum of the leaves does), a UNIT is
never summed, squeezes drop UNITs only, the result carries no UNIT, and its traced shape is the
letters' sizes.  Anything else is None, and the caller's reason stands.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.fx import Node

from convfuse.passes import facts
from convfuse.passes.layout import _PERMUTES, _dim_arg, _permutation, layout_kind
from convfuse.passes.refusal import Refusal
from convfuse.passes.sizes import example_value, same

UNIT = None  # a size-1 axis a view inserted: it carries no letter


@dataclass(frozen=True)
class EinsumForm:
    """``einsum(equation, left, right)`` equals the value the form was read from; ``nodes`` are the
    nodes the form consumes (the value itself, its views, the core and the operands' views, not
    ``left`` and ``right``)."""

    equation: str
    left: Node
    right: Node
    nodes: list[Node] = field(default_factory=list)
    node: Node | None = None  # the value the form was read from (whose shape is the result's)


# ---- letters ---------------------------------------------------------------------------------


class _Letters:
    """Letters of one contraction: a union-find over ids, each class with its size."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, object] = {}

    def fresh(self, size) -> int:
        i = len(self.parent)
        self.parent[i] = i
        self.size[i] = size
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def unify(self, a: int, b: int) -> bool:
        """a and b are one index: only of one size (no broadcast), and never already one."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb or not same(self.size[ra], self.size[rb]):
            return False
        self.parent[rb] = ra
        return True


# ---- view rules: what a view does to its input's letters ----------------------------------------
#
# Each rule takes (node, letters of its input, the input's traced value) and returns the output's
# letters, or None when the op is not a pure relabelling (then the walk treats the op's result as a
# leaf on an operand side, and gives up on the output side).


def _rule_permute(node: Node, letters: list, before) -> list | None:
    # x.permute(2, 0, 1):   (b, c, f) -> (f, b, c)
    # x.transpose(1, 2):    (b, c, f) -> (b, f, c)      (swapaxes, swapdims the same)
    # x.movedim(-1, 0):     (b, c, f) -> (f, b, c)      (moveaxis the same)
    # x.mT / x.t():         (f, c, o) -> (f, o, c)      (x.T: every axis reversed)
    perm = _permutation(node, layout_kind(node), len(letters))
    return [letters[p] for p in perm]


def _rule_unsqueeze(node: Node, letters: list, before) -> list | None:
    # x.unsqueeze(-2):      (b, f, c) -> (b, f, 1, c)
    d = _dim_arg(node, 1, "dim")
    d = d + len(letters) + 1 if d < 0 else d
    if not 0 <= d <= len(letters):
        return None
    return letters[:d] + [UNIT] + letters[d:]


def _rule_squeeze(node: Node, letters: list, before) -> list | None:
    # x.squeeze(-2):        (b, f, 1, o) -> (b, f, o)   a UNIT only: squeezing a leaf's size-1
    #                                                     axis drops a letter, which no einsum does
    # x.squeeze(1) of a longer axis: (b, c, f) -> (b, c, f)   (torch leaves it)
    rank = len(letters)
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dims is None:
        dims = list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) and not isinstance(d, bool) and -rank <= d < rank for d in dims):
        return None
    dropped = {d % rank for d in dims if same(before.shape[d], 1)}
    if any(letters[d] is not UNIT for d in dropped):
        return None
    return [x for d, x in enumerate(letters) if d not in dropped]


def _rule_index(node: Node, letters: list, before) -> list | None:
    # x[:, None]:           (b, c) -> (b, 1, c)         None, ... and whole slices only: a slice that
    # x[..., None, :]:      (b, c) -> (b, 1, c)         selects is no view of the letters (the walk
    #                                                     stops there: x[..., :m] is a leaf)
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    if index.count(Ellipsis) > 1 or not all(i is None or i is Ellipsis or i == slice(None) for i in index):
        return None
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    if used > len(letters):
        return None
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (len(letters) - used) + index[at + 1:]
    out, rest = [], iter(letters)
    for i in index:
        out.append(UNIT if i is None else next(rest))
    return out + list(rest)


def _rule_identity(node: Node, letters: list, before) -> list | None:
    # x.contiguous(), x.clone():  (b, c, f) -> (b, c, f)
    # x.resolve_conj():           (b, c, f) -> (b, c, f)   the same values, materialised
    return list(letters)


_RESOLVES = (torch.resolve_conj, torch.resolve_neg)


def _kind(node: Node) -> str | None:
    if node.op == "call_method" and node.target in ("resolve_conj", "resolve_neg") and len(node.args) == 1 \
            and not node.kwargs:
        return "resolve"
    if node.op == "call_function" and any(node.target is f for f in _RESOLVES) and len(node.args) == 1 \
            and not node.kwargs:
        return "resolve"
    return layout_kind(node)


VIEW_RULES: dict[str, Callable] = {
    **{kind: _rule_permute for kind in _PERMUTES},
    "unsqueeze": _rule_unsqueeze,
    "squeeze": _rule_squeeze,
    "index": _rule_index,
    "identity": _rule_identity,
    "resolve": _rule_identity,
}
# Not here, so never walked through: view/reshape (they regroup axes), expand/broadcast_to (an
# expanded UNIT is no longer size 1: summed or broadcast it would count values several times),
# slices and integer indices (they select).


def _view_step(node: Node, letters: list) -> list | None:
    """The letters of ``node``'s result from those of its input, or None when no rule applies."""
    kind = _kind(node)
    rule = VIEW_RULES.get(kind) if kind is not None else None
    before = example_value(node.args[0]) if node.args and isinstance(node.args[0], Node) else None
    if rule is None or not isinstance(before, torch.Tensor) or before.dim() != len(letters):
        return None
    try:
        out = rule(node, letters, before)
    except (Refusal, TypeError, ValueError, IndexError):
        return None
    after = example_value(node)
    if out is None or not isinstance(after, torch.Tensor) or after.dim() != len(out):
        return None
    return out


def _is_view(node) -> bool:
    return isinstance(node, Node) and isinstance(node.args[0] if node.args else None, Node) \
        and VIEW_RULES.get(_kind(node)) is not None


# ---- plane extractions: the real or imaginary plane of a complex tensor ---------------------------
#
#   view_as_real(z)[..., 0]          z (b, c, f) -> re z (b, c, f)     [..., 1]: im z
#   view_as_real(z).select(-1, 1)    z (b, c, f) -> im z (b, c, f)
#   view_as_real(z).unbind(-1)[0]    z (b, c, f) -> re z (b, c, f)
#   z.real, torch.real(z)            z (b, c, f) -> re z (b, c, f)
#   z.imag, torch.imag(z)            z (b, c, f) -> im z (b, c, f)

_PARTS = {"real": 0, "imag": 1}
_PART_FUNCTIONS = ((torch.real, 0), (torch.imag, 1))


def _rank(node) -> int | None:
    value = example_value(node)
    return value.dim() if isinstance(value, torch.Tensor) else None


def _is_call(node, target) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target is target


def _of_view_as_real(node) -> Node | None:
    if _is_call(node, torch.view_as_real) and len(node.args) == 1 and not node.kwargs:
        return node.args[0]
    return None


def _last_axis_part(index, rank: int) -> int | None:
    """p when ``index`` selects entry p of the last of ``rank`` axes and nothing else."""
    index = index if isinstance(index, tuple) else (index,)
    if index.count(Ellipsis) > 1 or any(i is None for i in index):
        return None
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (rank - len(index) + 1) + index[at + 1:]
    if len(index) != rank or not all(i == slice(None) for i in index[:-1]):
        return None
    p = index[-1]
    return p % 2 if isinstance(p, int) and not isinstance(p, bool) and -2 <= p < 2 else None


def _plane(node: Node) -> tuple[Node, int, list[Node]] | None:
    """(z, 0 for its real plane or 1 for its imaginary one, the nodes used) when ``node`` is one."""
    z, part, used = None, None, [node]
    if node.op == "call_function" and node.target is getattr and len(node.args) == 2 and node.args[1] in _PARTS:
        z, part = node.args[0], _PARTS[node.args[1]]
    elif node.op == "call_function" and any(node.target is f for f, _ in _PART_FUNCTIONS) and len(node.args) == 1 \
            and not node.kwargs:
        z, part = node.args[0], next(p for f, p in _PART_FUNCTIONS if node.target is f)
    elif node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], Node):
        base = node.args[0]
        if (z := _of_view_as_real(base)) is not None:
            rank = _rank(base)
            part, used = (_last_axis_part(node.args[1], rank) if rank else None), [node, base]
        elif facts.is_call(base, {torch.unbind}, {"unbind"}) and isinstance(node.args[1], int) \
                and (z := _of_view_as_real(base.args[0])) is not None:
            dim = base.kwargs.get("dim", base.args[1] if len(base.args) > 1 else 0)
            rank = _rank(base.args[0])
            if rank and isinstance(dim, int) and dim % rank == rank - 1 and len(base.args) + len(base.kwargs) <= 2:
                part, used = node.args[1] % 2 if -2 <= node.args[1] < 2 else None, [node, base, base.args[0]]
    elif facts.is_call(node, {torch.select}, {"select"}) and len(node.args) == 3 and not node.kwargs:
        base, dim, p = node.args
        if (z := _of_view_as_real(base)) is not None and isinstance(dim, int) and isinstance(p, int):
            rank = _rank(base)
            if rank and dim % rank == rank - 1 and -2 <= p < 2:
                part, used = p % 2, [node, base]
    value = example_value(z) if isinstance(z, Node) else None
    if part is None or not (isinstance(value, torch.Tensor) and value.is_complex()):
        return None
    return z, part, used


# ---- the contraction of two leaves ------------------------------------------------------------


@dataclass
class _Term:
    """A contraction of two leaves, its letters per axis (leaves', result's) and its nodes."""

    letters: _Letters
    left: Node
    left_letters: list
    right: Node
    right_letters: list
    out: list
    nodes: list
    parts: tuple = ()  # real arithmetic: (part of left, part of right), 0 real, 1 imaginary
    hints: dict = field(default_factory=dict)  # letter id -> the user's einsum letter for it

    def equation(self) -> str | None:
        """The einsum over the leaves' own axes (in the user's letters where an einsum named
        them), or None when an axis is not accounted for."""
        if any(x is UNIT for x in self.out):
            return None  # a size-1 result axis no index carries: no einsum of the leaves makes it
        groups = (self.left_letters, self.right_letters, self.out)
        roots = list(dict.fromkeys(self.letters.find(x) for group in groups for x in group))
        hinted = {self.letters.find(x): c for x, c in self.hints.items()}
        names: dict[int, str] = {}
        for root in roots:
            if root in hinted and hinted[root] not in names.values():
                names[root] = hinted[root]
        spare = iter(c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     if c not in names.values() and c not in hinted.values())
        for root in roots:
            if root not in names:
                names[root] = next(spare, "?")
        terms = ["".join(names[self.letters.find(x)] for x in group) for group in groups]
        left, right, out = terms
        if "?" in "".join(terms) or any(len(set(t)) != len(t) for t in terms):
            return None  # a diagonal, or a result axis twice
        if any(x not in out and not (x in left and x in right) for x in left + right):
            return None  # summed in one operand only: a broadcast, or a dropped axis
        return f"{left},{right}->{out}"


def _operand(node, letters: _Letters, plane: bool) -> tuple | None:
    """(leaf, the leaf's letters, the letters at ``node``, nodes, part) on one side of a core: through
    the views, and for real arithmetic through one plane extraction to the complex tensor it reads."""
    if not isinstance(node, Node):
        return None
    if _is_view(node):
        inner = _operand(node.args[0], letters, plane)
        if inner is not None:
            leaf, own, inner_letters, nodes, part = inner
            out = _view_step(node, inner_letters)
            if out is not None:
                return leaf, own, out, nodes + [node], part
    if plane:
        found = _plane(node)
        if found is None:
            return None
        z, part, used = found
        inner = _operand(z, letters, plane=False)
        if inner is None:
            return None
        leaf, own, inner_letters, nodes, _ = inner
        return leaf, own, inner_letters, nodes + used, part
    value = example_value(node)
    if not isinstance(value, torch.Tensor):
        return None
    own = [letters.fresh(s) for s in value.shape]
    return node, own, list(own), [], None


_MATMULS = {operator.matmul, torch.matmul}
_MATMUL_METHODS = {"matmul", "__matmul__"}


def _core_equation(node: Node) -> tuple[str, Node, Node] | None:
    """(equation over its inputs, a, b) when ``node`` is a two-operand einsum or a matrix product."""
    if node.op == "call_function" and node.target in facts.EINSUM_FUNCTIONS and not node.kwargs:
        if len(node.args) == 3:
            equation, a, b = node.args
        elif len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) and len(node.args[1]) == 2:
            equation, (a, b) = node.args
        else:
            return None
        if not isinstance(equation, str) or "->" not in equation or "." in equation:
            return None
        return equation.replace(" ", ""), a, b
    if node.kwargs or len(node.args) != 2 or not all(isinstance(x, Node) for x in node.args):
        return None
    a, b = node.args
    if node.op == "call_method" and node.target == "__rmatmul__":
        a, b = b, a
    elif not facts.is_call(node, _MATMULS | {torch.bmm, torch.mm}, _MATMUL_METHODS | {"bmm", "mm", "__rmatmul__"}):
        return None
    va, vb = example_value(a), example_value(b)
    if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)):
        return None
    ra, rb = va.dim(), vb.dim()
    bmm = facts.is_call(node, {torch.bmm}, {"bmm"})
    mm = facts.is_call(node, {torch.mm}, {"mm"})
    if ra < 2 or rb < 2 or bmm and (ra, rb) != (3, 3) or mm and (ra, rb) != (2, 2):
        return None  # a vector operand: matmul adds and removes an axis of its own
    # a matmul is the einsum '...nk,...km->...nm', batch axes right-aligned (broadcast like einsum's)
    batch = "ABCDEFGHIJKLMNOPQRSTUVWX"[: max(ra, rb) - 2]
    if len(batch) < max(ra, rb) - 2:
        return None
    ba, bb = batch[len(batch) - (ra - 2):], batch[len(batch) - (rb - 2):]
    return f"{ba}yz,{bb}zw->{batch}yw", a, b


def _core(node: Node, plane: bool) -> _Term | None:
    """A contraction at ``node`` of two leaves (complex tensors, or planes of them)."""
    found = _core_equation(node)
    if found is None:
        return None
    equation, a, b = found
    lhs, out = equation.split("->")
    terms = lhs.split(",")
    if len(terms) != 2:
        return None
    letters = _Letters()
    sides = [_operand(x, letters, plane) for x in (a, b)]
    if any(s is None for s in sides):
        return None
    (left, left_own, la, na, pa), (right, right_own, lb, nb, pb) = sides
    if len(terms[0]) != len(la) or len(terms[1]) != len(lb) or len(set(out)) != len(out):
        return None
    # each index of the core: the real letters under it are one letter; a UNIT under it broadcasts
    # (kept only when the index is in the result: a UNIT summed would sum the other side alone)
    under: dict[str, int] = {}
    for term, side in zip(terms, (la, lb)):
        if len(set(term)) != len(term):
            return None  # a diagonal
        for c, x in zip(term, side):
            if x is UNIT:
                if c not in out:
                    return None
                continue
            if c in under:
                if not letters.unify(under[c], x):
                    return None  # a broadcast (sizes differ) or a letter paired with itself
            else:
                under[c] = x
    if any(c not in terms[0] and c not in terms[1] for c in out):
        return None
    result = [under.get(c, UNIT) for c in out]
    hints = {x: c for c, x in under.items()} if node.target in facts.EINSUM_FUNCTIONS else {}
    return _Term(letters, left, left_own, right, right_own, result, na + nb + [node], (pa, pb), hints)


def _term(node, plane: bool) -> _Term | None:
    """The contraction ``node`` computes, through views on its output side."""
    if not isinstance(node, Node):
        return None
    if _is_view(node):
        inner = _term(node.args[0], plane)
        if inner is None:
            return None
        out = _view_step(node, inner.out)
        if out is None:
            return None
        inner.out, inner.nodes = out, inner.nodes + [node]
        return _checked(inner, node)
    term = _core(node, plane)
    if term is None and not plane:
        term = _real_arithmetic(node)
    return _checked(term, node) if term is not None else None


def _checked(term: _Term, node: Node) -> _Term | None:
    """The term, when the traced shape at ``node`` is its letters' sizes (a net under the rules)."""
    value = example_value(node)
    if not isinstance(value, torch.Tensor) or value.dim() != len(term.out):
        return None
    for x, s in zip(term.out, value.shape):
        if not same(1 if x is UNIT else term.letters.size[term.letters.find(x)], s):
            return None
    return term


# ---- real arithmetic on planes ----------------------------------------------------------------
#
#   re = op(ar, br) - op(ai, bi),  im = op(ai, br) + op(ar, bi)   (either order of im's terms)
#   view_as_complex(stack([re, im], dim=-1)) or torch.complex(re, im)   ->   op(a, b)
# with the same op (the same einsum of the same two complex tensors) in all four terms.

_RE_TERMS = ((0, 0), (1, 1))  # re = first - second
_IM_TERMS = {((1, 0), (0, 1)), ((0, 1), (1, 0))}  # im = first + second


def _planes_of_complex(node: Node) -> tuple[Node, Node, list[Node]] | None:
    """(re, im, nodes) of view_as_complex(stack([re, im], dim=-1)) or torch.complex(re, im)."""
    if _is_call(node, torch.complex) and len(node.args) + len(node.kwargs) == 2:
        re = node.kwargs.get("real", node.args[0] if node.args else None)
        im = node.kwargs.get("imag", node.args[1] if len(node.args) > 1 else None)
        return (re, im, [node]) if set(node.kwargs) <= {"real", "imag"} else None
    if not (_is_call(node, torch.view_as_complex) and len(node.args) == 1 and not node.kwargs):
        return None
    stack = node.args[0]
    if not (_is_call(stack, torch.stack) and stack.args and set(stack.kwargs) <= {"dim"}):
        return None
    tensors = stack.args[0]
    dim = stack.kwargs.get("dim", stack.args[1] if len(stack.args) > 1 else 0)
    if not (isinstance(tensors, (list, tuple)) and len(tensors) == 2 and isinstance(tensors[0], Node)):
        return None
    rank = _rank(tensors[0])
    if rank is None or not (isinstance(dim, int) and not isinstance(dim, bool) and dim in (-1, rank)):
        return None
    return tensors[0], tensors[1], [node, stack]


def _difference(node, functions: set, methods: set) -> tuple | None:
    if not (isinstance(node, Node) and facts.is_call(node, functions, methods)):
        return None
    return facts.binary_operands(node)


def _real_arithmetic(node: Node) -> _Term | None:
    found = _planes_of_complex(node)
    if found is None:
        return None
    re, im, nodes = found
    re_ops = _difference(re, facts.SUB_FUNCTIONS, facts.SUB_METHODS)
    im_ops = _difference(im, facts.ADD_FUNCTIONS, facts.ADD_METHODS)
    if re_ops is None or im_ops is None:
        return None
    terms = [_term(x, plane=True) for x in (*re_ops, *im_ops)]
    if any(t is None for t in terms):
        return None
    forms = {(t.equation(), t.left, t.right) for t in terms}
    if len(forms) != 1 or next(iter(forms))[0] is None:
        return None  # not one contraction of the same two tensors in all four terms
    parts = [t.parts for t in terms]
    if tuple(parts[:2]) != _RE_TERMS or tuple(parts[2:]) not in _IM_TERMS:
        return None  # a sign or a plane that is not the complex product's
    first = terms[0]
    first.nodes = [n for t in terms for n in t.nodes] + [re, im] + nodes
    first.parts = ()
    return first


# ---- the entry point ----------------------------------------------------------------------------


def einsum_form(node) -> EinsumForm | None:
    """The two-operand einsum of complex tensors that ``node``'s value is, or None when it is none
    this module can prove (see the module docstring)."""
    term = _term(node, plane=False) if isinstance(node, Node) else None
    equation = term.equation() if term is not None else None
    if equation is None:
        # a two-operand einsum is its own form, whatever it reads (the caller judges its letters)
        if isinstance(node, Node) and node.op == "call_function" and node.target in facts.EINSUM_FUNCTIONS \
                and len(node.args) == 3 and isinstance(node.args[0], str) and not node.kwargs \
                and all(isinstance(x, Node) for x in node.args[1:]):
            return EinsumForm(node.args[0], node.args[1], node.args[2], [node], node)
        return None
    return EinsumForm(equation, term.left, term.right, list(dict.fromkeys(term.nodes)), node)
