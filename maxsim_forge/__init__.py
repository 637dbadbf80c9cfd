"""maxsim-forge: generated, autotuned Triton kernels for MaxSim (late-interaction) scoring."""

from __future__ import annotations

from .codegen import KernelConfig, KernelSpec
from .reference import maxsim_reference

__version__ = "0.1.0"

__all__ = ["KernelConfig", "KernelSpec", "maxsim_reference"]
