"""Compile candidates in parallel worker processes, so the timing process only loads them.

Each worker renders a variant and runs it once on a small problem of the same spec
and the same strides; Triton's on-disk cache then holds the compiled kernel for the
process that times it. A crash, an out-of-resources error or a hang (timeout) costs
that candidate only.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import traceback
from dataclasses import dataclass

from ..codegen import ConfigError, KernelConfig, KernelSpec, validate
from .._keys import Sizes
from .._problems import synth

# Statuses stored with every trial.
OK = "ok"
PRUNED_STATIC = "pruned_static"
COMPILE_FAILED = "compile_failed"
RUNTIME_FAILED = "runtime_failed"
MISMATCH = "mismatch"
OUT_OF_RESOURCES = "out_of_resources"
TIMEOUT = "timeout"

# Docs in the small problem a worker compiles on.
_WARM_DOCS = 8


@dataclass(frozen=True)
class CompileJob:
    spec: KernelSpec
    config: KernelConfig
    sizes: Sizes
    device: str
    smem_limit: int | None = None


def classify(exc: BaseException) -> str:
    """Map an exception from rendering, compiling or launching to a trial status."""
    if isinstance(exc, ConfigError):
        return PRUNED_STATIC
    text = f"{type(exc).__name__}: {exc}"
    if "OutOfResources" in text or "out of resource" in text.lower():
        return OUT_OF_RESOURCES
    compile_markers = ("CompilationError", "CompileTimeAssertionFailure", "PTXAS", "ptxas", "MLIR", "lowering")
    if any(m in text for m in compile_markers):
        return COMPILE_FAILED
    return RUNTIME_FAILED


def compile_one(job: CompileJob) -> tuple[str, str]:
    """Render and run ``job`` once on a small problem; return (status, message)."""
    from ..runtime import launch_prepared

    try:
        validate(job.spec, job.config, smem_limit=job.smem_limit)
        problem = synth(job.spec, job.sizes.scaled(_WARM_DOCS), device=job.device, seed=0)
        launch_prepared(problem.prep, job.config, smem_limit=job.smem_limit)
        if job.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return OK, ""
    except Exception as exc:  # every failure is data for the tuner
        return classify(exc), "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]


def _worker_init(cuda_device: str | None) -> None:
    if cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_device


class CompilePool:
    """Worker processes kept across batches and buckets: each pays its start-up (torch,
    CUDA context) once. A pool broken by a crashing candidate is replaced."""

    def __init__(self, workers: int, cuda_device: str | None = None):
        self.workers = workers
        self.cuda_device = cuda_device
        self._pool: cf.ProcessPoolExecutor | None = None

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=mp.get_context("spawn"),
                initializer=_worker_init, initargs=(self.cuda_device,),
            )
        return self._pool

    def run(self, jobs: list[CompileJob], timeout_s: float = 300.0) -> list[tuple[str, str]]:
        if self.workers <= 1 or len(jobs) <= 1:
            return [compile_one(job) for job in jobs]
        results: list[tuple[str, str]] = [(TIMEOUT, "not finished")] * len(jobs)
        pool = self._executor()
        futures = {pool.submit(compile_one, job): i for i, job in enumerate(jobs)}
        broken = False
        try:
            for fut in cf.as_completed(futures, timeout=timeout_s):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as exc:  # a worker died: that candidate failed
                    results[i] = (COMPILE_FAILED, f"worker died: {exc!r}"[:2000])
                    broken = True
        except cf.TimeoutError:
            for fut, i in futures.items():
                if not fut.done():
                    results[i] = (TIMEOUT, f"not compiled within {timeout_s:.0f} s")
            broken = True
        if broken:  # start afresh next time: a hung or dead worker must not cost later batches
            self.close()
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> CompilePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def compile_many(
    jobs: list[CompileJob],
    *,
    workers: int,
    timeout_s: float = 300.0,
    cuda_device: str | None = None,
) -> list[tuple[str, str]]:
    """Compile ``jobs`` in ``workers`` fresh processes (in this process when workers <= 1)."""
    with CompilePool(workers, cuda_device) as pool:
        return pool.run(jobs, timeout_s)
