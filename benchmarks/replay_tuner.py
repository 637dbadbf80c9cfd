"""The tuner, judged: replay every search strategy on exhaustive tables (no GPU needed).

For each table (``exhaustive-*.json`` from ``collect_exhaustive.py``, or the older
three-bucket file of ``bench_tuner.py --exhaustive``), each strategy runs over N seeds
with ``tune``'s trial budget; printed and written as JSON: trials until a config within
3% of the table's best was timed (median, quartiles, worst, the share of seeds that got
there within the budget), the heuristic default's rank and gap, and whether TPE needs
fewer trials than random sampling (one-sided Mann-Whitney U).

    python benchmarks/replay_tuner.py benchmarks/results/h100-2026-12-06
    python benchmarks/replay_tuner.py exhaustive-h100-2026-11-27.json --budget 24 --batch 15
    python benchmarks/replay_tuner.py TABLES --seeded          # the heuristic and its twins first, as tune
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# The buckets of bench_tuner.py's older tables, by the names it gave them.
OLD_BUCKETS = {
    "colbert-1k": dict(layout="padded", dtype="fp16", dim=128, lq=32, ld=300, nb=1000, d_mask="lengths",
                       name="colbert"),
    "multi-16x1k": dict(layout="allpairs", dtype="fp16", dim=128, nq=16, lq=32, ld=300, nb=1000, name="multi-query"),
    "image-query": dict(layout="padded", dtype="fp16", dim=128, lq=1024, ld=1024, nb=1000, name="image-query"),
}
# The devices those tables came from, with the limits bench_tuner.py assumed for them.
OLD_GPUS = {"NVIDIA H100 80GB HBM3": ("NVIDIA_H100_80GB_HBM3", "9.0", 132, 232_448)}


def from_old(doc: dict, source: str) -> list:
    """The tables of a ``bench_tuner.py --exhaustive`` file: timed in an older space (no
    exact_k, overlap_max, masked_loop or defer_max; no tile or persist mode; query tiles
    up to 128 rows) with older kernels. The replay narrows today's space to their configs."""
    from maxsim_forge._keys import GpuInfo
    from maxsim_forge.tuner import ExhaustiveTable

    if doc.get("gpu") not in OLD_GPUS:
        raise ValueError(f"{source}: GPU {doc.get('gpu')!r} has no known limits; accepted: {', '.join(OLD_GPUS)}")
    gpu = GpuInfo(*OLD_GPUS[doc["gpu"]])
    tables = []
    for b in doc["buckets"]:
        if b.get("name") not in OLD_BUCKETS:
            raise ValueError(f"{source}: bucket {b.get('name')!r}; accepted: {', '.join(OLD_BUCKETS)}")
        note = (f"old table ({source}, bucket {b['name']}): bench_tuner.py's space, before the tile, persist, "
                "masked_loop, exact_k, overlap_max, defer_max knobs and 256-row tiles; older kernels")
        head = {"format": "maxsim-forge exhaustive table", "version": 1, "bucket": {**OLD_BUCKETS[b["name"]]},
                "gpu": gpu.__dict__, "versions": {"torch": doc["torch"], "triton": doc["triton"]},
                "date": doc["date"], "space_hash": "old", "complete": True, "note": note,
                "rows": b["configs"]}
        tables.append(ExhaustiveTable.from_json(head, source=f"{source} [{b['name']}]"))
    return tables


def load_tables(paths: list[str]) -> list:
    from maxsim_forge.tuner import ExhaustiveTable

    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("exhaustive*.json")) if p.is_dir() else [p]
    if not files:
        raise ValueError(f"no exhaustive*.json table in {', '.join(paths)}")
    tables = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{f} is not JSON: {exc}") from None
        tables += from_old(doc, f.name) if isinstance(doc, dict) and "buckets" in doc else [ExhaustiveTable.load(f)]
    return tables


def _n(x: float | None) -> str:
    return "never" if x is None else f"{x:g}"


def report(table, j) -> dict:
    """Print one table's judgement; its JSON form."""
    gpu = table.gpu.name
    print(f"\n{j.bucket} on {gpu}, {table.date} ({', '.join(f'{k} {v}' for k, v in table.versions.items())})")
    if table.note:
        print(f"  {table.note}")
    print(f"  {j.configs} configs searched, {j.within_band} within 3% of the best"
          + (f"; {j.space}" if j.space else ""))
    h = j.heuristic
    print(f"  heuristic alone: {h['config']}: " + (f"rank {h['rank']} of {h['of']}, {h['gap']:.3f}x the best"
                                                   if h["rank"] else h["status"]))
    print(f"  {'strategy':12s} {'reached':>7s} {'median':>7s} {'q1':>6s} {'q3':>6s} {'worst':>6s} {'best found':>10s}")
    for s in j.summaries.values():
        r = s.as_row()
        print(f"  {s.strategy:12s} {r['reached']:7.0%} {_n(r['median']):>7s} {_n(r['q1']):>6s} {_n(r['q3']):>6s} "
              f"{_n(r['worst']):>6s} {r['best_ratio']:9.3f}x")
    print(f"  {j.verdict()}")
    return {"bucket": j.bucket, "gpu": gpu, "date": table.date, "versions": table.versions, "note": table.note,
            "space": j.space, "configs": j.configs, "within_band": j.within_band, "heuristic": j.heuristic,
            "strategies": [s.as_row() for s in j.summaries.values()], "tpe_vs_random": j.tpe_vs_random,
            "verdict": j.verdict()}


def main(argv: list[str] | None = None) -> Path:
    import optuna

    from maxsim_forge.tuner import STRATEGIES, judge

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="+", help="table files, or folders of exhaustive*.json")
    ap.add_argument("--seeds", type=int, default=20, help="seeds per strategy")
    ap.add_argument("--budget", type=int, default=64, help="trial budget (tune --trials)")
    ap.add_argument("--batch", type=int, default=1,
                    help="proposals asked before any is told (tune's compile workers: 15 on a 16-core GPU host)")
    ap.add_argument("--seeded", action="store_true", help="enqueue the heuristic default and its twins first, as tune")
    ap.add_argument("--strategies", default=",".join(s for s in STRATEGIES if s != "gp"),
                    help=f"comma-separated, of {', '.join(STRATEGIES)} (gp is slow: minutes a run)")
    ap.add_argument("--out", default=None, help="JSON file (default: beside the first table)")
    args = ap.parse_args(argv)
    strategies = tuple(s for s in args.strategies.split(",") if s)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        ap.error(f"--strategies: {unknown[0]!r} is unknown; accepted: {', '.join(STRATEGIES)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tables = load_tables(args.tables)
    how = (f"{args.seeds} seeds, budget {args.budget} trials, batches of {args.batch}, "
           + ("seeded with the heuristic default (fitted to older tables: in-sample)" if args.seeded
              else "no heuristic seed"))
    print(f"Replay: {how}. Trials until a config within 3% of the table's best was timed (distinct configs, "
          "as tune counts its budget); reached: the share of seeds that got there within the budget")
    results = []
    for table in tables:
        j = judge(table, strategies, seeds=args.seeds, budget=args.budget, batch=args.batch, seeded=args.seeded)
        results.append(report(table, j))
    first = Path(args.tables[0])
    folder = first if first.is_dir() else first.parent
    out = Path(args.out) if args.out else folder / (
        f"replay-tuner-b{args.budget}-x{args.batch}{'-seeded' if args.seeded else ''}.json")
    out.write_text(json.dumps({"settings": {**vars(args), "strategies": list(strategies)},
                               "what": {s: STRATEGIES[s].what for s in strategies}, "tables": results}, indent=1))
    print(f"\nwrote {out}")
    return out


if __name__ == "__main__":
    main()
