"""Shared test set-up: where kernels run, fresh random inputs, and a checked comparison.

Without CUDA every kernel runs through Triton's interpreter on CPU tensors; the
variable must be set before triton is first imported, hence here.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0") else "cpu"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (dtype, precision) -> tolerance on max|out - ref| / max|ref|.
TOLERANCES = [("fp16", "tf32", 1e-5), ("bf16", "tf32", 1e-5), ("fp32", "ieee", 1e-5), ("fp32", "tf32", 3e-3)]


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(tmp_path_factory.getbasetemp() / "kernels"))


@pytest.fixture
def device() -> str:
    return DEVICE


def randn(*shape, dtype=torch.float16, device=DEVICE) -> torch.Tensor:
    """Fresh random data (never zeros), made on the CPU so runs are comparable."""
    return torch.randn(*shape).to(device=device, dtype=dtype)


def poisoned(shape, device=DEVICE) -> torch.Tensor:
    """An output buffer full of NaN: an element the kernel forgets to write fails the test."""
    return torch.full(shape, float("nan"), dtype=torch.float32, device=device)


def assert_scores(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "", scale=None) -> None:
    """max|out - ref| / scale <= tol; on failure say how big, how many and where.

    ``scale`` is the magnitude of the terms each score adds up
    (``reference(..., absolute=True)``) where a test has it; else max|ref|.
    """
    assert out.dtype == torch.float32, f"{what}: output dtype {out.dtype}, expected float32"
    assert tuple(out.shape) == tuple(ref.shape), f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out64 = out.detach().double().cpu()
    ref64 = ref.detach().double().cpu()
    nan = torch.isnan(out64)
    if nan.any():
        where = torch.nonzero(nan)[:5].tolist()
        raise AssertionError(f"{what}: {int(nan.sum())} of {out64.numel()} outputs are NaN (unwritten?) at {where}")
    if scale is None:
        scale = ref64.abs().max() if ref64.numel() else 0.0
    elif isinstance(scale, torch.Tensor):
        scale = scale.abs().max() if scale.numel() else 0.0
    scale = max(float(scale), 1e-30)
    err = (out64 - ref64).abs()
    bad = err > tol * scale
    if bad.any():
        where = torch.nonzero(bad)[:5].tolist()
        raise AssertionError(
            f"{what}: max relative error {float(err.max()) / scale:.3e} > {tol:.0e}; "
            f"{int(bad.sum())} of {out64.numel()} outputs mismatch, first at {where}: "
            f"got {[float(out64[tuple(i)]) for i in where]}, expected {[float(ref64[tuple(i)]) for i in where]}"
        )
