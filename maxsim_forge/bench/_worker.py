"""One implementation on one case, in a process of its own (``bench._protocol``).

Reads one JSON command per line on stdin and answers one JSON line on stdout:
``start`` (inputs, first call, correctness, extra memory), ``time`` (one timing),
``quit``. Anything else the libraries print goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

# Tolerances of the full output against float64, relative to the magnitude of the terms
# a score adds up: fp16 and bf16 products are exact in fp32 but some peers round their
# sums or maxima in the inputs' dtype; tf32 rounds inputs to 10 mantissa bits.
TOLERANCE = {"fp16": 5e-3, "bf16": 1e-2, "fp32": 5e-3}


class _Session:
    def __init__(self):
        self.fn = None
        self.device = "cpu"

    def start(self, msg: dict) -> dict:
        from ._cases import Case, as_tensor, make_inputs, reference_of, resolve_impl

        case = Case(**msg["case"])
        self.device = msg["device"]
        x = make_inputs(case, self.device, seed=msg["seed"])
        try:
            fn = resolve_impl(msg["impl"])(x)
        except ImportError as exc:
            return {"status": "missing", "error": f"not installed ({exc})"}
        if fn is None:
            return {"status": "n/a", "error": "does not take this layout"}
        self._sync()
        t0 = time.perf_counter()
        try:
            out = as_tensor(fn())
            self._sync()
        except Exception as exc:  # a peer's failure is a result, reported as one
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:1000]}
        first = time.perf_counter() - t0
        ref, scale = self._reference(x, msg["ref_path"], reference_of)
        err = float((out.double().reshape(ref.shape) - ref).abs().max()) / max(scale, 1e-30) if ref.numel() else 0.0
        if not err <= TOLERANCE[case.dtype]:  # NaN fails too
            return {"status": "failed", "first_call_s": first, "rel_err": err,
                    "error": f"relative error {err:.3e} over the whole output, above {TOLERANCE[case.dtype]:.0e}"}
        self.fn = fn
        return {"status": "ready", "first_call_s": first, "rel_err": err, "extra_mb": self._extra_mb()}

    def _reference(self, x, path: str, reference_of) -> tuple[torch.Tensor, float]:
        if os.path.exists(path):
            saved = torch.load(path, map_location=self.device)
            return saved["ref"], saved["scale"]
        ref = reference_of(x)
        scale = float(reference_of(x, absolute=True).abs().max()) if ref.numel() else 1.0
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save({"ref": ref, "scale": scale}, tmp)
        os.replace(tmp, path)
        return ref, scale

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _extra_mb(self) -> float:
        if not self.device.startswith("cuda"):
            return float("nan")
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    def time(self) -> dict:
        from ..tuner import time_fn

        timing = time_fn(self.fn, device=self.device, rep_ms=200)
        per_call = per_call_ms(self.fn, timing.median_ms, self.device.startswith("cuda"))
        return {"status": "ok", "ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms,
                "per_call_ms": per_call}


def per_call_ms(fn, median_ms: float, on_gpu: bool, budget_ms: float = 100.0) -> float:
    """Time per call of calls made back to back for about ``budget_ms``, then one sync.

    ``do_bench`` times each call between events after an L2 flush, which hides the host
    time spent while the flush runs; this counts it, as a serving loop sees it."""
    n = max(3, min(2000, int(budget_ms / max(median_ms, 1e-3))))
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e3 / n


def main() -> None:
    # Answers go to the real stdout; whatever the libraries print goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    session = _Session()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "quit":
            break
        try:
            reply = session.start(msg) if msg["op"] == "start" else session.time()
        except Exception as exc:
            reply = {"status": "crashed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        answers.write(json.dumps(reply) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
