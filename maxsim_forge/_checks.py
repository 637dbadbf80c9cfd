"""Argument checks shared by every entry point.

Each check raises a ``TypeError`` or ``ValueError`` that names the argument, what was
given and what is accepted. Checks of *values* (lengths in range, cu_seqlens monotone)
read the data back to the host; their ``check`` flag skips them under CUDA graph capture.
"""

from __future__ import annotations

import torch

from ._keys import DTYPE_NAMES, TORCH_ONLY_DTYPES

_TAKEN = {**DTYPE_NAMES, **TORCH_ONLY_DTYPES}

_INDEX_DTYPES = (torch.int32, torch.int64)
PRECISIONS = ("tf32", "ieee")


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float_dtype(name: str, t: torch.Tensor) -> str:
    if t.dtype not in _TAKEN:
        raise TypeError(f"{name} has dtype {t.dtype}; accepted: {', '.join(map(str, _TAKEN))} "
                        "(float64 through torch only)")
    return _TAKEN[t.dtype]


def check_same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b} is on {b.device} but {name_a} is on {a.device}; both must match")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_b} has dtype {b.dtype} but {name_a} has {a.dtype}; both must match")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_b} has {b.shape[-1]} features but {name_a} has {a.shape[-1]}; both must match"
        )


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; accepted: 'tf32', 'ieee'")
    return precision


def check_device(name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; both must match")


def check_lengths(
    name: str, value: object, count: int, limit: int, ref: torch.Tensor, ref_name: str, check: bool
) -> torch.Tensor:
    t = check_tensor(name, value)
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; accepted: torch.int32, torch.int64")
    if t.shape != (count,):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({count},)")
    check_device(name, t, ref, ref_name)
    t = t.contiguous()  # the kernels index lengths with unit stride
    if check and count:
        lo, hi = torch.stack([t.min(), t.max()]).tolist()  # one read-back
        if lo < 0 or hi > limit:
            raise ValueError(
                f"{name} holds values from {lo} to {hi}; accepted: 0 to {limit} "
                f"(the padded length of {ref_name})"
            )
    return t


def check_mask(name: str, value: object, shape: tuple, ref: torch.Tensor, ref_name: str) -> torch.Tensor:
    t = check_tensor(name, value)
    if t.dtype != torch.bool:
        raise TypeError(f"{name} has dtype {t.dtype}; accepted: torch.bool")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {shape}")
    check_device(name, t, ref, ref_name)
    return t


def check_cu_seqlens(name: str, value: object, total: int, ref: torch.Tensor, ref_name: str, check: bool,
                     bound: tuple[str, int] | None = None):
    """Packed offsets: int32 or int64 ``[count + 1]`` on ``ref``'s device; where ``check``,
    their values too (from 0, non-decreasing, within ``total`` tokens and, with ``bound``
    given as (its argument's name, its value), no item longer than that bound)."""
    t = check_tensor(name, value)
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; accepted: torch.int32, torch.int64")
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected (count + 1,) with count >= 0")
    check_device(name, t, ref, ref_name)
    t = t.contiguous()  # the kernels index offsets with unit stride
    if check:
        # One read-back for the four facts; the position of a decrease only on error.
        steps = t[1:] - t[:-1]
        drops = (steps < 0).any().to(t.dtype) if t.numel() > 1 else t.new_zeros(())
        most = steps.max() if t.numel() > 1 else t.new_zeros(())
        first, last, decreasing, longest = torch.stack([t[0], t[-1], drops, most]).tolist()
        if first != 0:
            raise ValueError(f"{name} starts at {first}; it must start at 0")
        if decreasing:
            at = int(torch.nonzero(t[1:] < t[:-1])[0, 0])
            raise ValueError(
                f"{name} decreases at index {at + 1} ({int(t[at])} -> {int(t[at + 1])}); "
                "it must be non-decreasing"
            )
        if last > total:
            raise ValueError(f"{name} ends at {last} but {ref_name} has only {total} tokens")
        if bound is not None and longest > bound[1]:
            at = int(torch.argmax(steps))
            raise ValueError(
                f"{bound[0]}={bound[1]} but item {at} of {name} has {longest} tokens; "
                f"{bound[0]} must be at least the longest"
            )
    return t


def check_rank(name: str, t: torch.Tensor, ranks: tuple[int, ...], what: str) -> None:
    if t.dim() not in ranks:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {what}")
    if t.shape[-1] < 1:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; its last (feature) dim must be >= 1")
