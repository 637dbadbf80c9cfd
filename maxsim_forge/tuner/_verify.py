"""Check stored winners against the float64 reference on fresh random data."""

from __future__ import annotations

import torch

from .._keys import Sizes
from .._problems import relative_error, synth, tolerance
from ..codegen import KernelConfig, KernelSpec, is_current, kernel_hash, load_variant, template_hash, winners_config_of
from ..tuned_db import BucketKey, TunedDB, scan_winners
from ._compile import MISMATCH, OK, RUNTIME_FAILED, classify

# Docs per check; the interpreter also shrinks the token counts.
_DOCS = 16


def check_variant(
    spec: KernelSpec, cfg: KernelConfig, sizes: Sizes, *, device: str, seed: int,
    smem_limit: int | None = None, skew: bool = False,
) -> tuple[str, str]:
    """Run ``cfg`` on a fresh random problem into a NaN-poisoned output and compare with
    the float64 reference: (status, detail), status ``ok`` or why not."""
    try:
        problem = synth(spec, sizes, device=device, seed=seed, skew=skew)
        variant = load_variant(problem.prep.spec, cfg, smem_limit=smem_limit)
        k = problem.prep.launch_kwargs
        shape = (k["nb"],) if problem.prep.spec.layout == "pairs" else (k["nq"], k["nb"])
        out = torch.full(shape, float("nan"), dtype=torch.float32, device=device)
        variant.launch(problem.prep.q, problem.prep.d, out=out, **k)
    except Exception as exc:  # noqa: BLE001 - a failing candidate is data
        return classify(exc), str(exc)[-2000:]
    err = relative_error(out, problem.expected(), problem.scale())
    tol = tolerance(problem.prep.spec)
    if not err <= tol:  # NaN fails too
        return MISMATCH, f"max relative error {err:.3e} > {tol:.0e}"
    return OK, f"max relative error {err:.1e}"


# The status of a row that breaks the database's schema: it is never run.
BAD_ROW = "bad_row"


def verify_winners(db: TunedDB, *, seed: int = 0, device: str = "cuda") -> list[tuple[str, str, str, str]]:
    """One row per winner: (bucket, config, status, detail). Status ``ok`` or a failure;
    a row that breaks the schema is listed with status ``bad_row`` and the field, not run."""
    winners, bad = scan_winners(db.db, where=str(db.path))
    rows = [(exc.row, "-", BAD_ROW, f"field {exc.field}: {exc.why}"[:200]) for exc in bad]
    for i, w in enumerate(winners):
        precision = w["precision"] if w["dtype"] == "fp32" else "tf32"
        # Ragged rows (and rows that did not record their docs) are checked with lengths.
        ragged = w["layout"] in ("padded", "allpairs") and w.get("docs") != "full"
        d_mask = "lengths" if ragged else "none"
        spec = KernelSpec(w["layout"], w["dtype"], w["dim"], precision, "none", d_mask, w.get("codes", "none"))
        key = BucketKey.from_row(w)
        sizes = Sizes(nq=key.nq_bucket, lq=key.lq_bucket, nb=_DOCS, ld=key.ld_bucket)
        if device == "cpu":
            sizes = Sizes(nq=min(sizes.nq, 3), lq=min(sizes.lq, 8), nb=3, ld=min(sizes.ld, 24))
        label = f"{w['gpu']} {key.label()}"
        if w.get("op", "fwd") == "bwd":  # the backward's winners kernel
            rows.append((label, *_check_backward(spec, w, sizes, device, seed * 7919 + i)))
            continue
        cfg = KernelConfig.from_dict(w["config"])
        status, detail = check_variant(spec, cfg, sizes, device=device, seed=seed * 7919 + i,
                                       smem_limit=w.get("smem_limit"))
        rows.append((label, cfg.key(), status, detail[:200]))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rows


def _check_backward(spec: KernelSpec, row: dict, sizes: Sizes, device: str, seed: int) -> tuple[str, str, str]:
    """(config, status, detail) of a backward row: its winners on fresh data, each a maximum
    of its row."""
    from ..runtime import winners
    from ._backward import check_winners_output

    cfg = winners_config_of(row["config"])
    try:
        prep = synth(spec, sizes, device=device, seed=seed).prep
        why = check_winners_output(prep, winners(prep, cfg))
    except Exception as exc:  # noqa: BLE001 - reported per row
        return cfg.key(), RUNTIME_FAILED, f"{type(exc).__name__}: {exc}"[:200]
    return (cfg.key(), MISMATCH, why[:200]) if why else (cfg.key(), OK, "winners are row maxima")


def stamp_kernel_hash(row: dict) -> dict:
    """A winner stored without a kernel hash, tuned with the current template, gets the
    hash of its kernels (what the template renders for it now); any other row is
    returned as it is."""
    if row.get("kernel_hash") or row.get("template_hash") != template_hash():
        return row
    cfg = KernelConfig.from_dict(row["config"])
    return {**row, "kernel_hash": kernel_hash(row["layout"], row["dtype"], row["dim"], row["precision"], cfg,
                                              codes=row.get("codes", "none"))}


def stale_winners(rows: list[dict]) -> list[dict]:
    """The rows whose kernels this version no longer generates: lookups skip them."""
    return [row for row in rows if not is_current(row)]
