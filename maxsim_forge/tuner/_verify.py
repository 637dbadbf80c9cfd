"""Check stored winners against the float64 reference on fresh random data."""

from __future__ import annotations

import torch

from .._problems import Sizes, relative_error, synth, tolerance
from ..codegen import ConfigError, KernelConfig, KernelSpec, load_variant
from ..tuned_db import TunedDB
from ._compile import classify

# Docs per check; the interpreter also shrinks the token counts.
_DOCS = 16


def verify_winners(db: TunedDB, *, seed: int = 0, device: str = "cuda") -> list[tuple[str, str, str, str]]:
    """One row per winner: (bucket, config, status, detail). Status ``ok`` or a failure."""
    rows = []
    for i, w in enumerate(db.winners()):
        precision = w["precision"] if w["dtype"] == "fp32" else "tf32"
        d_mask = "lengths" if w["layout"] in ("padded", "allpairs") else "none"
        spec = KernelSpec(w["layout"], w["dtype"], w["dim"], precision, "none", d_mask)
        sizes = Sizes(w["nq_bucket"], w["lq_bucket"], _DOCS, w["ld_bucket"])
        if device == "cpu":
            sizes = Sizes(min(sizes.nq, 3), min(sizes.lq, 8), 3, min(sizes.ld, 24))
        label = f"{w['gpu']} {w['layout']}/{w['dtype']}/d{w['dim']} nq{w['nq_bucket']} lq{w['lq_bucket']} ld{w['ld_bucket']} nb{w['nb_bucket']}"
        cfg = KernelConfig.from_dict(w["config"])
        try:
            problem = synth(spec, sizes, device=device, seed=seed * 7919 + i)
            module = load_variant(problem.prep.spec, cfg, smem_limit=w.get("smem_limit"))
            out = module.launch(problem.prep.q, problem.prep.d, **problem.prep.launch_kwargs)
            err = relative_error(out, problem.expected(), problem.scale())
            tol = tolerance(problem.prep.spec)
            status, detail = ("ok", f"rel err {err:.1e}") if err <= tol else ("mismatch", f"rel err {err:.1e} > {tol:.0e}")
        except ConfigError as exc:
            status, detail = "pruned_static", str(exc)[:200]
        except Exception as exc:  # noqa: BLE001 - reported per row
            status, detail = classify(exc), str(exc)[:200]
        rows.append((label, cfg.key(), status, detail))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rows
