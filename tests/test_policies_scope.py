"""Choosing policies per module and per region: module_policies, convfuse.region on a class, an
instance and a function, options scope="marked"; one end-to-end run through Inductor."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import convfuse
from conftest import Compiled, assert_close_rel

B, H, L = 2, 4, 64


def causal_conv(u, k):
    n = 2 * u.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]


def truncated(k, taps):
    return k * (torch.arange(k.shape[-1]) < taps).to(k.dtype)


def freq_conv(u, k, bins):
    n = 2 * u.shape[-1]
    mask = (torch.arange(n // 2 + 1) < bins).to(torch.float32)
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n) * mask, n=n)[..., : u.shape[-1]]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.randn(H, L) / L**0.5)
        self.D = nn.Parameter(torch.randn(H))

    def forward(self, x):
        return causal_conv(x, self.k) + x * self.D.unsqueeze(-1)


class TwoBlocks(nn.Module):
    def __init__(self, block=Block):
        super().__init__()
        self.blocks = nn.ModuleList([block(), block()])

    def forward(self, x):
        for block in self.blocks:
            x = torch.tanh(block(x))
        return x


def definition(model, x, conv0, conv1):
    """The two-block model with each block's convolution replaced by the given definition."""
    for block, conv in zip(model.blocks, (conv0, conv1)):
        x = torch.tanh(conv(x, block.k) + x * block.D.unsqueeze(-1))
    return x


EXACT = causal_conv


def partial(taps):
    return lambda x, k: causal_conv(x, truncated(k, taps))


def freq(bins):
    return lambda x, k: freq_conv(x, k, bins)


def check_model(model, convs, **options):
    """Forward and parameter gradients of the compiled model equal the definition's."""
    torch.manual_seed(1)
    x = torch.randn(B, H, L)
    reference = copy.deepcopy(model)
    compiled = Compiled(model, **options)
    got, expected = compiled(x), definition(reference, x, *convs)
    assert_close_rel(got, expected, 1e-5)
    g = torch.randn_like(got)
    got.backward(g)
    expected.backward(g)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close_rel(p.grad, q.grad, 1e-5), name
    return compiled


def policies_of(compiled):
    return [(s.status, s.policy_applied) for s in compiled.report.sites]


@pytest.fixture(autouse=True)
def _no_marks_left():
    yield
    for obj in (Block, TwoBlocks, causal_conv):
        convfuse.unmark(obj)


def test_module_policies_give_two_blocks_two_policies():
    model = TwoBlocks()
    c = check_model(model, (partial(8), freq(10)),
                    module_policies={"blocks.0": "partial:length=8", "blocks.1": convfuse.FrequencySparse(bins=10)})
    assert policies_of(c) == [("rewritten", "partial:length=8"), ("rewritten", "freq:bins=10")]
    assert "module_policies['blocks.0'] (blocks.0)" in c.report.sites[0].policy_note


def test_module_policies_patterns_and_the_default_policy():
    model = TwoBlocks()
    c = check_model(model, (EXACT, partial(4)), policy="partial:length=16",
                    module_policies={"blocks.*": "exact", "blocks.1": "partial:length=4"})
    # blocks.0 matches only the pattern (exact is asked, and wins over the compile's policy);
    # blocks.1 matches both and the longer, more specific entry wins
    assert policies_of(c) == [("rewritten", "exact"), ("rewritten", "partial:length=4")]


def test_modules_not_named_get_the_compile_policy():
    model = TwoBlocks()
    c = check_model(model, (partial(16), freq(3)), policy="partial:length=16", module_policies={"blocks.1": "freq:bins=3"})
    assert policies_of(c) == [("rewritten", "partial:length=16"), ("rewritten", "freq:bins=3")]


def test_marked_instance_in_marked_scope():
    model = TwoBlocks()
    assert convfuse.region(model.blocks[0], convfuse.PartialKernel(length=8)) is model.blocks[0]
    assert isinstance(model.blocks[0], Block) and type(model.blocks[0]).__name__ == "Block"
    c = check_model(model, (partial(8), EXACT), scope="marked")
    assert policies_of(c) == [("rewritten", "partial:length=8"), ("skipped", "")]
    assert "outside every convfuse.region" in c.report.sites[1].reason
    assert c.op_calls() == 1


def test_region_policy_applies_without_marked_scope_and_instances_differ():
    model = TwoBlocks()
    convfuse.region(model.blocks[1], "freq:bins=7")
    c = check_model(model, (EXACT, freq(7)))
    assert policies_of(c) == [("rewritten", "exact"), ("rewritten", "freq:bins=7")]
    convfuse.unmark(model.blocks[1])
    assert type(model.blocks[1]) is Block


def test_marked_class_and_module_policies_override():
    convfuse.region(convfuse.PartialKernel(length=12))(Block)
    model = TwoBlocks()
    c = check_model(model, (partial(12), freq(5)), scope="marked", module_policies={"blocks.1": "freq:bins=5"})
    assert policies_of(c) == [("rewritten", "partial:length=12"), ("rewritten", "freq:bins=5")]


def test_marked_class_without_policy_uses_the_compile_policy():
    convfuse.region(Block)
    model = TwoBlocks()
    c = check_model(model, (partial(6), partial(6)), scope="marked", policy="partial:length=6")
    assert policies_of(c) == [("rewritten", "partial:length=6")] * 2


def test_marked_root_module():
    @convfuse.region("partial:length=3")
    class Root(Block):
        pass

    model = Root()
    torch.manual_seed(0)
    x = torch.randn(B, H, L)
    c = Compiled(model, scope="marked")
    y = c(x)
    with torch.no_grad():
        expected = causal_conv(x, truncated(model.k, 3)) + x * model.D.unsqueeze(-1)
    assert_close_rel(y.detach(), expected, 1e-5)
    assert policies_of(c) == [("rewritten", "partial:length=3")]


def test_marked_function():
    region_conv = convfuse.region(convfuse.FrequencySparse(bins=6))(causal_conv)
    assert region_conv is causal_conv
    model = TwoBlocks()
    c = check_model(model, (freq(6), freq(6)), scope="marked")
    assert policies_of(c) == [("rewritten", "freq:bins=6")] * 2
    assert "region: function causal_conv" in c.report.sites[0].policy_note


def test_function_region_in_a_plain_function():
    @convfuse.region
    def filt(u, k):
        return causal_conv(u, k)

    def outside(u, k):
        return causal_conv(u, k)

    def fn(u, k1, k2):
        return filt(u, k1) + outside(u, k2)

    u, k1, k2 = torch.randn(B, H, L), torch.randn(H, L), torch.randn(H, L)
    c = Compiled(fn, scope="marked", policy="partial:length=4")
    y = c(u, k1, k2)
    assert_close_rel(y, causal_conv(u, truncated(k1, 4)) + causal_conv(u, k2), 1e-5)
    assert sorted(policies_of(c)) == [("rewritten", "partial:length=4"), ("skipped", "")]


def test_marked_instances_pickle_and_copy_as_their_class():
    model = TwoBlocks()
    convfuse.region(model.blocks[0], "partial:length=8")
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone.blocks[0]) is Block
    torch.testing.assert_close(clone.blocks[0].k, model.blocks[0].k)


def test_region_refuses_what_it_cannot_mark():
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        convfuse.region(int)
    with pytest.raises(TypeError, match="cannot mark"):
        convfuse.region(3)
    with pytest.raises(ValueError, match="length must be >= 1"):
        convfuse.region("partial:length=0")


def test_end_to_end_through_inductor_with_gradients():
    torch.manual_seed(0)
    model = TwoBlocks()
    reference = copy.deepcopy(model)
    x = torch.randn(B, H, L)
    compiled = convfuse.compile(model, options={"module_policies": {"blocks.0": "partial:length=8",
                                                                    "blocks.1": "freq:keep=0.25"}})
    from convfuse.report import collecting

    with collecting() as report:
        y = compiled(x)
    bins = -(-(L + 1) // 4)  # ceil(0.25 * 65)
    expected = definition(reference, x, partial(8), freq(bins))
    assert_close_rel(y, expected, 1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert_close_rel(p.grad, q.grad, 1e-5)
    assert [s.policy_applied for s in report.sites] == ["partial:length=8", f"freq:bins={bins}"]
    assert model.blocks[0].k.grad[..., 8:].abs().max() == 0
