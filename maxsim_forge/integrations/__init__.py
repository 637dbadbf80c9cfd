"""Integrations with serving frameworks (imported explicitly, e.g. ``maxsim_forge.integrations.vllm``)."""
