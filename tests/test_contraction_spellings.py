"""The other spellings of a per-frequency channel contraction (issue 14 item 1).

Published FFT convolutions and FNO layers write einsum('bcf,ocf->bof', U, K) also as a matmul,
`@` or bmm over moved axes, or in real arithmetic on view_as_real planes.  Each spelling, as an
FFT conv1d layer (and conv2d) and as FNO-1D and FNO-2D spectral layers, is compiled with convfuse and compared
with eager in outputs and every gradient; its site must become one mixing operator.  Near misses
(a matmul over frequency, a transpose that swaps channel and frequency, real arithmetic with a
sign error) stay eager with a reason.  The pass-level tests check every form ``einsum_form``
returns against the values the traced graph computes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import Compiled, assert_close_rel, assert_module_matches_eager, assert_rewritten_once, op_calls
from convfuse.passes.contraction import einsum_form

MIX = torch.ops.convfuse.fft_conv_mix.default
MODES = torch.ops.convfuse.fft_spectral_mix.default


def _calls(c: Compiled, op) -> int:
    return op_calls(c, op)


def _real(op, a, b, planes="view_as_real"):
    """The complex contraction op(a, b) in real arithmetic (older FNO code)."""
    if planes == "view_as_real":
        ar, br = torch.view_as_real(a), torch.view_as_real(b.resolve_conj())
        return torch.view_as_complex(torch.stack([op(ar[..., 0], br[..., 0]) - op(ar[..., 1], br[..., 1]),
                                                  op(ar[..., 1], br[..., 0]) + op(ar[..., 0], br[..., 1])], dim=-1))
    if planes == "unbind":
        (a0, a1), (b0, b1) = torch.view_as_real(a).unbind(-1), torch.view_as_real(b.resolve_conj()).unbind(dim=-1)
    elif planes == "select":
        a0, a1 = torch.view_as_real(a).select(-1, 0), torch.view_as_real(a).select(-1, 1)
        b0, b1 = torch.view_as_real(b.resolve_conj()).select(-1, 0), torch.view_as_real(b.resolve_conj()).select(-1, 1)
    else:
        a0, a1, b0, b1 = a.real, a.imag, torch.real(b), torch.imag(b)
    return torch.complex(op(a0, b0) - op(a1, b1), op(a0, b1) + op(a1, b0))


# ---- spellings of einsum('bcf,ocf->bof', U (B, C, F), W (O, C, F)) ------------------------------

def _conv_einsum(U, W):
    return torch.einsum("bcf,ocf->bof", U, W)


def _conv_matmul(U, W):
    return torch.matmul(U.permute(2, 0, 1), W.permute(2, 1, 0)).permute(1, 2, 0)


CONV_SPELLINGS = {
    "einsum": _conv_einsum,
    "matmul with permutes": _conv_matmul,
    "@ with unsqueeze and squeeze":
        lambda U, W: (U.permute(0, 2, 1).unsqueeze(-2) @ W.permute(2, 1, 0)).squeeze(-2).permute(0, 2, 1),
    "bmm": lambda U, W: torch.bmm(U.permute(2, 0, 1), W.permute(2, 1, 0)).permute(1, 2, 0),
    "weight first, mT": lambda U, W: (W.permute(2, 0, 1) @ U.permute(2, 0, 1).mT).permute(2, 1, 0),
    "[:, None] and movedim": lambda U, W: torch.matmul(U.movedim(-1, 0)[:, :, None], W.permute(2, 1, 0)[:, None])
        .squeeze(2).movedim(0, -1),
    "real arithmetic, stack and view_as_complex": lambda U, W: _real(_conv_einsum, U, W),
    "real arithmetic, torch.complex of .real and .imag, torch.real": lambda U, W: _real(_conv_einsum, U, W,
                                                                                       planes="attr"),
    "real arithmetic of matmuls": lambda U, W: _real(_conv_matmul, U, W),
    "real arithmetic, unbind planes": lambda U, W: _real(_conv_einsum, U, W, planes="unbind"),
    "real arithmetic, select planes": lambda U, W: _real(_conv_matmul, U, W, planes="select"),
}


class SpelledConv1d(nn.Module):
    """A causal FFT conv1d (C_in -> C_out, weight (C_out, C_in, K)), its contraction spelled ``spell``;
    ``correlate``: the weight's spectrum conjugated (torch's conv1d)."""

    def __init__(self, c_in, c_out, taps, spell, correlate=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, taps) / (c_in * taps) ** 0.5)
        self.spell, self.correlate = spell, correlate

    def forward(self, x):
        L, K = x.shape[-1], self.weight.shape[-1]
        n = L + K - 1
        U = torch.fft.rfft(x, n=n)
        W = torch.fft.rfft(self.weight, n=n)
        if self.correlate:
            W = W.conj()
        return torch.fft.irfft(self.spell(U, W), n=n)[..., :L]


class SpelledConv2d(nn.Module):
    """A 'valid'-cropped FFT conv2d (C_in -> C_out), its contraction spelled ``spell``."""

    def __init__(self, c_in, c_out, taps, spell):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, taps, taps) / (c_in * taps * taps) ** 0.5)
        self.spell = spell

    def forward(self, x):
        p = self.weight.shape[-1] - 1
        s = (x.shape[-2] + p, x.shape[-1] + p)
        U, W = torch.fft.rfft2(x, s=s), torch.fft.rfft2(self.weight, s=s)
        return torch.fft.irfft2(self.spell(U, W), s=s)[..., p // 2:p // 2 + x.shape[-2], p // 2:p // 2 + x.shape[-1]]


def _conv2_einsum(U, W):
    return torch.einsum("bchw,ochw->bohw", U, W)


CONV2_SPELLINGS = {
    "matmul over two frequency axes": lambda U, W: (U.permute(2, 3, 0, 1) @ W.permute(2, 3, 1, 0)).permute(2, 3, 0, 1),
    "real arithmetic, torch.complex of .real and .imag": lambda U, W: _real(_conv2_einsum, U, W, planes="attr"),
}


# ---- spellings of einsum('bix,iox->box', x_ft[block], W) and its 2-D form --------------------------

def _fno1_einsum(x, w):
    return torch.einsum("bix,iox->box", x, w)


def _fno2_einsum(x, w):
    return torch.einsum("bixy,ioxy->boxy", x, w)


def _fno2_matmul(x, w):
    return (x.permute(2, 3, 0, 1) @ w.permute(2, 3, 0, 1)).permute(2, 3, 0, 1)


FNO1_SPELLINGS = {
    "matmul with permutes": lambda x, w: torch.matmul(x.permute(2, 0, 1), w.permute(2, 0, 1)).permute(1, 2, 0),
    "@ with unsqueeze and squeeze":
        lambda x, w: (x.permute(0, 2, 1).unsqueeze(-2) @ w.permute(2, 0, 1)).squeeze(-2).permute(0, 2, 1),
    "bmm": lambda x, w: torch.bmm(x.permute(2, 0, 1), w.permute(2, 0, 1)).permute(1, 2, 0),
    "real arithmetic, stack and view_as_complex": lambda x, w: _real(_fno1_einsum, x, w),
    "real arithmetic, torch.complex of .real and .imag": lambda x, w: _real(_fno1_einsum, x, w, planes="attr"),
}
FNO2_SPELLINGS = {
    "matmul with permutes": _fno2_matmul,
    "@ with unsqueeze and squeeze":
        lambda x, w: (x.permute(0, 2, 3, 1).unsqueeze(-2) @ w.permute(2, 3, 0, 1)).squeeze(-2).permute(0, 3, 1, 2),
    "real arithmetic, stack and view_as_complex": lambda x, w: _real(_fno2_einsum, x, w),
    "real arithmetic, torch.complex of .real and .imag": lambda x, w: _real(_fno2_einsum, x, w, planes="attr"),
    "real arithmetic of matmuls": lambda x, w: _real(_fno2_matmul, x, w, planes="attr"),
}


class SpelledFNO1d(nn.Module):
    def __init__(self, c_in, c_out, modes, spell):
        super().__init__()
        self.modes, self.spell = modes, spell
        self.weights = nn.Parameter(torch.rand(c_in, c_out, modes, dtype=torch.cfloat) / (c_in * c_out))

    def forward(self, x):
        m = self.modes
        x_ft = torch.fft.rfft(x)
        out_ft = torch.zeros(x.shape[0], self.weights.shape[1], x.size(-1) // 2 + 1, dtype=torch.cfloat)
        out_ft[:, :, :m] = self.spell(x_ft[:, :, :m], self.weights)
        return torch.fft.irfft(out_ft, n=x.size(-1))


class SpelledFNO2d(nn.Module):
    def __init__(self, c_in, c_out, m1, m2, spell):
        super().__init__()
        self.m1, self.m2, self.spell = m1, m2, spell
        scale = 1 / (c_in * c_out)
        self.weights1 = nn.Parameter(scale * torch.rand(c_in, c_out, m1, m2, dtype=torch.cfloat))
        self.weights2 = nn.Parameter(scale * torch.rand(c_in, c_out, m1, m2, dtype=torch.cfloat))

    def forward(self, x):
        m1, m2 = self.m1, self.m2
        x_ft = torch.fft.rfft2(x)
        out_ft = torch.zeros(x.shape[0], self.weights1.shape[1], x.size(-2), x.size(-1) // 2 + 1, dtype=torch.cfloat)
        out_ft[:, :, :m1, :m2] = self.spell(x_ft[:, :, :m1, :m2], self.weights1)
        out_ft[:, :, -m1:, :m2] = self.spell(x_ft[:, :, -m1:, :m2], self.weights2)
        return torch.fft.irfft2(out_ft, s=(x.size(-2), x.size(-1)))


CASES = {
    **{f"conv1d, {name}": (lambda s=s: SpelledConv1d(3, 4, 5, s), lambda: torch.randn(2, 3, 12), MIX)
       for name, s in CONV_SPELLINGS.items()},
    **{f"conv1d correlation, {name}": (lambda s=s: SpelledConv1d(2, 3, 4, s, correlate=True),
                                       lambda: torch.randn(2, 2, 10), MIX)
       for name, s in CONV_SPELLINGS.items() if name in ("matmul with permutes", "bmm",
                                                         "real arithmetic, stack and view_as_complex",
                                                         "real arithmetic, unbind planes",
                                                         "real arithmetic, torch.complex of .real and .imag, "
                                                         "torch.real")},
    **{f"conv2d, {name}": (lambda s=s: SpelledConv2d(2, 3, 3, s), lambda: torch.randn(2, 2, 8, 8), MIX)
       for name, s in CONV2_SPELLINGS.items()},
    **{f"fno 1-d, {name}": (lambda s=s: SpelledFNO1d(3, 4, 5, s), lambda: torch.randn(2, 3, 16), MODES)
       for name, s in FNO1_SPELLINGS.items()},
    **{f"fno 2-d, {name}": (lambda s=s: SpelledFNO2d(3, 2, 3, 4, s), lambda: torch.randn(2, 3, 10, 10), MODES)
       for name, s in FNO2_SPELLINGS.items()},
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_spelling_is_rewritten_and_matches_eager(name):
    make_module, make_x, op = CASES[name]
    torch.manual_seed(0)
    c = assert_module_matches_eager(make_module(), make_x())
    site = assert_rewritten_once(c, op)
    assert site.pattern.startswith("channel-mixing" if op is MIX else "fno-spectral")
    if "correlation" in name:
        assert site.pattern.startswith("channel-mixing-correlation")
    users = [n for gm in c.graphs for n in gm.graph.nodes
             if n.op != "output" and n.target in (torch.matmul, torch.bmm, torch.einsum, torch.view_as_complex,
                                                  torch.complex, torch.view_as_real)]
    assert not users, users  # the whole contraction went into the operator


# ---- near misses -----------------------------------------------------------------------------

def _matmul_over_frequency(U, W):
    # (B, 1, C, F) @ (1, O, F, C) sums over the frequency axis: not a convolution
    return U.unsqueeze(1) @ W.mT.unsqueeze(0)


def _channel_frequency_swapped(U, W):
    # the contraction is right but its result is (B, F, O): the inverse runs along the channels
    return _conv_matmul(U, W).transpose(1, 2)


def _re_sign_error(U, W):
    op = _conv_einsum
    ar, br = torch.view_as_real(U), torch.view_as_real(W)
    return torch.view_as_complex(torch.stack([op(ar[..., 0], br[..., 0]) + op(ar[..., 1], br[..., 1]),
                                              op(ar[..., 1], br[..., 0]) + op(ar[..., 0], br[..., 1])], dim=-1))


def _im_sign_error(x, w):
    op = _fno1_einsum
    return torch.complex(op(x.real, w.real) - op(x.imag, w.imag), op(x.imag, w.real) - op(x.real, w.imag))


def _planes_mixed_up(x, w):
    op = _fno1_einsum
    return torch.complex(op(x.real, w.real) - op(x.imag, w.imag), op(x.real, w.real) + op(x.imag, w.imag))


def _frequency_swapped_block(x, w):
    # (B, O, M) with O == M transposed: the block is written with channels and modes swapped
    return torch.matmul(x.permute(2, 0, 1), w.permute(2, 0, 1)).permute(1, 0, 2)


NEAR_MISSES = {
    "a matmul over frequency": (lambda: SpelledConv1d(3, 4, 5, _matmul_over_frequency), lambda: torch.randn(2, 3, 12),
                                "frequency"),
    "a transpose that swaps channel and frequency": (lambda: SpelledConv1d(3, 4, 5, _channel_frequency_swapped),
                                                     lambda: torch.randn(2, 3, 12), "inverse transform runs along"),
    "real arithmetic with re = ar br + ai bi": (lambda: SpelledConv1d(3, 4, 5, _re_sign_error),
                                                lambda: torch.randn(2, 3, 12), "real arithmetic"),
    "fno, real arithmetic with im = ai br - ar bi": (lambda: SpelledFNO1d(3, 4, 5, _im_sign_error),
                                                     lambda: torch.randn(2, 3, 16), "not one channel contraction"),
    "fno, real arithmetic of the wrong planes": (lambda: SpelledFNO1d(3, 4, 5, _planes_mixed_up),
                                                 lambda: torch.randn(2, 3, 16), "not one channel contraction"),
    "fno, channels and modes swapped": (lambda: SpelledFNO1d(3, 5, 5, _frequency_swapped_block),
                                        lambda: torch.randn(2, 3, 16), "not a block of modes"),
}


class RealWeightFNO1d(SpelledFNO1d):
    """Older FNO code: the weight a real (C_in, C_out, M, 2) parameter.  Its complex tensor is no
    node of the graph (view_as_complex(weight) is never computed), so no form names it: eager."""

    def __init__(self, c_in, c_out, modes):
        super().__init__(c_in, c_out, modes, None)
        self.weights = nn.Parameter(torch.rand(c_in, c_out, modes, 2) / (c_in * c_out))

    def forward(self, x):
        m, op = self.modes, _fno1_einsum
        x_ft = torch.fft.rfft(x)
        out_ft = torch.zeros(x.shape[0], self.weights.shape[1], x.size(-1) // 2 + 1, dtype=torch.cfloat)
        a, b = torch.view_as_real(x_ft[:, :, :m]), self.weights
        out_ft[:, :, :m] = torch.view_as_complex(torch.stack([
            op(a[..., 0], b[..., 0]) - op(a[..., 1], b[..., 1]), op(a[..., 1], b[..., 0]) + op(a[..., 0], b[..., 1])],
            dim=-1))
        return torch.fft.irfft(out_ft, n=x.size(-1))


NEAR_MISSES["fno, a real (..., 2) weight parameter (not yet)"] = (lambda: RealWeightFNO1d(3, 4, 5),
                                                                   lambda: torch.randn(2, 3, 16),
                                                                   "not one channel contraction")


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_near_misses_stay_eager_with_a_reason(name):
    make, make_x, words = NEAR_MISSES[name]
    torch.manual_seed(0)
    module, x = make(), make_x()
    c = Compiled(module)
    torch.testing.assert_close(c(x), module(x), rtol=1e-5, atol=1e-5)
    assert _calls(c, MIX) == 0 and _calls(c, MODES) == 0
    skipped = [s for s in c.report.sites if not s.rewritten]
    assert skipped and all(s.reason for s in skipped), c.report.sites
    assert words in " ".join(s.reason for s in skipped), [s.reason for s in skipped]


# ---- the pass itself: every form einsum_form returns is the value the graph computes -----------

class _Record(torch.fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.values = {}

    def run_node(self, n):
        value = super().run_node(n)
        self.values[n] = value
        return value


def _forms(fn, *args) -> dict:
    """{node name: (form or None, its value, the form's einsum of the recorded operands)} for every
    tensor node of fn's Dynamo graph."""
    found = {}

    def backend(gm, example_inputs):
        record = _Record(gm)
        record.run(*example_inputs)
        for node, value in record.values.items():
            if isinstance(value, torch.Tensor) and node.op == "call_function" or node.op == "call_method":
                form = einsum_form(node)
                got = None
                if form is not None:
                    got = torch.einsum(form.equation, record.values[form.left], record.values[form.right])
                found[node.name] = (form, value, got)
        return gm

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return found


def _spellings_of_one_contraction(U, W, x, w, x2, w2):
    outs = [s(U, W) for s in CONV_SPELLINGS.values()]
    outs += [s(x, w) for s in FNO1_SPELLINGS.values()]
    outs += [s(x2, w2) for s in FNO2_SPELLINGS.values()]
    outs += [_matmul_over_frequency(U, W), _channel_frequency_swapped(U, W), _re_sign_error(U, W),
             _im_sign_error(x, w), _planes_mixed_up(x, w), _frequency_swapped_block(x, torch.cat([w, w[:, :2]], 1))]
    return outs


def _complex(*shape):
    return torch.randn(*shape, dtype=torch.cfloat)


def test_every_form_is_the_value_the_graph_computes():
    torch.manual_seed(0)
    args = (_complex(2, 3, 7), _complex(4, 3, 7), _complex(2, 3, 5), _complex(3, 5, 5), _complex(2, 3, 4, 5),
            _complex(3, 2, 4, 5))
    found = _forms(_spellings_of_one_contraction, *args)
    outputs = [name for name, (form, value, got) in found.items() if form is not None]
    assert len(outputs) >= 20, outputs
    for name, (form, value, got) in found.items():
        if form is not None:
            torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-5, msg=f"{name}: {form.equation}")


def _form_of_result(fn, *args):
    """einsum_form of the value ``fn`` returns, in its Dynamo graph."""
    got = []

    def backend(gm, example_inputs):
        (result,) = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        got.append(einsum_form(result))
        return gm

    torch._dynamo.reset()
    torch.compile(lambda *a: (fn(*a),), backend=backend, fullgraph=True)(*args)
    return got[0]


@pytest.mark.parametrize("name", list(CONV_SPELLINGS))
def test_the_form_names_the_complex_tensors_before_their_views(name):
    form = _form_of_result(CONV_SPELLINGS[name], _complex(2, 3, 7), _complex(4, 3, 7))
    assert form is not None
    u, w = (form.left, form.right) if name != "weight first, mT" else (form.right, form.left)
    assert (u.op, w.op) == ("placeholder", "placeholder") and u.name != w.name, form
    # the same contraction whatever the letters: U's (b, c, f), W's (o, c, f), the result's (b, o, f)
    lhs, out = form.equation.split("->")
    a, b = lhs.split(",") if u is form.left else lhs.split(",")[::-1]
    assert out == a[0] + b[0] + a[2] and a[1] == b[1] and a[2] == b[2], form.equation
    assert form.node is not None and form.node in form.nodes


def _misses(U, W, x, w):
    return _re_sign_error(U, W), _im_sign_error(x, w), _planes_mixed_up(x, w)


@pytest.mark.parametrize("index", range(3))
def test_real_arithmetic_with_a_sign_or_plane_error_has_no_form(index):
    args = (_complex(2, 3, 7), _complex(4, 3, 7), _complex(2, 3, 5), _complex(3, 5, 5))
    assert _form_of_result(lambda *a: _misses(*a)[index], *args) is None


BROADCASTS = {
    # einsum broadcasting a size-1 channel of U against W's: the einsum itself, never a view of it
    "einsum broadcast": lambda U, W: torch.einsum("bcf,ocf->bof", U[:, :1], W),
    # a matmul whose batch broadcasts a leaf's size-1 axis against a longer one
    "matmul batch broadcast": lambda U, W: torch.matmul(U[:, :, :1].permute(2, 0, 1), W.permute(2, 1, 0)),
    # a squeeze of a leaf's own size-1 axis drops an index
    "squeeze of a leaf's axis": lambda U, W: torch.matmul(U.permute(2, 0, 1), W[:1].permute(2, 1, 0)).squeeze(-1),
    # a UNIT summed: U's channels summed alone
    "unsqueezed operand summed": lambda U, W: torch.einsum("bcf,ocf->bof", U[:, 0].unsqueeze(1), W),
    # a result axis that no index carries
    "unsqueezed result": lambda U, W: torch.matmul(U.permute(2, 0, 1), W.permute(2, 1, 0)).unsqueeze(0),
}


@pytest.mark.parametrize("name", list(BROADCASTS))
def test_broadcasts_and_dropped_axes_are_no_view_of_the_letters(name):
    U, W = _complex(2, 3, 7), _complex(4, 3, 7)
    form = _form_of_result(BROADCASTS[name], U, W)
    if name in ("einsum broadcast", "unsqueezed operand summed"):
        assert form is not None and form.nodes == [form.node] and form.equation == "bcf,ocf->bof"
    else:
        assert form is None, form


# ---- random view chains around a contraction: every form returned is the value ------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _apply(x, plan):
    for op, arg in plan:
        if op == "permute":
            x = x.permute(*arg)
        elif op == "unsqueeze":
            x = x.unsqueeze(arg)
        elif op == "squeeze":
            x = x.squeeze(arg)
        elif op == "none":
            x = x[(slice(None),) * arg + (None,)]
        elif op == "mT":
            x = x.mT
        elif op == "transpose":
            x = x.transpose(*arg)
    return x


def _core_call(core, a, b):
    if core == "matmul":
        return torch.matmul(a, b)
    if core == "bmm":
        return torch.bmm(a, b)
    return torch.einsum(core, a, b)


@st.composite
def _view_plan(draw, x):
    """Up to three views of ``x`` (a zeros tensor of the traced shape), drawn as they apply."""
    plan = []
    for _ in range(draw(st.integers(0, 3))):
        rank = x.dim()
        op = draw(st.sampled_from(["permute", "unsqueeze", "squeeze", "none", "mT", "transpose"]))
        if op == "permute":
            step = (op, tuple(draw(st.permutations(range(rank)))))
        elif op == "unsqueeze":
            step = (op, draw(st.integers(-rank - 1, rank)))
        elif op == "none":
            step = (op, draw(st.integers(0, rank)))
        elif op == "squeeze" and rank > 1:
            step = (op, draw(st.integers(-rank, rank - 1)))  # a no-op unless that axis has size 1
        elif op in ("mT", "transpose") and rank >= 2:
            step = (op, None if op == "mT" else (draw(st.integers(0, rank - 1)), draw(st.integers(-rank, -1))))
        else:
            continue
        plan.append(step)
        x = _apply(x, [step])
    return plan


@st.composite
def _matmul_operands(draw):
    """(leaf shapes, plans) whose views make valid matmul operands: each leaf is its operand's
    axes in a random order, and some size-1 batch axes are inserted by unsqueeze (UNITs)."""
    batch = draw(st.lists(st.sampled_from([1, 2, 3]), max_size=2))
    n, k, m = (draw(st.sampled_from([1, 2, 3])) for _ in range(3))
    shapes, plans = [], []
    for tail in ((n, k), (k, m)):
        drop = draw(st.integers(0, len(batch)))  # leading batch axes this operand lacks (broadcast)
        axes = [(size if draw(st.booleans()) else 1, draw(st.booleans())) for size in batch[drop:]]
        axes += [(size, False) for size in tail]  # (size, inserted by unsqueeze: size 1 only)
        kept = [i for i, (size, unit) in enumerate(axes) if not (unit and size == 1)]
        order = draw(st.permutations(kept))
        shapes.append(tuple(axes[i][0] for i in order))
        plan = [("permute", tuple(order.index(i) for i in kept))] if kept else []
        plan += [("unsqueeze", i) for i in range(len(axes)) if i not in kept]
        plans.append(plan)
    return shapes, plans


@st.composite
def contraction_programs(draw):
    if draw(st.booleans()):
        shapes, plans = draw(_matmul_operands())
        a, b = (_apply(torch.zeros(s), p) for s, p in zip(shapes, plans))
        core = "bmm" if a.dim() == b.dim() == 3 and a.shape[0] == b.shape[0] and draw(st.booleans()) else "matmul"
        y = _core_call(core, a, b)
        return shapes, plans, core, draw(_view_plan(y))
    shapes = [tuple(draw(st.lists(st.sampled_from([1, 2, 3]), min_size=2, max_size=4))) for _ in range(2)]
    plans = [draw(_view_plan(torch.zeros(s))) for s in shapes]
    a, b = (_apply(torch.zeros(s), p) for s, p in zip(shapes, plans))
    core = draw(st.sampled_from(["matmul", "bmm", "einsum"]))
    if core == "einsum":
        letters = "abcdefg"
        ta = letters[: a.dim()]
        tb = "".join(draw(st.sampled_from(ta + "xyz"[i])) for i in range(b.dim())) if b.dim() <= 3 else None
        if tb is None:
            core = "matmul"
        else:
            pool = sorted(set(ta + tb))
            out = "".join(draw(st.permutations(pool)))[: draw(st.integers(1, len(pool)))]
            core = f"{ta},{tb}->{out}"
    try:
        y = _core_call(core, a, b)
    except RuntimeError:
        y = None
    plan_out = draw(_view_plan(y)) if y is not None else []
    return shapes, plans, core, plan_out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(contraction_programs())
def test_random_view_chains_around_a_contraction(program):
    shapes, plans, core, plan_out = program
    try:  # a program eager refuses (shapes that do not contract, repeated letters) says nothing
        _apply(_core_call(core, *(_apply(torch.zeros(s), p) for s, p in zip(shapes, plans))), plan_out)
    except (RuntimeError, IndexError, ValueError):
        return

    def fn(u, w):
        return _apply(_core_call(core, _apply(u, plans[0]), _apply(w, plans[1])), plan_out) * 1

    torch.manual_seed(0)
    found = _forms(fn, *(_complex(*s) for s in shapes))
    for name, (form, value, got) in found.items():
        if form is not None:
            torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-5, msg=f"{name}: {form.equation} {program}")
