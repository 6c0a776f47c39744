"""convfuse: a torch.compile backend that runs FFT convolutions as one fused operator.

    model = torch.compile(model, backend="convfuse")
    report = convfuse.explain(model, *example_inputs)
"""

import convfuse.ops  # noqa: F401  registers torch.ops.convfuse.fft_conv
from convfuse.api import compile, explain
from convfuse.backend import convfuse_backend
from convfuse.ops import fft_conv
from convfuse.policies import Exact
from convfuse.report import RewriteReport, SiteReport
from convfuse.spec import ConvSpec

__version__ = "0.1.0"
__all__ = ["ConvSpec", "Exact", "RewriteReport", "SiteReport", "compile", "convfuse_backend", "explain", "fft_conv"]
