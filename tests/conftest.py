"""Shared test set-up: where kernels run, seeded random inputs, and a checked comparison.

Without CUDA every kernel runs through Triton's interpreter on CPU tensors; the
variable must be set before triton is first imported, hence here.

Every test draws its inputs from a generator seeded from its node id, so each test
gets inputs of its own and a failure comes back on a rerun; ``MAXSIM_FORGE_TEST_SEED``
(an integer) replaces the seed of every test, to replay one or to try others. A
failure message names the seed.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0") else "cpu"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (dtype, precision) -> tolerance on max|out - ref| / max|ref|.
TOLERANCES = [("fp16", "tf32", 1e-5), ("bf16", "tf32", 1e-5), ("fp32", "ieee", 1e-5), ("fp32", "tf32", 3e-3)]
SEED_ENV = "MAXSIM_FORGE_TEST_SEED"


def seed_for(nodeid: str) -> int:
    """The seed of the test ``nodeid``: ``MAXSIM_FORGE_TEST_SEED`` when set, else a
    stable hash of the node id (the same on every run, machine and worker)."""
    override = os.environ.get(SEED_ENV, "").strip()
    if override:
        try:
            return int(override, 0) % 2**63
        except ValueError:
            raise pytest.UsageError(f"{SEED_ENV}={override!r}; accepted: an integer such as 1234") from None
    return int.from_bytes(hashlib.sha256(nodeid.encode()).digest()[:4], "little")


def pytest_configure(config) -> None:
    seed_for("")  # a malformed MAXSIM_FORGE_TEST_SEED stops the run before any test


class _Running:
    """The seed and generator of the test that runs now (outside a test: seed 0)."""

    seed: int = 0
    generator: torch.Generator = torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def seed(request) -> int:
    """Seed this test's inputs: the generator behind :func:`randn` and the cases, and
    torch's global generator for draws made elsewhere."""
    value = seed_for(request.node.nodeid)
    _Running.seed, _Running.generator = value, torch.Generator().manual_seed(value)
    torch.manual_seed(value)
    return value


def seed_note() -> str:
    """Which inputs a failure came from, and how to draw them again."""
    return f"seed {_Running.seed} ({SEED_ENV}={_Running.seed} draws these inputs again)"


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(tmp_path_factory.getbasetemp() / "kernels"))


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def isolated_lookup(tmp_path, monkeypatch):
    """Each test starts with no user DB and no shipped DBs unless it makes them."""
    from maxsim_forge.runtime import Lookup, reset

    monkeypatch.setenv("MAXSIM_FORGE_DB", str(tmp_path / "absent-user.db"))
    monkeypatch.delenv("MAXSIM_FORGE_DISABLE", raising=False)
    # Kernels run from the first call here; the background mode has tests of its own.
    monkeypatch.setenv("MAXSIM_FORGE_COMPILE", "blocking")
    reset(Lookup(user_path=tmp_path / "absent-user.db", shipped_paths=[]))
    yield
    reset()


def randn(*shape, dtype=torch.float16, device=DEVICE) -> torch.Tensor:
    """Random normal data of this test's seed (never zeros), made on the CPU so runs
    on any device draw the same values."""
    return torch.randn(*shape, generator=_Running.generator).to(device=device, dtype=dtype)


def rand(*shape, device=DEVICE) -> torch.Tensor:
    """Uniform [0, 1) data of this test's seed, made on the CPU."""
    return torch.rand(*shape, generator=_Running.generator).to(device)


def randint(low: int, high: int, shape: tuple[int, ...], device=DEVICE) -> torch.Tensor:
    """Integers in [low, high) of this test's seed, made on the CPU."""
    return torch.randint(low, high, shape, generator=_Running.generator).to(device)


def poisoned(shape, device=DEVICE) -> torch.Tensor:
    """An output buffer full of NaN: an element the kernel forgets to write fails the test."""
    return torch.full(shape, float("nan"), dtype=torch.float32, device=device)


def _at(t: torch.Tensor, where: list[list[int]]) -> list[float]:
    return [float(t[tuple(i)]) for i in where]


def assert_scores(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "", scale=None) -> None:
    """max|out - ref| / scale <= tol; on failure say how big, how many, where and the seed.

    ``scale`` is the magnitude of the terms each score adds up
    (``reference(..., absolute=True)``) where a test has it; else max|ref|.
    """
    assert out.dtype == torch.float32, f"{what}: output dtype {out.dtype}, expected float32; {seed_note()}"
    assert tuple(out.shape) == tuple(ref.shape), (
        f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}; {seed_note()}"
    )
    out64 = out.detach().double().cpu()
    ref64 = ref.detach().double().cpu()
    nan = torch.isnan(out64)
    if nan.any():
        where = torch.nonzero(nan)[:5].tolist()
        raise AssertionError(
            f"{what}: {int(nan.sum())} of {out64.numel()} outputs are NaN (unwritten?), first at {where}: "
            f"expected {_at(ref64, where)}; {seed_note()}"
        )
    if scale is None:
        scale = ref64.abs().max() if ref64.numel() else 0.0
    elif isinstance(scale, torch.Tensor):
        scale = scale.abs().max() if scale.numel() else 0.0
    scale = max(float(scale), 1e-30)
    err = (out64 - ref64).abs()
    bad = err > tol * scale
    if bad.any():
        where = torch.nonzero(bad)[:5].tolist()
        err = torch.nan_to_num(err, nan=-1.0)
        worst = [int(i) for i in torch.unravel_index(err.argmax(), err.shape)]
        raise AssertionError(
            f"{what}: max relative error {float(err.max()) / scale:.3e} > {tol:.0e} "
            f"(absolute {float(err.max()):.3e} at {worst}, scale {scale:.3e}); "
            f"{int(bad.sum())} of {out64.numel()} outputs mismatch, first at {where}: "
            f"got {_at(out64, where)}, expected {_at(ref64, where)}; {seed_note()}"
        )


def assert_exact(out: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """out equals expected element for element; on failure say how many differ, where and the seed."""
    out_c, exp_c = out.detach().cpu(), expected.detach().cpu()
    assert tuple(out_c.shape) == tuple(exp_c.shape), (
        f"{what}: shape {tuple(out_c.shape)} != {tuple(exp_c.shape)}; {seed_note()}"
    )
    differ = ~((out_c == exp_c) | (torch.isnan(out_c) & torch.isnan(exp_c)))
    if differ.any():
        where = torch.nonzero(differ)[:5].tolist()
        raise AssertionError(
            f"{what}: {int(differ.sum())} of {out_c.numel()} outputs differ, first at {where}: "
            f"got {_at(out_c.double(), where)}, expected {_at(exp_c.double(), where)}; {seed_note()}"
        )
