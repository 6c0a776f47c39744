"""The layout map: convolutions whose spectra pass through layout ops that leave the frequency
axis whole (unsqueeze, None indexing, squeeze, view/reshape of other axes, expand, permute,
transpose, movedim, contiguous, clone), written the way published models write them (our own
code in their style).  Each is compared with eager (outputs and every gradient), must be
rewritten into one operator call, and a near miss that mixes the frequency axis must not be.
"""

from __future__ import annotations

import pytest
import torch

from conftest import FFT_CONV, Compiled, assert_matches_eager

L = 16


def hyenadna_fftconv(u, k, D):
    # HyenaDNA's fftconv on 4-D input (B, H, C, L): a per-head kernel broadcast over channels
    # by unsqueezing its spectrum.
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    k_f = k_f.unsqueeze(1)
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]
    return y + u * D.unsqueeze(-1)


def striped_filter(x, h):
    # StripedHyena-style 4-D filter path: (B, G, D, L) with a filter per group, H.unsqueeze(1).
    L = x.shape[-1]
    n = 2 * L
    H = torch.fft.rfft(h, n=n)  # (G, L) -> (G, F)
    X = torch.fft.rfft(x, n=n)  # (B, G, D, F)
    return torch.fft.irfft(X * H.unsqueeze(1), n=n)[..., :L]


def gss_conv1d_fft(x, f_weight):
    # Mega/GSS-style conv1d_fft: the input (B, L, H) along dim=-2, the kernel along its last
    # axis, aligned by conj().view(*shape, 1)-style reshapes and a transpose.
    B, N, H = x.shape
    n = 2 * N
    x_f = torch.fft.rfft(x.float(), n=n, dim=-2)  # (B, F, H)
    w_f = torch.fft.rfft(f_weight.float(), n=n).transpose(0, 1)  # (H, F) -> (F, H)
    y = torch.fft.irfft(x_f * w_f, n=n, dim=-2)
    return y[:, :N, :]


def batched_kernel_none(u, k):
    n = 2 * u.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n)[None], n=n)[..., : u.shape[-1]]


def expanded_kernel(u, k):
    n = 2 * u.shape[-1]
    k_f = torch.fft.rfft(k, n=n).expand(u.shape[0], -1, -1)
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * k_f, n=n)[..., : u.shape[-1]]


def split_heads(u, k):
    # (B, H*D, L) -> spectrum reshaped to (B, H, D, F); a kernel per head (H, 1, L).
    n = 2 * u.shape[-1]
    B, HD, _ = u.shape
    u_f = torch.fft.rfft(u, n=n).reshape(B, k.shape[0], HD // k.shape[0], n // 2 + 1)
    return torch.fft.irfft(u_f * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]


def permuted_spectrum(x, k):
    # x (B, L, H): transformed along dim=1, then its spectrum permuted to (B, H, F).
    n = 2 * x.shape[1]
    x_f = torch.fft.rfft(x, n=n, dim=1).permute(0, 2, 1)
    return torch.fft.irfft(x_f * torch.fft.rfft(k, n=n), n=n)[..., : x.shape[1]]


def movedim_spectrum(x, k):
    n = 2 * x.shape[1]
    x_f = torch.fft.rfft(x, n=n, dim=1).movedim(1, -1).contiguous()
    return torch.fft.irfft(x_f * torch.fft.rfft(k, n=n).clone(), n=n)[..., : x.shape[1]]


def squeezed_kernel(u, k):
    n = 2 * u.shape[-1]
    k_f = torch.fft.rfft(k, n=n).squeeze(0)  # (1, H, F) -> (H, F)
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * k_f, n=n)[..., : u.shape[-1]]


def selected_rows(u, k):
    # Indexing other axes selects rows of the spectrum: the same rows of the signal.
    n = 2 * u.shape[-1]
    k_f = torch.fft.rfft(k, n=n)[1:3]  # (H', F)
    return torch.fft.irfft(torch.fft.rfft(u, n=n)[:, 1:3] * k_f, n=n)[..., : u.shape[-1]]


CASES = {
    "hyenadna 4-D": (hyenadna_fftconv, lambda: (torch.randn(2, 4, 3, L), torch.randn(4, L), torch.randn(3))),
    "hyenadna 5-D": (hyenadna_fftconv, lambda: (torch.randn(2, 4, 2, 3, L), torch.randn(4, 3, L), torch.randn(3))),
    "striped filter": (striped_filter, lambda: (torch.randn(2, 3, 4, L), torch.randn(3, L))),
    "gss conv1d_fft": (gss_conv1d_fft, lambda: (torch.randn(2, L, 4), torch.randn(4, L))),
    "k_f[None]": (batched_kernel_none, lambda: (torch.randn(2, 4, L), torch.randn(4, L))),
    "expand": (expanded_kernel, lambda: (torch.randn(2, 4, L), torch.randn(4, L))),
    "reshape splits heads": (split_heads, lambda: (torch.randn(2, 6, L), torch.randn(2, 1, L))),
    "permute": (permuted_spectrum, lambda: (torch.randn(2, L, 4), torch.randn(4, L))),
    "movedim + contiguous + clone": (movedim_spectrum, lambda: (torch.randn(2, L, 4), torch.randn(4, L))),
    "squeeze": (squeezed_kernel, lambda: (torch.randn(2, 4, L), torch.randn(1, 4, L))),
    "selected rows": (selected_rows, lambda: (torch.randn(2, 4, L), torch.randn(4, L))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_layout_ops_on_a_spectrum_are_followed(name):
    fn, make = CASES[name]
    args = [a.requires_grad_() for a in make()]
    c = assert_matches_eager(fn, args)
    site = c.report.sites[0]
    assert site.rewritten, site.reason
    assert c.op_calls() == 1 and c.fft_calls() == 0


@pytest.mark.parametrize("name", ["hyenadna 4-D", "reshape splits heads", "permute", "expand"])
def test_layout_ops_under_dynamic_shapes(name):
    fn, make = CASES[name]
    c = Compiled(fn, dynamic=True)
    for scale in (1, 2):
        args = [torch.cat([a] * scale, dim=-1) if a.dim() > 1 and a.shape[-1] == L else a for a in make()]
        if name in ("permute",):
            args = [torch.cat([a] * scale, dim=1) if a.dim() == 3 else torch.cat([a] * scale, dim=-1) for a in make()]
        torch.testing.assert_close(c(*args), fn(*args), rtol=1e-4, atol=1e-4)


def test_the_replayed_layouts_are_views_of_the_signal():
    c = assert_matches_eager(split_heads, (torch.randn(2, 6, L), torch.randn(2, 1, L)), grads=False)
    (gm,) = c.graphs
    op = next(node for node in gm.graph.nodes if node.target is FFT_CONV)
    u_arg = op.args[0]
    # the input reaches the operator through reshape (a view of a contiguous tensor), no copy op
    chain = []
    while hasattr(u_arg, "op") and u_arg.op != "placeholder":
        chain.append(u_arg.target if u_arg.op == "call_method" else getattr(u_arg.target, "__name__", u_arg.target))
        u_arg = u_arg.args[0]
    assert "reshape" in chain and not {"clone", "contiguous", "copy_"} & set(map(str, chain))


def reshape_across_frequency(u, k):
    n = 2 * u.shape[-1]
    U = torch.fft.rfft(u, n=n).reshape(u.shape[0], -1)  # merges channels with bins
    K = torch.fft.rfft(k, n=n).reshape(-1)
    return torch.fft.irfft((U * K).reshape(u.shape[0], k.shape[0], -1), n=n)[..., : u.shape[-1]]


def index_along_frequency(u, k):
    n = 2 * u.shape[-1]
    K = torch.fft.rfft(k, n=n).flip(-1)  # reverses the bins: not a kernel's spectrum
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * K, n=n)[..., : u.shape[-1]]


def transposed_into_frequency(u, k):
    n = 2 * u.shape[-1]
    K = torch.fft.rfft(k, n=n)  # (F, F) square: a transpose swaps bins with channels
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * K.transpose(0, 1), n=n)[..., : u.shape[-1]]


NEAR_MISSES = {
    "reshape across frequency": (reshape_across_frequency, lambda: (torch.randn(2, 4, L), torch.randn(4, L))),
    "flip of the bins": (index_along_frequency, lambda: (torch.randn(2, 4, L), torch.randn(4, L))),
    "transpose into frequency": (transposed_into_frequency, lambda: (torch.randn(2, L + 1, L), torch.randn(L + 1, L))),
}


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_layout_ops_that_mix_the_frequency_axis_are_refused(name):
    fn, make = NEAR_MISSES[name]
    args = make()
    c = Compiled(fn)
    torch.testing.assert_close(c(*args), fn(*args))
    assert c.op_calls() == 0, c.report.sites[0]


def s4_zero_padded(u, k):
    # The padded S4 spelling: both signals zero-padded to 2L, rfft/irfft without n.
    L = u.shape[-1]
    u_f = torch.fft.rfft(torch.nn.functional.pad(u, (0, L)))
    k_f = torch.fft.rfft(torch.nn.functional.pad(k, (0, L)))
    return torch.fft.irfft(u_f * k_f)[..., :L]


@pytest.mark.parametrize("dynamic", [None, True])
def test_a_convolution_zero_padded_by_hand_is_recognised_as_linear(dynamic):
    c = assert_matches_eager(s4_zero_padded, (torch.randn(2, 4, L, requires_grad=True),
                                              torch.randn(4, L, requires_grad=True)), dynamic=dynamic)
    site = c.report.sites[0]
    assert site.rewritten and site.spec.causal is True
    assert site.spec.L == site.spec.K == (L if dynamic is None else site.spec.L) and site.spec.n != site.spec.L


@pytest.mark.parametrize("pad", [dict(pad=(L, 0)), dict(pad=(0, 8), mode="reflect"), dict(pad=(0, 8), value=1.0)])
def test_padding_that_is_not_trailing_zeros_stays_part_of_the_signal(pad):
    def f(u, k):
        n = u.shape[-1] + 2 * L
        return torch.fft.irfft(torch.fft.rfft(torch.nn.functional.pad(u, **pad), n=n) * torch.fft.rfft(k, n=n),
                               n=n)[..., : 2 * L]

    c = assert_matches_eager(f, (torch.randn(2, 4, L, requires_grad=True), torch.randn(4, L, requires_grad=True)))
    assert c.report.sites[0].rewritten and c.report.sites[0].spec.L != L


def test_exact_upcasts_of_gates_and_the_skip_term_reach_the_operator_as_half():
    def gated(u, k, D, pre, post):
        L = u.shape[-1]
        n = 2 * L
        x = u.float() * pre.float()
        y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]
        return (y + x * D.float()[:, None]) * post.float()

    h = torch.float16
    args = (torch.randn(2, 4, L, dtype=h), torch.randn(4, L), torch.randn(4, dtype=h), torch.randn(2, 4, L, dtype=h),
            torch.randn(2, 4, L, dtype=h))
    c = assert_matches_eager(gated, args, grads=False)
    (gm,) = c.graphs
    op = next(node for node in gm.graph.nodes if node.target is FFT_CONV)
    dtypes = [op.args[i].meta["example_value"].dtype if hasattr(op.args[i], "meta") and "example_value" in op.args[i].meta
              else None for i in (3, 4)]
    assert c.report.sites[0].spec.pre_gate and c.report.sites[0].spec.post_gate
    assert torch.float16 in dtypes or all(d is None for d in dtypes)


def test_a_skip_product_eager_computes_in_half_is_not_fused():
    def f(u, k, D):
        L = u.shape[-1]
        n = 2 * L
        y = torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]
        return y + u * D[:, None]  # fp16 * fp16: eager rounds this product to fp16

    h = torch.float16
    args = (torch.randn(2, 4, L, dtype=h), torch.randn(4, L), torch.randn(4, dtype=h))
    c = Compiled(f)
    torch.testing.assert_close(c(*args), f(*args))
    assert c.report.sites[0].rewritten and not c.report.sites[0].spec.skip


def complex_pair_with_added_axis(x, h):
    # StripedHyena's prefill style: full complex transforms, an axis added to the input spectrum,
    # the real part of the inverse.
    L = x.shape[-1]
    n = 2 * L
    X_s = torch.fft.fft(x.to(torch.float32), n=n)  # (B, D, n)
    H_s = torch.fft.fft(h, n=n)  # (G, D, n)
    y = torch.fft.ifft(X_s[..., None, :, :] * H_s, n=n).real  # (B, G, D, n)
    return y[..., :L]


def test_full_complex_pair_through_an_added_axis():
    c = assert_matches_eager(complex_pair_with_added_axis, (torch.randn(2, 4, L, requires_grad=True),
                                                             torch.randn(3, 4, L, requires_grad=True)))
    assert c.report.sites[0].rewritten and c.op_calls() == 1


# ---- the output side: layout ops between the inverse and the window, scale and cast ----------


def transposed_then_windowed(u, k):
    # The result read back in (B, L, H) layout: transpose, then the causal window along dim=1.
    n = 2 * u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y.transpose(1, 2)[:, : u.shape[-1]] * 0.5


def heads_merged_then_windowed(u, k):
    # (B, H, D, n) result with heads merged back before the window: a reshape of other axes.
    n = 2 * u.shape[-1]
    B, H, Dh, _ = u.shape
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y.reshape(B, H * Dh, n)[..., : u.shape[-1]].to(torch.float64)


def unsqueezed_moved_then_windowed(u, k):
    n = 2 * u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y.unsqueeze(0).movedim(-1, 1)[:, : u.shape[-1]]


def complex_pair_read_transposed(x, h):
    n = 2 * x.shape[-1]
    y = torch.fft.ifft(torch.fft.fft(x, n=n) * torch.fft.fft(h, n=n), n=n).real
    return y.permute(2, 0, 1)[: x.shape[-1]] / 3


def gfnet_read_back_as_tokens(x, weight):
    # GFNet: (B, H, W, C) filtered over (H, W), then read back as tokens (B, H*W, C): a reshape
    # that merges the transformed axes (nothing to absorb after it, it stays a view) after a scale.
    B, H, W, C = x.shape
    y = torch.fft.irfft2(torch.fft.rfft2(x, dim=(1, 2), norm="ortho") * torch.view_as_complex(weight),
                         s=(H, W), dim=(1, 2), norm="ortho")
    return y.permute(0, 3, 1, 2).mul(2.0).reshape(B, C, H * W)


OUTPUT_SIDE = {
    "transpose, window, scale": (transposed_then_windowed, lambda: (torch.randn(2, 4, L), torch.randn(4, L)), True),
    "reshape merges heads, window, cast": (heads_merged_then_windowed,
                                           lambda: (torch.randn(2, 3, 2, L), torch.randn(3, 1, L)), True),
    "unsqueeze, movedim, window": (unsqueezed_moved_then_windowed,
                                   lambda: (torch.randn(2, 4, L), torch.randn(4, L)), True),
    "ifft.real, permute, window, scale": (complex_pair_read_transposed,
                                          lambda: (torch.randn(2, 4, L), torch.randn(4, L)), True),
}


@pytest.mark.parametrize("name", list(OUTPUT_SIDE))
def test_layout_ops_on_the_result_carry_the_window_into_the_operator(name):
    fn, make, windowed = OUTPUT_SIDE[name]
    c = assert_matches_eager(fn, [a.requires_grad_() for a in make()])
    site = c.report.sites[0]
    assert site.rewritten, site.reason
    assert c.op_calls() == 1 and c.fft_calls() == 0
    (gm,) = c.graphs
    op = next(node for node in gm.graph.nodes if node.target is FFT_CONV)
    # the window is the operator's: it returns L samples, not the n = 2L of the cyclic result
    assert op.args[7] == L and site.spec.length == L
    # and no slice of the result is left in the graph
    assert not any(node.op == "call_function" and node.target.__name__ == "getitem" and node.args[0] is not op
                   and any(isinstance(i, slice) and i != slice(None) for i in
                           (node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)))
                   for node in gm.graph.nodes if node.op == "call_function" and hasattr(node.target, "__name__")
                   and node not in op.all_input_nodes and node.target.__name__ == "getitem"
                   and isinstance(node.args[0], torch.fx.Node) and node.args[0].op != "placeholder")


def test_multi_axis_result_read_through_layout_ops():
    class GF(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(8, 5, 3, 2))

        def forward(self, x):
            return gfnet_read_back_as_tokens(x, self.weight)

    c = assert_matches_eager(GF(), [torch.randn(2, 8, 8, 3, requires_grad=True)])
    site = c.report.sites[0]
    assert site.rewritten, site.reason
    (gm,) = c.graphs
    assert sum(node.target is torch.ops.convfuse.fft_convnd.default for node in gm.graph.nodes) == 1
    assert not any(node.target == "mul" for node in gm.graph.nodes)  # the 2.0 is the operator's
    # ortho on rfft2 and irfft2 (one spectrum scaled) is the plain cyclic convolution: only the 2.0
    assert site.spec.scale == pytest.approx(2.0)


def window_then_skip_after_transpose(u, k, D):
    # A skip term added in the transposed layout: the operator's skip would broadcast in its own
    # layout, so it stays in the graph (the window is still absorbed).
    n = 2 * u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n).transpose(1, 2)[:, : u.shape[-1]]
    return y + u.transpose(1, 2) * D


def window_after_a_merge_across_time(u, k):
    # A reshape that merges the time axis with channels before the slice: the slice is not a
    # window of one convolution, so the operator returns all n samples and the slice stays.
    n = 2 * u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y.reshape(u.shape[0], -1)[:, : u.shape[-1]]


def test_near_misses_on_the_result_side_keep_what_they_must():
    args = (torch.randn(2, 4, L, requires_grad=True), torch.randn(4, L, requires_grad=True), torch.randn(4))
    c = assert_matches_eager(window_then_skip_after_transpose, args)
    site = c.report.sites[0]
    assert site.rewritten and not site.spec.skip and site.spec.length == L
    c = assert_matches_eager(window_after_a_merge_across_time, args[:2])
    site = c.report.sites[0]
    assert site.rewritten and site.spec.length == 2 * L  # the whole period, sliced in the graph


def test_output_layout_ops_under_dynamic_shapes():
    c = Compiled(transposed_then_windowed, dynamic=True)
    for length in (L, 2 * L):
        args = (torch.randn(2, 4, length), torch.randn(4, length))
        torch.testing.assert_close(c(*args), transposed_then_windowed(*args), rtol=1e-4, atol=1e-4)
    assert c.op_calls() == 1


def linear_conv2d_windowed(x, k):
    # a depthwise linear 2-D convolution: zero-padded to 2H x 2W, the first H x W samples kept
    H, W = x.shape[-2:]
    s = (2 * H, 2 * W)
    y = torch.fft.irfft2(torch.fft.rfft2(x, s=s) * torch.fft.rfft2(k, s=s), s=s)
    return y[..., 1:H + 1, :W] * 0.25


def test_a_multi_axis_window_is_the_operators():
    c = assert_matches_eager(linear_conv2d_windowed, (torch.randn(2, 3, 6, 5, requires_grad=True),
                                                      torch.randn(3, 4, 3, requires_grad=True)))
    site = c.report.sites[0]
    assert site.rewritten, site.reason
    (gm,) = c.graphs
    op = next(node for node in gm.graph.nodes if node.target is torch.ops.convfuse.fft_convnd.default)
    assert op.args[3] == [1, 0] and op.args[4] == [6, 5]  # start, length per axis
    assert site.spec.scale == pytest.approx(0.25)
