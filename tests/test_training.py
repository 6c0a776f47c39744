"""A whole model compiled with convfuse, as a user trains and ships it: the Hyena LM of examples/hyena.py.

Recompiles on new lengths stay bounded, state_dict round-trips, fullgraph=True works,
same seed gives the same numbers, and a few training steps match eager. Most tests compile
the rest of the graph eagerly (the rewrite and the fused operator are what they test); one
goes through Inductor, as `examples/train_hyena.py` does.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import FFT_CONV, assert_close_rel
from convfuse.backend import convfuse_backend
from convfuse.report import collecting

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples import train_hyena  # noqa: E402
from examples.hyena import HyenaLM  # noqa: E402

VOCAB, D_MODEL, LAYERS = 16, 16, 2


def small_model(seed: int = 0, max_len: int = 256) -> HyenaLM:
    torch.manual_seed(seed)
    return HyenaLM(vocab=VOCAB, d_model=D_MODEL, n_layers=LAYERS, max_len=max_len)


def tokens(batch: int, seqlen: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seqlen), generator=torch.Generator().manual_seed(seed))


class CountingBackend:
    """convfuse (rest of the graph eager) that remembers every graph it was asked to compile."""

    def __init__(self, **options):
        self.graphs = []
        self.options = {"inner": "eager", **options}

    def __call__(self, gm, example_inputs):
        compiled = convfuse_backend(gm, example_inputs, options=dict(self.options))
        self.graphs.append(gm)
        return compiled

    def fused_calls(self, graph: int) -> int:
        return sum(node.target is FFT_CONV for node in self.graphs[graph].graph.nodes)


def test_recompiles_on_new_lengths_stay_bounded_and_stay_rewritten():
    model = small_model()
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend)
    with collecting() as report:
        for L in (64, 96, 128, 160, 256, 200):
            x = tokens(2, L, seed=L)
            with torch.no_grad():
                assert_close_rel(compiled(x), model(x), 1e-5)
    # one static graph for the first length, one graph with L dynamic for every later length
    assert len(backend.graphs) == 2, [gm.graph for gm in backend.graphs]
    assert [backend.fused_calls(i) for i in range(2)] == [LAYERS, LAYERS]
    assert len(report.rewritten) == len(report.sites) == 2 * LAYERS, str(report)


def test_state_dict_round_trip_of_a_compiled_model():
    model = small_model()
    compiled = torch.compile(model, backend=CountingBackend())
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    x = tokens(2, 128)
    loss = F.cross_entropy(compiled(x).flatten(0, 1), x.roll(-1, 1).flatten())
    loss.backward()
    opt.step()  # weights that differ from any fresh initialization

    buffer = io.BytesIO()
    torch.save(compiled.state_dict(), buffer)  # keys carry the "_orig_mod." prefix of the compiled wrapper
    buffer.seek(0)
    saved = torch.load(buffer)

    fresh_compiled = torch.compile(small_model(seed=1), backend=CountingBackend())
    fresh_compiled.load_state_dict(saved)
    plain = small_model(seed=2)
    plain.load_state_dict(model.state_dict())  # the same tensors, without the prefix
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(fresh_compiled(x), compiled(x))
        assert torch.equal(plain(x), expected)
        assert_close_rel(fresh_compiled(x), expected, 1e-5)


def test_fullgraph_true_compiles_the_whole_model_forward_and_backward():
    model = small_model()
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = tokens(2, 128)
    eager_model = small_model()
    got, expected = compiled(x), eager_model(x)
    assert_close_rel(got, expected, 1e-5)
    g = torch.randn_like(got)
    got.backward(g)
    expected.backward(g)
    for (name, p), q in zip(model.named_parameters(), eager_model.parameters()):
        assert_close_rel(p.grad, q.grad, 1e-4)
    assert len(backend.graphs) == 1 and backend.fused_calls(0) == LAYERS


def _losses(seed: int, steps: int = 3) -> list[float]:
    torch._dynamo.reset()
    model = small_model(seed)
    compiled = torch.compile(model, backend=CountingBackend())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x, y, _ = train_hyena.recall_batch(gen, 2, 128)
        loss = F.cross_entropy(compiled(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_same_seed_gives_identical_results_across_runs():
    first, second = _losses(0), _losses(0)
    assert first == second  # bitwise: no nondeterminism in the fused operator or its backward
    assert _losses(1) != first


def _train_compiled_vs_eager(inner: str, layers: int = LAYERS) -> None:
    args = train_hyena.parse_args(["--seqlen", "128", "--batch", "2", "--d-model", "16", "--layers", str(layers),
                                   "--steps", "4", "--lr", "1e-2", "--inner", inner, "--no-progress"])
    eager = train_hyena.train(args, "eager", progress=False)
    fused = train_hyena.train(args, "convfuse", progress=False)  # torch.compile(backend="convfuse")
    assert len(fused.losses) == 4
    for a, b in zip(fused.losses, eager.losses):
        assert a == pytest.approx(b, rel=1e-5)


def test_training_compiled_matches_eager_step_by_step():
    _train_compiled_vs_eager("aot_eager")


@pytest.mark.slow  # an Inductor compile of forward and backward: about a minute on 2 busy cores
def test_training_compiled_with_inductor_matches_eager_step_by_step():
    _train_compiled_vs_eager("inductor")


def test_unknown_policy_is_reported_and_skipped(capsys):
    assert train_hyena.resolve_policy("no-such-policy") is None
    assert "not available" in capsys.readouterr().err
    assert train_hyena.resolve_policy(None) is None


def test_task_has_the_structure_it_claims():
    x, y, mask = train_hyena.recall_batch(torch.Generator().manual_seed(0), 3, 64)
    assert x.shape == y.shape == mask.shape == (3, 64)
    assert torch.equal(x[:, 1:], y[:, :-1])
    keys, values = x[:, 0::2], x[:, 1::2]
    assert keys.max() < 8 <= values.min()
    for b in range(3):  # each key always maps to the same value within a sequence
        table = {}
        for k, v in zip(keys[b].tolist(), values[b].tolist()):
            assert table.setdefault(k, v) == v
    assert mask[:, 1::2].sum() == 0 and mask.any()  # only value targets (even positions of y) can be recalled
    assert (y[mask] >= 8).all()


def test_inference_with_frozen_filters_sees_constant_kernels():
    from examples.inference import ConstantFilter, constant_kernels

    model = small_model().eval()
    x = tokens(2, 128)
    with torch.no_grad():
        expected = model(x)
        model, frozen = constant_kernels(model, (x,))
        assert frozen == LAYERS and all(isinstance(layer.filter, ConstantFilter) for layer in model.layers)
        backend = CountingBackend()
        with collecting() as report:
            got = torch.compile(model, backend=backend)(x)
    assert_close_rel(got, expected, 1e-5)
    assert len(report.rewritten) == LAYERS and all(s.spec.constant_kernel for s in report.rewritten), str(report)


def test_cpu_kernel_under_inference_mode():
    # The CPU kernel's pool threads write the output: they must run in the caller's inference mode.
    def f(u, k):
        L = u.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]

    u, k = torch.randn(4, 64, 1024), torch.randn(64, 1024)  # enough rows for several tiles
    compiled = torch.compile(f, backend=CountingBackend(kernel="cpu"))
    with torch.inference_mode():
        assert_close_rel(compiled(u, k), f(u, k), 1e-5)
