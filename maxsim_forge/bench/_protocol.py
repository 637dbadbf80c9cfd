"""The protocol of ``maxsim-forge bench``: a process per (implementation, case),
correctness enforced before any timing, repetitions interleaved across implementations.

For each case the coordinator starts one worker process per implementation, one at a
time, each with empty Triton, maxsim-forge and home caches of its own, so every peer's
autotune runs for the case it is timed on (nothing carries over from another case or an
earlier run). A worker builds the case's inputs (seeded, so every worker sees the same
data), makes its first call (compile and autotune: reported beside the warm time),
checks its whole output against the float64 reference (chunked) and stops there if it
fails: a failed implementation gets no time. Then the coordinator asks the ready workers
for one timing each, N times over, in an order rotated every repetition, so drifts of
clock or temperature fall on every implementation alike.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ._stats import geometric_mean, median_interval

PEERS = ("flash-maxsim", "late-interaction-kernels")
FORGE = "maxsim-forge"
# How long a worker may take to answer: its start (inputs, compile and autotune, the
# float64 reference of a large case) and one timing.
START_TIMEOUT_S = 1800.0
TIME_TIMEOUT_S = 600.0


@dataclass
class Worker:
    """One implementation on one case, in a process of its own."""

    impl: str
    case: dict
    proc: subprocess.Popen | None = None
    status: str = "starting"  # ready | failed | missing | n/a | crashed
    info: dict = field(default_factory=dict)
    times: list[dict] = field(default_factory=list)

    def ask(self, message: dict, timeout_s: float) -> dict:
        """Send one command and wait at most ``timeout_s`` for its one-line answer; a worker
        that exits or hangs is reported as crashed (and a hung one is killed)."""
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            self.proc.kill()
            return {"status": "crashed", "error": f"no answer to {message['op']!r} within {timeout_s:.0f} s"}
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()[-2000:] if self.proc.stderr else ""
            return {"status": "crashed", "error": err or "the worker exited"}
        return json.loads(line)


def _env(folder: str) -> dict:
    """A worker's environment: caches and home of its own, blocking compiles."""
    env = dict(os.environ)
    for name, sub in (("TRITON_CACHE_DIR", "triton"), ("MAXSIM_FORGE_CACHE", "kernels"),
                      ("XDG_CACHE_HOME", "cache"), ("HOME", "home")):
        path = os.path.join(folder, sub)
        os.makedirs(path, mode=0o700, exist_ok=True)
        env[name] = path
    env["MAXSIM_FORGE_COMPILE"] = "blocking"
    env.setdefault("LIK_SUPPRESS_NORM_WARN", "1")
    return env


def start(impl: str, case: dict, *, device: str, seed: int, folder: str, ref_path: str) -> Worker:
    worker = Worker(impl, case)
    worker.proc = subprocess.Popen(
        [sys.executable, "-m", "maxsim_forge.bench._worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=_env(folder), bufsize=1,
    )
    reply = worker.ask({"op": "start", "impl": impl, "case": case, "device": device, "seed": seed,
                        "ref_path": ref_path}, START_TIMEOUT_S)
    worker.status = reply.pop("status")
    worker.info = reply
    if worker.status != "ready":
        stop(worker)
    return worker


def stop(worker: Worker) -> None:
    if worker.proc is None:
        return
    try:
        if worker.proc.poll() is None:
            worker.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            worker.proc.stdin.flush()
            worker.proc.wait(timeout=60)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        worker.proc.kill()
    worker.proc = None


def run_case(case: dict, impls: list[str], *, device: str, repeats: int, seed: int = 0,
             log: Callable[[str], None] = print) -> list[Worker]:
    """Every implementation on one case: started one at a time, then timed ``repeats``
    times in a rotated order."""
    with tempfile.TemporaryDirectory(prefix="maxsim-forge-bench-") as root:
        ref_path = os.path.join(root, "reference.pt")
        workers = []
        for impl in impls:
            worker = start(impl, case, device=device, seed=seed, folder=os.path.join(root, impl), ref_path=ref_path)
            workers.append(worker)
            log(f"  {case['name']:28s} {impl:26s} {worker.status}"
                + (f" (first call {worker.info['first_call_s']:.2f} s, rel. error {worker.info['rel_err']:.1e})"
                   if worker.status == "ready" else f": {worker.info.get('error', '')}"[:300]))
        ready = [w for w in workers if w.status == "ready"]
        try:
            for r in range(repeats):
                for worker in ready[r % max(len(ready), 1):] + ready[: r % max(len(ready), 1)]:
                    if worker.status != "ready":
                        continue
                    reply = worker.ask({"op": "time"}, TIME_TIMEOUT_S)
                    if reply.get("status") != "ok":
                        worker.status, worker.info["error"] = "crashed", reply.get("error", "")
                        continue
                    worker.times.append(reply)
        finally:
            for worker in workers:
                stop(worker)
    return workers


@dataclass
class CaseResult:
    """One case: each implementation's status, first-call time and timings, and the
    ratio of the faster peer's time to maxsim-forge's, per repetition."""

    case: dict
    impls: dict  # impl -> {"status", "first_call_s", "rel_err", "extra_mb", "ms": Interval-dict, "per_call_ms"}
    ratio: dict | None  # Interval-dict of the per-repetition ratios, or None
    floor_ms: float | None = None


def summarise(case: dict, workers: list[Worker], floor_ms: float | None = None) -> CaseResult:
    impls = {}
    for w in workers:
        entry = {"status": w.status, **{k: v for k, v in w.info.items() if k != "status"}}
        if w.times:
            entry["ms"] = asdict(median_interval([t["ms"] for t in w.times]))
            entry["per_call_ms"] = asdict(median_interval([t["per_call_ms"] for t in w.times]))
            if floor_ms:
                entry["floor_pct"] = 100 * floor_ms / entry["ms"]["median"]
        impls[w.impl] = entry
    ratio = None
    forge = next((w for w in workers if w.impl == FORGE and w.times), None)
    peers = [w for w in workers if w.impl in PEERS and w.times]
    if forge and peers:
        n = min([len(forge.times)] + [len(p.times) for p in peers])
        per_rep = [min(p.times[r]["ms"] for p in peers) / forge.times[r]["ms"] for r in range(n)]
        ratio = asdict(median_interval(per_rep))
        ratio["peers"] = [p.impl for p in peers]
    return CaseResult(case, impls, ratio, floor_ms)


def geomean_of_medians(results: list[CaseResult]) -> float | None:
    ratios = [r.ratio["median"] for r in results if r.ratio]
    return geometric_mean(ratios) if ratios else None


