"""The bench's tables, files and chart: what people compare."""

from __future__ import annotations

import csv
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ._protocol import FORGE, CaseResult, geomean_of_medians


def _interval(d: dict | None, fmt: str = "{:.4f}") -> str:
    if not d:
        return "-"
    return f"{fmt.format(d['median'])} [{fmt.format(d['low'])}, {fmt.format(d['high'])}]"


def format_report(results: list[CaseResult], meta: dict, title: str = "cases") -> list[str]:
    """One line per case and implementation, then maxsim-forge against the faster peer:
    the median ratio with its interval (and that interval's coverage), and the geometric
    mean of the medians."""
    lines = [f"{title}: {meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}, {meta['date']}, "
             f"{meta['repeats']} repetitions"]
    lines.append(f"{'case':36s} {'implementation':26s} {'status':8s} {'median ms [interval]':32s} "
                 f"{'floor':>6s} {'first call':>10s}")
    for r in results:
        for impl, e in r.impls.items():
            floor = f"{e['floor_pct']:5.1f}%" if "floor_pct" in e else "-"
            first = f"{e['first_call_s']:.2f} s" if "first_call_s" in e else "-"
            status = e["status"] if e["status"] != "ready" else "ok"
            lines.append(f"{r.case['name']:36s} {impl:26s} {status:8s} {_interval(e.get('ms')):32s} "
                         f"{floor:>6s} {first:>10s}" + (f"  {e['error'][:120]}" if e.get("error") else ""))
    versus = [r for r in results if r.ratio]
    if versus:
        lines.append(f"{'case':36s} {FORGE + ' vs the faster peer':40s}")
        for r in versus:
            cov = r.ratio["coverage"]
            lines.append(f"{r.case['name']:36s} {_interval(r.ratio, '{:.2f}')}x  "
                         f"(interval coverage {cov:.0%}, peers {', '.join(r.ratio['peers'])})")
        lines.append(f"geometric mean of the median ratios: {geomean_of_medians(results):.2f}x over {len(versus)} cases")
    return lines


def release_folder(gpu: str | None = None, date: str | None = None, root: str | Path = "benchmarks/results") -> Path:
    """A release run's folder, ``<root>/<gpu>-<date>``: ``benchmarks/results/h100-2026-11-27``
    for an "NVIDIA H100 80GB HBM3" that day. ``gpu`` defaults to this CUDA device ("cpu"
    without one), shortened to its first word holding a digit; ``date`` to today."""
    date = time.strftime("%Y-%m-%d") if date is None else date
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise ValueError(f"date is {date!r}; accepted: YYYY-MM-DD, e.g. 2026-11-27")
    gpu = (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu") if gpu is None else gpu
    words = [w for w in re.split(r"[^0-9a-z]+", gpu.lower()) if w and w != "nvidia"] or ["gpu"]
    short = next((w for w in words if any(c.isdigit() for c in w)), "-".join(words))
    return Path(root) / f"{short}-{date}"


def _rows(results: list[CaseResult], meta: dict) -> list[dict]:
    rows = []
    for r in results:
        for impl, e in r.impls.items():
            ms, per_call = e.get("ms") or {}, e.get("per_call_ms") or {}
            rows.append({"case": r.case["name"], "impl": impl, "status": e["status"],
                         "ms": ms.get("median"), "ms_low": ms.get("low"), "ms_high": ms.get("high"),
                         "per_call_ms": per_call.get("median"), "floor_ms": r.floor_ms, "floor_pct": e.get("floor_pct"),
                         "first_call_s": e.get("first_call_s"), "rel_err": e.get("rel_err"),
                         "extra_mb": e.get("extra_mb"), "error": e.get("error", ""), **meta})
    return rows


def write(results: list[CaseResult], meta: dict, out_dir: str | Path, name: str = "bench",
          chart: bool = True) -> list[Path]:
    """``<name>.csv`` (a row per case and implementation, with the GPU, versions and date),
    ``<name>.json`` (everything, with every repetition's interval) and, with ``chart``,
    ``<name>.png`` (median times with their intervals) where matplotlib is installed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.csv", out_dir / f"{name}.json"]
    rows = _rows(results, meta)
    # Each file whole or not at all (written beside, then moved over): a run stopped while
    # writing keeps the cases an earlier write holds.
    tmp_csv, tmp_json = (p.with_name(p.name + ".tmp") for p in paths)
    with open(tmp_csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        writer.writerows(rows)
    tmp_json.write_text(json.dumps({**meta, "cases": [asdict(r) for r in results],
                                    "geomean_of_median_ratios": geomean_of_medians(results)}, indent=1))
    os.replace(tmp_csv, paths[0])
    os.replace(tmp_json, paths[1])
    png = _chart(results, meta, out_dir / f"{name}.png") if chart else None
    return paths + ([png] if png else [])


def _chart(results: list[CaseResult], meta: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases = [r.case["name"] for r in results]
    impls = list(dict.fromkeys(i for r in results for i, e in r.impls.items() if e.get("ms")))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(cases)), 5))
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        xs, ys, lo, hi = [], [], [], []
        for j, r in enumerate(results):
            ms = (r.impls.get(impl) or {}).get("ms")
            if ms:
                xs.append(j + i * width)
                ys.append(ms["median"])
                lo.append(ms["median"] - ms["low"])
                hi.append(ms["high"] - ms["median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=impl)
    ax.set_yscale("log")
    ax.set_ylabel("median time, ms (log), with its interval")
    ax.set_xticks([j + width * (len(impls) - 1) / 2 for j in range(len(cases))])
    ax.set_xticklabels(cases, rotation=30, ha="right")
    ax.set_title(f"MaxSim, {meta['gpu']}, {meta['date']}, {meta['repeats']} repetitions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
