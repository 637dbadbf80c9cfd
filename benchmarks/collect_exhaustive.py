"""Time every valid config of a few buckets: the exhaustive tables the tuner is judged on.

Each config of the bucket's current space is compiled (in parallel, through the tuner's
compile pool), checked against the float64 reference and timed exactly as ``tune``
does (BucketTuner's check and timer: the representative size and the low end of the
bucket's doc-count range, geometric mean). One JSON table per bucket goes into the
release folder; a second run resumes it (configs already timed are skipped), so
``--time-budget`` can split the work. ``benchmarks/replay_tuner.py`` replays the
searches on the tables.

    python benchmarks/collect_exhaustive.py                      # GPU: the three buckets below
    python benchmarks/collect_exhaustive.py --time-budget 1800   # stop starting new configs after 30 min
    TRITON_INTERPRET=1 python benchmarks/collect_exhaustive.py --max-configs 4   # CPU: shrunk buckets
"""

from __future__ import annotations

import argparse
import os
import random
import re
import time
from pathlib import Path

# Labels of the default preset's buckets: ColBERT B 1k, image as query, 16 shared queries.
BUCKETS = (
    "colbert padded/fp16/dim128 nq1 lq32 nb1024 ld512 ragged",
    "image-query padded/fp16/dim128 nq1 lq1024 nb1024 ld1024",
    "multi-query allpairs/fp16/dim128 nq16 lq32 nb1024 ld512",
)


def select(labels: tuple[str, ...]):
    """The default preset's buckets with exactly these labels, in this order."""
    from maxsim_forge.tuner import PRESETS

    by_label = {b.label(): b for b in PRESETS["default"]}
    unknown = [label for label in labels if label not in by_label]
    if unknown:
        raise ValueError(f"--bucket {unknown[0]!r} is no label of the default preset; labels look like "
                         f"{BUCKETS[0]!r} (`maxsim-forge tune --preset default` lists them)")
    return [by_label[label] for label in labels]


def table_path(out: Path, bucket) -> Path:
    return out / ("exhaustive-" + re.sub(r"[^0-9a-z]+", "-", bucket.label().lower()).strip("-") + ".json")


def _versions() -> dict[str, str]:
    import torch
    import triton

    from maxsim_forge import __version__
    from maxsim_forge.codegen import template_hash

    return {"torch": torch.__version__, "triton": triton.__version__, "maxsim_forge": __version__,
            "template_hash": template_hash()}


def open_table(path: Path, bucket, gpu):
    """The table at ``path`` to resume, or a new one; one of another bucket, GPU, space
    or version is refused (its times would not compare with this run's)."""
    from maxsim_forge.tuner import space_hash
    from maxsim_forge.tuner import ExhaustiveTable

    fresh = ExhaustiveTable(bucket, gpu, _versions(), time.strftime("%Y-%m-%d"), space_hash())
    if not path.exists():
        return fresh
    table = ExhaustiveTable.load(path)
    for what in ("bucket", "gpu", "space_hash", "versions"):
        if getattr(table, what) != getattr(fresh, what):
            raise ValueError(f"{path} was collected with {what} {getattr(table, what)!r}, this run has "
                             f"{getattr(fresh, what)!r}: move it away or pass another --out")
    return table


def collect_bucket(bucket, *, out: Path, gpu, device: str, pool, deadline: float | None,
                   max_configs: int | None, seed: int = 0, progress: bool = True):
    """Time the configs of ``bucket`` not yet in its table, appending to it; the table."""
    from tqdm.auto import tqdm

    from maxsim_forge.tuner import valid_configs
    from maxsim_forge.tuner._compile import COMPILE_FAILED, OK, PRUNED_STATIC, RUNTIME_FAILED, CompileJob, compile_one
    from maxsim_forge.tuner import TableRow
    from maxsim_forge.tuner._study import BucketTuner, TuneOptions

    path = table_path(out, bucket)
    table = open_table(path, bucket, gpu)
    configs = valid_configs(bucket.spec, bucket.sizes, sm_count=gpu.sm_count, smem_limit=gpu.smem_limit)
    random.Random(0).shuffle(configs)  # the same order every run: a capped or cut table samples the space
    done = {r.config for r in table.rows}
    room = len(configs) if max_configs is None else max(0, max_configs - len(done))
    todo = [c for c in configs if c not in done][:room]
    # The tuner's own check and timer; neither reads the database.
    tuner = BucketTuner(bucket, None, gpu, TuneOptions(seed=seed, device=device))
    chunk = max(1, 4 * getattr(pool, "workers", 1))
    bar = tqdm(total=len(todo), desc=bucket.label(), disable=not progress, dynamic_ncols=True)
    for start in range(0, len(todo), chunk):
        if deadline is not None and time.monotonic() > deadline:
            break
        batch = todo[start:start + chunk]
        jobs = [CompileJob(tuner.spec, cfg, bucket.sizes, device, gpu.smem_limit) for cfg in batch]
        compiled = pool.run(jobs) if device.startswith("cuda") else [compile_one(job) for job in jobs]
        for i, (cfg, (status, msg)) in enumerate(zip(batch, compiled)):
            status = COMPILE_FAILED if status == PRUNED_STATIC else status  # valid configs: a failure
            if status == OK:
                status, msg = tuner._check(cfg, seed=seed * 1_000_003 + len(table.rows) + 1)
            t = None
            if status == OK:
                try:
                    t = tuner._time(cfg)
                except Exception as exc:  # noqa: BLE001 - a failing candidate is data
                    status, msg = RUNTIME_FAILED, str(exc)
            if status != OK:
                bar.write(f"{cfg.key()}: {status}: {msg.splitlines()[-1] if msg else ''}"[:300])
            table.rows.append(TableRow(cfg, status, t))
            bar.update()
        table.complete = len(table.rows) == len(configs)
        table.save(path)
    bar.close()
    return table


def collect(labels: tuple[str, ...] = BUCKETS, *, out: str | Path | None = None, time_budget_s: float | None = None,
            max_configs: int | None = None, workers: int | None = None, seed: int = 0,
            progress: bool = True) -> list[Path]:
    """Collect the tables of ``labels`` (the default preset's); on CPU the buckets are
    shrunk for Triton's interpreter, as ``tune`` does. The tables' paths."""
    import torch

    from maxsim_forge._keys import INTERPRETER, gpu_info
    from maxsim_forge.bench import release_folder
    from maxsim_forge.codegen import interpreting
    from maxsim_forge.tuner._compile import CompilePool

    if max_configs is not None and max_configs < 1:
        raise ValueError(f"max_configs={max_configs}; accepted: a positive integer or None (every config)")
    on_gpu = torch.cuda.is_available() and not interpreting()
    device = "cuda" if on_gpu else "cpu"
    gpu = gpu_info(torch.device(device)) if on_gpu else INTERPRETER
    out = Path(out) if out else release_folder()
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or (max(1, min(16, (os.cpu_count() or 2) - 1)) if on_gpu else 1)
    deadline = time.monotonic() + time_budget_s if time_budget_s else None
    paths = []
    with CompilePool(workers) as pool:
        for bucket in select(tuple(labels)):
            bucket = bucket if on_gpu else bucket.tiny()
            table = collect_bucket(bucket, out=out, gpu=gpu, device=device, pool=pool, deadline=deadline,
                                   max_configs=max_configs, seed=seed, progress=progress)
            if not table.rows:
                print(f"{bucket.label()}: not reached (time budget)", flush=True)
                continue
            ok = [r.time_ms for r in table.rows if r.time_ms is not None]
            state = "complete" if table.complete else "not complete"
            best = f"best {min(ok):.4f} ms" if ok else "none passed"
            print(f"{bucket.label()}: {len(table.rows)} configs in the table ({state}), {best}", flush=True)
            paths.append(table_path(out, bucket))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bucket", action="append", dest="buckets", help="a default-preset bucket label "
                    f"(repeatable; default: {', '.join(BUCKETS)})")
    ap.add_argument("--out", default=None, help="folder of the tables (default: bench.release_folder())")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds after which no new config starts")
    ap.add_argument("--max-configs", type=int, default=None, help="at most this many configs per table (CI)")
    ap.add_argument("--workers", type=int, default=None, help="compile workers (default: cores - 1 on a GPU)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the check and timing data")
    args = ap.parse_args()
    for path in collect(tuple(args.buckets or BUCKETS), out=args.out, time_budget_s=args.time_budget,
                        max_configs=args.max_configs, workers=args.workers, seed=args.seed):
        print(path)


if __name__ == "__main__":
    main()
