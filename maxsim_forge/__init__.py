"""maxsim-forge: generated, autotuned Triton kernels for MaxSim (late-interaction) scoring."""

from __future__ import annotations

from .quant import QuantizedDocs, quantize
from .runtime import explain, maxsim, maxsim_packed, maxsim_pairs, warmup
from . import ops  # noqa: E402,F401  (registers the torch.library ops)  isort: skip

__version__ = "0.1.0"

__all__ = ["QuantizedDocs", "explain", "maxsim", "maxsim_packed", "maxsim_pairs", "quantize", "warmup"]
