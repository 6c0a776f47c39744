"""A cached kernel spectrum is used only when the kernel's bits are those it was computed from,
whatever wrote them (DESIGN.md, Soundness: caches; convfuse/backends/cpu_cache.py).

A compiled 1-layer depthwise long convolution, its kernel a parameter (the site is rewritten
with ``constant_kernel``, so the CPU path caches its spectrum), trained step by step against
eager with every ``torch.optim`` optimizer in each of its forms, and updated by writers that
leave the version counter as it was: fused optimizers, an EMA through ``.data``, FSDP2's
``_unsafe_preserve_version_counter``, a numpy view, ``buffer.data``, ``p.data = t``.  Then the
opt-in that trusts frozen kernels (``convfuse.freeze``) reuses as its README line says, and the
bit comparison's edge cases (NaN, -0.0, the last chunk, layouts, dtypes) at the cache itself.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F

import convfuse
from conftest import FFT_CONV, Compiled, assert_close_rel
from convfuse.backends import cpu_cache

B, H, L = 2, 4, 32
RTOL = 1e-4


class LongConv(torch.nn.Module):
    """y = irfft(rfft(u, 2L) * rfft(k, 2L), 2L)[..., :L], k (H, L) a parameter (or a buffer)."""

    def __init__(self, buffer: bool = False, seed: int = 0):
        super().__init__()
        k = torch.randn(H, L, generator=torch.Generator().manual_seed(seed)) * 0.1
        if buffer:
            self.register_buffer("k", k)
        else:
            self.k = torch.nn.Parameter(k)

    def forward(self, u):
        n = 2 * u.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(self.k, n=n), n=n)[..., : u.shape[-1]]


def data(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, L, generator=gen), torch.randn(B, H, L, generator=gen)


@pytest.fixture(autouse=True)
def fresh_cache():
    cpu_cache.clear()
    cpu_cache.unfreeze()
    yield cpu_cache.stats
    cpu_cache.clear()
    cpu_cache.unfreeze()


def compiled_of(model) -> Compiled:
    return Compiled(model)  # torch.compile(model) through convfuse, options {"inner": "eager"}


def assert_rewritten_with_a_constant_kernel(compiled: Compiled) -> None:
    assert compiled.op_calls() >= 1, "the site was not rewritten"
    assert compiled.report is not None and compiled.report.rewritten, str(compiled.report)
    assert all(s.spec.constant_kernel for s in compiled.report.rewritten), str(compiled.report)


# -- training against eager, every optimizer ------------------------------------------------------

# learning rates large enough that a stale spectrum shows (the defaults of 1e-3 move k by ~1%)
LR = {"Adam": 0.02, "AdamW": 0.02, "Adamax": 0.02, "NAdam": 0.02, "RAdam": 0.02, "SGD": 0.1, "Muon": 0.02,
      "SparseAdam": 0.02, "LBFGS": 0.5}
EXTRA = {"SGD": {"momentum": 0.9}, "LBFGS": {"max_iter": 3}}


def optimizer_cases():
    cases = []
    for name in sorted(dir(torch.optim)):
        cls = getattr(torch.optim, name)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
            continue
        params = inspect.signature(cls.__init__).parameters
        forms = ["for-loop"] + [form for form in ("foreach", "fused") if form in params]
        cases += [pytest.param(name, form, id=f"{name}-{form}") for form in forms]
    return cases


def make_optimizer(name: str, form: str, params):
    cls = getattr(torch.optim, name)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {**EXTRA.get(name, {})}
    if name in LR:
        kwargs["lr"] = LR[name]
    for flag in ("foreach", "fused"):
        if flag in accepted:
            kwargs[flag] = form == flag
    return cls(params, **kwargs)


def train_step(model, opt, u, target):
    if isinstance(opt, torch.optim.LBFGS):
        def closure():
            opt.zero_grad()
            loss = F.mse_loss(model(u), target)
            loss.backward()
            return loss

        return opt.step(closure).detach()
    opt.zero_grad()
    loss = F.mse_loss(model(u), target)
    loss.backward()
    opt.step()
    return loss.detach()


@pytest.mark.parametrize("name,form", optimizer_cases())
def test_training_matches_eager_step_by_step(name, form):
    eager = LongConv()
    model = copy.deepcopy(eager)
    compiled = compiled_of(model)
    u, target = data()
    opt_eager = make_optimizer(name, form, eager.parameters())
    try:  # torch's own verdict on the combination, before anything of convfuse runs
        train_step(eager, opt_eager, u, target)
    except (RuntimeError, ValueError) as exc:
        pytest.skip(f"torch rejects {name}({form}) here: {exc}")
    eager.load_state_dict(model.state_dict())
    opt_eager = make_optimizer(name, form, eager.parameters())
    opt_model = make_optimizer(name, form, model.parameters())
    for step in range(6):
        loss_e, loss_c = train_step(eager, opt_eager, u, target), train_step(compiled, opt_model, u, target)
        assert_close_rel(loss_c, loss_e, RTOL)
        with torch.no_grad():  # outputs after the update (an inference graph: the cache stores and hits)
            want = eager(u)
            for _ in range(3):
                assert_close_rel(compiled(u), want, RTOL)
        assert not torch.equal(eager.k, LongConv().k), f"step {step}: the optimizer changed nothing"
    assert_rewritten_with_a_constant_kernel(compiled)
    assert cpu_cache.stats["hits"] > 0  # the cache was used, and kept sound


# -- writers that leave the version counter as it was -------------------------------------------


def _write_data(m, v):
    m.k.data.copy_(v)


def _write_preserving_version(m, v):  # what FSDP2's all-gather does to the unsharded parameters
    with torch.no_grad(), torch.autograd._unsafe_preserve_version_counter(m.k):
        m.k.copy_(v)


def _write_numpy(m, v):
    m.k.detach().numpy()[...] = v.numpy()


def _rebind(m, v):
    m.k.data = v.clone()


def _write_in_place(m, v):  # bumps the version: the control
    with torch.no_grad():
        m.k.copy_(v)


WRITERS = {  # name -> (writer, on a buffer, keeps the version)
    "p.data": (_write_data, False, True),
    "unsafe_preserve_version_counter": (_write_preserving_version, False, True),
    "numpy view": (_write_numpy, False, True),
    "buffer.data": (_write_data, True, True),
    "p.data = t": (_rebind, False, False),
    "in place": (_write_in_place, False, False),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_writes_the_version_counter_misses_are_seen(writer):
    write, buffer, keeps_version = WRITERS[writer]
    model = LongConv(buffer=buffer)
    compiled = compiled_of(model)
    u, target = data()
    gen = torch.Generator().manual_seed(5)
    for step in range(4):
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                for _ in range(3):  # seen, stored, hit
                    got, want = compiled(u), model(u)
                    assert_close_rel(got, want, RTOL)
            if grad and not buffer:  # and the backward's kernel
                g = torch.randn(B, H, L, generator=gen)
                (gc,) = torch.autograd.grad(compiled(u), model.k, g)
                (ge,) = torch.autograd.grad(model(u), model.k, g)
                assert_close_rel(gc, ge, RTOL)
        version = model.k._version
        write(model, torch.randn(H, L, generator=gen) * 0.1)
        if keeps_version:
            assert model.k._version == version, "the scenario: a write the version counter does not see"
    assert_rewritten_with_a_constant_kernel(compiled)
    assert cpu_cache.stats["hits"] > 0
    if keeps_version:
        assert cpu_cache.stats["stale"] > 0  # found changed by comparing, not by the counter


def test_ema_through_data_with_the_ema_module_compiled():
    model, ema = LongConv(seed=0), LongConv(seed=0)
    ema.requires_grad_(False)
    compiled_ema = compiled_of(ema)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    u, target = data()
    for step in range(5):
        train_step(model, opt, u, target)
        ema.k.data.mul_(0.9).add_(model.k.data, alpha=0.1)
        with torch.no_grad():
            want = ema(u)
            for _ in range(3):
                assert_close_rel(compiled_ema(u), want, RTOL)
    assert_rewritten_with_a_constant_kernel(compiled_ema)
    assert cpu_cache.stats["hits"] > 0 and cpu_cache.stats["stale"] > 0


# -- the opt-in: convfuse.freeze ------------------------------------------------------------------


def test_default_rejects_a_stale_spectrum_and_freeze_reuses_one():
    model = LongConv()
    compiled = compiled_of(model)
    u, _ = data()
    with torch.no_grad():
        for _ in range(3):
            compiled(u)
        before = model(u)
        model.k.data.mul_(2.0)  # no version bump
        assert_close_rel(compiled(u), model(u), RTOL)  # default: compared, seen, recomputed
        assert cpu_cache.stats["stale"] == 1

        convfuse.freeze(model)
        assert cpu_cache.is_frozen(model.k)
        frozen = compiled(u)
        assert_close_rel(frozen, 2 * before, RTOL)

        def no_comparison(*args):
            raise AssertionError("a frozen kernel is not compared")

        hits = cpu_cache.stats["hits"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cpu_cache, "same_bits", no_comparison)
            model.k.data.mul_(0.5)  # breaks freeze's assumption: what its README line says happens
            stale = compiled(u)
        assert cpu_cache.stats["hits"] == hits + 1
        assert_close_rel(stale, frozen, 0.0)  # reused as is: the values written are not seen
        assert not torch.allclose(stale, model(u))

        convfuse.freeze(model)  # freezing again after a write takes the new values
        assert_close_rel(compiled(u), model(u), RTOL)
        model.k.data = torch.randn(H, L)  # a rebound parameter has a new storage: not frozen
        assert not cpu_cache.is_frozen(model.k)
        for _ in range(3):
            assert_close_rel(compiled(u), model(u), RTOL)
        convfuse.unfreeze(model)
        model.k.data.mul_(3.0)
        assert_close_rel(compiled(u), model(u), RTOL)
    assert_rewritten_with_a_constant_kernel(compiled)


def test_unfreeze_drops_the_trusted_spectra():
    k = torch.randn(H, L)
    prep = lambda: torch.fft.rfft(k, n=2 * L)  # noqa: E731
    convfuse.freeze(k)
    first = cpu_cache.lookup(k, "v", prep)
    assert first is not None and cpu_cache.lookup(k, "v", prep) is first  # stored at once, no copy
    convfuse.unfreeze(k)
    assert cpu_cache.size_bytes() == 0
    k.data.add_(1.0)
    assert cpu_cache.lookup(k, "v", prep) is None  # a first sighting again


# -- the comparison itself ------------------------------------------------------------------------


def _calls(k, variant="v"):
    """Three lookups of k; how many of them computed."""
    count = []

    def compute():
        count.append(1)
        return k.detach().clone()

    for _ in range(3):
        cpu_cache.lookup(k, variant, compute)
    return len(count)


def test_bits_not_values_decide():
    k = torch.randn(H, L)
    k[1, 3] = float("nan")  # NaN != NaN as values; its bits are unchanged
    assert _calls(k) == 1 and cpu_cache.stats["hits"] == 1
    z = torch.zeros(H, L)
    _calls(z)
    z[2, 5] = -0.0  # equal as values, a change of sign bit
    cpu_cache.lookup(z, "v", lambda: z.clone())
    assert cpu_cache.stats["stale"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64])
def test_a_change_anywhere_is_seen(dtype):
    k = torch.randn(3, cpu_cache.CHUNK_BYTES // 2 + 7).to(dtype)  # several chunks, an odd tail
    for index in [(0, 0), (2, -1), (1, k.shape[1] // 2)]:
        cpu_cache.clear()
        assert _calls(k) == 1  # seen, stored, hit
        before = k[index].clone()
        k.data[index] = before + 1
        assert _calls(k) == 1 and cpu_cache.stats["stale"] == 1, index  # stale (a sighting), stored, hit
        assert cpu_cache.stats["hits"] == 2
        k.data[index] = before


def test_strided_kernels_compare_by_their_elements():
    base = torch.randn(L, H)
    k = base.t()  # a transposed view
    assert not k.is_contiguous()
    assert _calls(k) == 1
    base.data[3, 1] += 1.0
    assert cpu_cache.stats["stale"] == 0
    _calls(k)
    assert cpu_cache.stats["stale"] == 1


def test_lookup_value_compares_bits_too():
    k = torch.randn(H, L)
    k[0, 0] = float("nan")
    for _ in range(3):
        cpu_cache.lookup_value(k.clone(), "v", lambda: torch.zeros(1))
    assert cpu_cache.value_stats == {"hits": 2, "misses": 1}
    k2 = k.clone()
    k2[1, 1] = -k2[1, 1]
    cpu_cache.lookup_value(k2, "v", lambda: torch.zeros(1))
    assert cpu_cache.value_stats == {"hits": 2, "misses": 2}


def test_fft_convnd_constant_kernel_sees_a_data_write():
    from convfuse.ops_nd import fft_convnd_reference

    weight = torch.nn.Parameter(torch.randn(3, 6, 6, dtype=torch.float64))
    u = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    args = ([6, 6], [0, 0], [6, 6], 1.0, -1.0, False, torch.float64)
    with torch.no_grad():
        for step in range(3):
            for _ in range(3):
                got = torch.ops.convfuse.fft_convnd(u, weight, *args, constant_kernel=True)
                assert_close_rel(got, fft_convnd_reference(u, weight, *args), 1e-12)
            weight.data.mul_(-0.5)
    assert cpu_cache.stats["hits"] >= 3 and cpu_cache.stats["stale"] >= 2


def test_triton_kernel_spectrum_keeps_the_same_rule():
    pytest.importorskip("triton")
    from convfuse.backends.triton_monarch import plan as plan_mod

    k = torch.randn(3, 50)
    spectrum = lambda: plan_mod.kernel_spectrum(k, 256, 256, False, 1.0, torch.float32, (16, 16))  # noqa: E731
    assert spectrum() is not spectrum()  # by value off by default (a GPU would synchronise)
    with plan_mod.cache_kernel_spectra():
        spectrum()
        s1 = spectrum()
        assert spectrum() is s1
        k.data.mul_(2.0)  # no version bump
        s2 = spectrum()
        assert s2 is not s1
        torch.testing.assert_close(s2, 2 * s1)
    convfuse.freeze(k)
    f1 = spectrum()
    assert spectrum() is f1  # frozen: reused, stored at first sight, never compared
    convfuse.unfreeze(k)
    assert spectrum() is not f1
