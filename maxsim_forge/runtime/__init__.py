"""Run-time side: scoring entry points, the dispatcher and its fallbacks."""

from __future__ import annotations

from ._heuristics import default_config
from ._variant import launch_prepared

__all__ = ["default_config", "launch_prepared"]
