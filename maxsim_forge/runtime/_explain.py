"""``explain(...)``: what a call would run and why, without launching it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._inputs import Prepared, pack_pairs, pack_quantized_pairs, prepare_packed, prepare_padded
from ..quant import QuantizedDocs

# The source of a stale row (runtime/_lookup.py), said in full where a decision is printed.
_NOTES = {"stale-db": "a row tuned on kernels since changed; `maxsim-forge tune --resume` tunes it again"}


@dataclass
class Decision:
    """What a call would run, and why: returned by :func:`explain`."""

    layout: str
    bucket: str
    variant: str
    config: dict | None
    source: str
    gpu: str

    @property
    def stale(self) -> bool:
        """The config comes from a row tuned on kernels that have changed since."""
        return self.source == "stale-db"

    def __str__(self) -> str:
        note = f": {_NOTES[self.source]}" if self.source in _NOTES else ""
        return (f"{self.layout} bucket {self.bucket} on {self.gpu}: {self.variant} "
                f"(from {self.source}{note})")


def _prepare_any(args: tuple, kwargs: dict) -> Prepared:
    """Recognise which entry point a set of arguments belongs to."""
    kwargs = dict(kwargs)
    validate = kwargs.pop("validate", True)
    if args and isinstance(args[0], Sequence) and not isinstance(args[0], torch.Tensor):
        docs = args[1] if len(args) > 1 else kwargs.get("docs")
        if kwargs.get("quantize_query") or (isinstance(docs, Sequence) and len(docs)
                                            and isinstance(docs[0], QuantizedDocs)):
            return pack_quantized_pairs(*args, **kwargs)
        kwargs.pop("quantize_query", None)
        return pack_pairs(*args, **kwargs)
    if len(args) >= 3 or "cu_seqlens" in kwargs:
        return prepare_packed(*args, check_values=validate, **kwargs)
    return prepare_padded(*args, check_values=validate, **kwargs)


def explain(*args, **kwargs) -> Decision:
    """What the call with these arguments would run: layout, bucket, variant, config, source.

    Takes the arguments of :func:`maxsim`, :func:`maxsim_packed` (three positional
    tensors) or :func:`maxsim_pairs` (two sequences). Launches nothing. ``source`` is
    one of ``runtime.SOURCES``; ``stale-db`` says the config is a row of this very bucket
    tuned on kernels that have changed since (it serves until the bucket is tuned again).
    """
    from . import _api  # the dispatcher imports Decision from here

    return _api._route(_prepare_any(args, kwargs)).decision()


__all__ = ["Decision", "explain"]
