"""Jinja2 templates of Triton kernels (``*.py.j2``): real Triton code with a few hooks.

One template per kernel family; files starting with ``_`` hold the pieces families
share (the forward module's skeleton and the doc-tile kernels) and are not rendered
on their own.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent
# Forward families by q_mode: one query's rows per program row set, or folded query sets.
FWD_QUERY = "maxsim_fwd_query.py.j2"
FWD_FOLDED = "maxsim_fwd_folded.py.j2"
SPLIT_REDUCE = "maxsim_split_reduce.py.j2"
FAMILIES = (FWD_QUERY, FWD_FOLDED)
# Backward: the winning doc token of every query token, per doc.
BWD_WINNERS = "maxsim_bwd_winners.py.j2"
# Backward: the gradients from the winners (a query set against padded or packed docs).
BWD_GRADS = "maxsim_bwd_grads.py.j2"
# A query quantized to int8 per token (quantize_query=True), in one launch.
QUANTIZE_ROWS = "quantize_rows.py.j2"

__all__ = ["BWD_GRADS", "BWD_WINNERS", "FAMILIES", "FWD_FOLDED", "FWD_QUERY", "QUANTIZE_ROWS", "SPLIT_REDUCE",
           "TEMPLATE_DIR"]
