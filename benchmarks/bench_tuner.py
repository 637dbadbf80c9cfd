"""How many Optuna trials reach the exhaustive best: time every valid config of a few
buckets on the GPU (``--exhaustive``), then replay TPE on the measured table (no GPU).

    python benchmarks/bench_tuner.py --exhaustive --out $OUT/exhaustive.json   # GPU
    python benchmarks/bench_tuner.py --replay exhaustive.json                  # anywhere
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

BUCKETS = [
    # name, layout, dtype, dim, nq, lq, ld, nb, d_mask
    ("colbert-1k", "padded", "fp16", 128, 1, 32, 300, 1000, "lengths"),
    ("multi-16x1k", "allpairs", "fp16", 128, 16, 32, 300, 1000, "none"),
    ("image-query", "padded", "fp16", 128, 1, 1024, 1024, 1000, "none"),
]


def exhaustive(out_path: str, workers: int) -> None:
    import torch

    from maxsim_forge._keys import Sizes, gpu_info
    from maxsim_forge._problems import synth
    from maxsim_forge.codegen import KernelSpec, load_variant
    from maxsim_forge.tuner._compile import CompileJob, compile_many
    from maxsim_forge.tuner._space import valid_configs
    from maxsim_forge.tuner._timing import time_cuda

    gpu = gpu_info(torch.device("cuda"))
    import triton

    doc = {"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "triton": triton.__version__,
           "torch": torch.__version__, "buckets": []}
    for name, layout, dtype, dim, nq, lq, ld, nb, d_mask in BUCKETS:
        spec = KernelSpec(layout, dtype, dim, "tf32", "none", d_mask)
        sizes = Sizes(nq=nq, lq=lq, nb=nb, ld=ld)
        configs = valid_configs(spec, sizes, sm_count=gpu.sm_count, smem_limit=gpu.smem_limit)
        t0 = time.time()
        status = compile_many([CompileJob(spec, c, sizes, "cuda", gpu.smem_limit) for c in configs], workers=workers)
        t_compile = time.time() - t0
        prob = synth(spec, sizes, device="cuda", seed=0)
        rows = []
        for cfg, (st, msg) in zip(configs, status):
            t = None
            if st == "ok":
                variant = load_variant(prob.prep.spec, cfg, smem_limit=gpu.smem_limit)
                t = time_cuda(lambda: variant.launch(prob.prep.q, prob.prep.d, **prob.prep.launch_kwargs),
                              warmup_ms=5, rep_ms=25).median_ms
            rows.append({"config": cfg.to_dict(), "status": st, "time_ms": t})
        ok = [r["time_ms"] for r in rows if r["time_ms"]]
        print(f"{name}: {len(configs)} configs, compile {t_compile:.0f}s, best {min(ok):.4f} ms, "
              f"median {statistics.median(ok):.4f} ms", flush=True)
        doc["buckets"].append({"name": name, "configs": rows})
        with open(out_path, "w") as fh:
            json.dump(doc, fh)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _search(study, table: dict, space: dict, trials: int, best: float, *, refine: bool,
            batch: int) -> tuple[int | None, dict[int, float]]:
    """One sampler seed's search of the measured ``table``: the trial at which the best so
    far came within 3% of ``best`` (None if it never did), and the best so far over
    ``best`` after 24 and after 48 trials (where the search got that far)."""
    import optuna

    from maxsim_forge.codegen import KernelConfig
    from maxsim_forge.tuner._space import neighbors
    from maxsim_forge.tuner._study import REFINE_AT

    valid = set(table)
    hit, running, n, seen, after = None, float("inf"), 0, {}, {}
    while n < trials:
        asked = [study.ask() for _ in range(min(batch, trials - n))]
        # As in ``tune``: every config of a batch is drawn before any is told.
        configs = [KernelConfig(**{k: tr.suggest_categorical(k, v) for k, v in space.items()}) for tr in asked]
        for trial, cfg in zip(asked, configs):
            t = table.get(cfg)
            if t is None:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, t)
                seen[cfg] = t
                running = min(running, t)
            n += 1
            if hit is None and running <= best * 1.03:
                hit = n
            if n in (24, 48):
                after[n] = running / best
        if refine and seen and REFINE_AT * trials <= n < trials:
            top = min(seen, key=seen.get)
            for cfg in [c for c in neighbors(top, valid) if c not in seen][: min(batch, trials - n)]:
                study.enqueue_trial(cfg.to_dict(), skip_if_exists=True)
    return hit, after


def replay(path: str, trials: int, seeds: int, *, seeded: bool, refine: bool, batch: int) -> None:
    """Run the tuner's search against the measured table instead of the GPU.

    Multivariate TPE over the bucket's space, asked ``batch`` trials at a time (the
    tuner asks one batch per round of compile workers); ``refine``: past half the budget
    the one-knob neighbours of the best so far are enqueued, as ``tune`` does;
    ``seeded``: today's heuristic default is enqueued first, as ``tune`` does.
    """
    import optuna

    from maxsim_forge._keys import Sizes
    from maxsim_forge.codegen import KernelConfig, KernelSpec
    from maxsim_forge.runtime import default_config
    from maxsim_forge.tuner._space import bucket_space, check_static
    from maxsim_forge.tuner._study import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    doc = json.load(open(path))
    how = ("TPE" + (" + neighbour refinement" if refine else " alone") + f", batches of {batch}"
           + (", seeded with today's heuristic default (in-sample)" if seeded else ""))
    print(f"GPU {doc['gpu']} ({doc['date']}); {how}; {seeds} sampler seeds, {trials} trials each")
    print(f"{'bucket':14s} {'configs':>7s} {'best ms':>8s} {'heuristic':>9s} {'to 3%: median':>13s} "
          f"{'worst':>6s} {'hit':>5s} {'after 24':>8s} {'after 48':>8s}")
    specs = {name: (KernelSpec(layout, dtype, dim, "tf32", "none", dm), nq, lq, ld, nb)
             for name, layout, dtype, dim, nq, lq, ld, nb, dm in BUCKETS}
    for b in doc["buckets"]:
        spec, nq, lq, ld, nb = specs[b["name"]]
        measured = {KernelConfig(**r["config"]): r["time_ms"] for r in b["configs"]}
        best = min(t for t in measured.values() if t)  # over everything measured
        # The sampler draws from today's space, which may be narrower than what was measured.
        sizes = Sizes(nq=nq, lq=lq, nb=nb, ld=ld)
        table = {c: t for c, t in measured.items()
                 if check_static(spec, c, sizes, sm_count=132, smem_limit=232_448) is None}
        heuristic = default_config(spec, nq=nq, lq=lq, nb=nb, ld=ld, sm_count=132)
        space = bucket_space(list(table))
        needed, after24, after48 = [], [], []
        for seed in range(seeds):
            sampler = make_sampler(seed, trials)
            study = optuna.create_study(sampler=sampler)
            if seeded:
                study.enqueue_trial(heuristic.to_dict())
            hit, after = _search(study, table, space, trials, best, refine=refine, batch=batch)
            after24 += [after[24]] if 24 in after else []
            after48 += [after[48]] if 48 in after else []
            needed.append(hit if hit is not None else float("inf"))
        found = [n for n in needed if n != float("inf")]
        h = table.get(heuristic)
        print(f"{b['name']:14s} {len(table):7d} {best:8.4f} {h / best if h else float('nan'):8.2f}x "
              f"{statistics.median(needed):13} {max(needed):>6} {len(found):>2}/{seeds:<2} "
              f"{_median(after24):7.3f}x {_median(after48):7.3f}x")


def to_db(path: str, db_path: str) -> None:
    """Store each bucket's exhaustive best as a winner (merged: the faster row per key stays)."""
    from maxsim_forge import __version__
    from maxsim_forge._keys import DEFAULT_SMEM_LIMIT, GpuInfo, Sizes, normalize_name
    from maxsim_forge._problems import synth
    from maxsim_forge.codegen import KernelConfig, KernelSpec, template_hash
    from maxsim_forge.runtime import bucket_key
    from maxsim_forge.tuned_db import TunedDB, merge_rows

    doc = json.load(open(path))
    gpu = GpuInfo(name=normalize_name(doc["gpu"]), cc="9.0", sm_count=132, smem_limit=DEFAULT_SMEM_LIMIT)
    specs = {name: (KernelSpec(layout, dtype, dim, "tf32", "none", dm), Sizes(nq=nq, lq=lq, nb=nb, ld=ld))
             for name, layout, dtype, dim, nq, lq, ld, nb, dm in BUCKETS}
    rows = []
    for b in doc["buckets"]:
        spec, sizes = specs[b["name"]]
        key = bucket_key(synth(spec, sizes.scaled(4), device="cpu", seed=0).prep, gpu)
        key = key.__class__(**{**key.as_row(), "nb_bucket": 1 << (sizes.nb - 1).bit_length()})
        timed = sorted((r for r in b["configs"] if r["time_ms"]), key=lambda r: r["time_ms"])
        best = timed[0]
        near = [r["config"] for r in timed[1:] if r["time_ms"] <= best["time_ms"] * 1.03]
        rows.append({**key.as_row(), "config": KernelConfig(**best["config"]).to_dict(), "time_ms": best["time_ms"],
                     "baseline_ms": None, "speedup": None, "near_best": near, "trials": len(b["configs"]),
                     "seed": 0, "template_hash": template_hash(), "sm_count": gpu.sm_count,
                     "smem_limit": gpu.smem_limit, "triton_version": doc.get("triton", "unknown"),
                     "torch_version": doc.get("torch", "unknown"),
                     "package_version": __version__, "created_at": doc["date"]})
    print(f"took {merge_rows(TunedDB(db_path), rows)} exhaustive winners into {db_path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exhaustive", action="store_true")
    ap.add_argument("--replay", default=None)
    ap.add_argument("--out", default="exhaustive.json")
    ap.add_argument("--workers", type=int, default=15)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=15, help="trials asked at once (compile workers per round)")
    ap.add_argument("--to-db", default=None, help="with --replay: store each bucket's exhaustive best here")
    args = ap.parse_args()
    if args.exhaustive:
        exhaustive(args.out, args.workers)
    if args.replay:
        replay(args.replay, args.trials, args.seeds, seeded=False, refine=False, batch=1)
        replay(args.replay, args.trials, args.seeds, seeded=False, refine=True, batch=args.batch)
        replay(args.replay, args.trials, args.seeds, seeded=True, refine=True, batch=args.batch)
        if args.to_db:
            to_db(args.replay, args.to_db)


if __name__ == "__main__":
    main()
