"""Integrations with serving frameworks (imported explicitly, e.g. ``maxsim_forge.integrations.vllm``)."""

from __future__ import annotations

from ._vanilla import vanilla_maxsim_batched

__all__ = ["vanilla_maxsim_batched"]
