"""Jinja2 templates of Triton kernels (``*.py.j2``): real Triton code with a few hooks."""

from __future__ import annotations

from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent
MAXSIM_FWD = "maxsim_fwd.py.j2"

__all__ = ["MAXSIM_FWD", "TEMPLATE_DIR"]
