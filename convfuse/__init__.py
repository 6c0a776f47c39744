"""convfuse: a torch.compile backend that runs FFT convolutions as one fused operator.

    model = torch.compile(model, backend="convfuse")
    report = convfuse.explain(model, *example_inputs)
    y = convfuse.fftconv(u, k, D, pre_gate, post_gate)     # FlashFFTConv-style, no compile needed
"""

import convfuse.ops  # noqa: F401  registers torch.ops.convfuse.fft_conv
import convfuse.ops_nd  # noqa: F401  registers torch.ops.convfuse.fft_convnd
import convfuse.ops_mix  # noqa: F401  registers torch.ops.convfuse.fft_conv_mix
import convfuse.ops_spectral  # noqa: F401  registers torch.ops.convfuse.fft_spectral_mix
from convfuse.api import compile, explain
from convfuse.backends.cpu_cache import freeze, unfreeze
from convfuse.backend import convfuse_backend
from convfuse.dropin import FFTConv, fftconv
from convfuse.ops import fft_conv
from convfuse.policies import Auto, Exact, FrequencySparse, PartialKernel, PolicyError, parse_policy
from convfuse.report import RewriteReport, SiteReport
from convfuse.scope import region, unmark
from convfuse.spec import ConvSpec

__version__ = "0.1.0"
__all__ = [
    "Auto", "ConvSpec", "Exact", "FFTConv", "FrequencySparse", "PartialKernel", "PolicyError", "RewriteReport", "SiteReport",
    "compile", "convfuse_backend", "explain", "fft_conv", "fftconv", "freeze", "parse_policy", "region",
    "unfreeze", "unmark",
]


def _register_backend_name() -> None:
    """Make backend="convfuse" work after `import convfuse` even when not pip-installed.

    Installed, the name comes from the torch_dynamo_backends entry point, and loading that
    entry point imports this package: registering here too would then be a duplicate.
    """
    from torch._dynamo.backends import registry

    if "convfuse" not in registry._BACKENDS:
        registry.register_backend(convfuse_backend, name="convfuse")


_register_backend_name()
