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

    from maxsim_forge._problems import Sizes, synth
    from maxsim_forge.codegen import KernelSpec, load_variant
    from maxsim_forge.runtime._keys import gpu_info
    from maxsim_forge.tuner._compile import CompileJob, compile_many
    from maxsim_forge.tuner._space import valid_configs
    from maxsim_forge.tuner._timing import time_cuda

    gpu = gpu_info(torch.device("cuda"))
    doc = {"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "buckets": []}
    for name, layout, dtype, dim, nq, lq, ld, nb, d_mask in BUCKETS:
        spec = KernelSpec(layout, dtype, dim, "tf32", "none", d_mask)
        sizes = Sizes(nq, lq, nb, ld)
        configs = valid_configs(spec, sizes, sm_count=gpu.sm_count, smem_limit=gpu.smem_limit)
        t0 = time.time()
        status = compile_many([CompileJob(spec, c, sizes, "cuda", gpu.smem_limit) for c in configs], workers=workers)
        t_compile = time.time() - t0
        prob = synth(spec, sizes, device="cuda", seed=0)
        rows = []
        for cfg, (st, msg) in zip(configs, status):
            t = None
            if st == "ok":
                module = load_variant(prob.prep.spec, cfg, smem_limit=gpu.smem_limit)
                t = time_cuda(lambda: module.launch(prob.prep.q, prob.prep.d, **prob.prep.launch_kwargs),
                              warmup_ms=5, rep_ms=25).median_ms
            rows.append({"config": cfg.to_dict(), "status": st, "time_ms": t})
        ok = [r["time_ms"] for r in rows if r["time_ms"]]
        print(f"{name}: {len(configs)} configs, compile {t_compile:.0f}s, best {min(ok):.4f} ms, "
              f"median {statistics.median(ok):.4f} ms", flush=True)
        doc["buckets"].append({"name": name, "configs": rows})
        with open(out_path, "w") as fh:
            json.dump(doc, fh)


def replay(path: str, trials: int, seeds: int) -> None:
    import optuna

    from maxsim_forge.codegen import KernelConfig
    from maxsim_forge.tuner._space import bucket_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    doc = json.load(open(path))
    print(f"GPU {doc['gpu']} ({doc['date']}): trials until within 3% of the exhaustive best "
          f"(TPE, multivariate, {seeds} seeds, budget {trials})")
    for b in doc["buckets"]:
        table = {KernelConfig(**r["config"]): r["time_ms"] for r in b["configs"]}
        best = min(t for t in table.values() if t)
        space = bucket_space(list(table))
        needed = []
        for seed in range(seeds):
            sampler = optuna.samplers.TPESampler(multivariate=True, seed=seed, n_startup_trials=max(4, trials // 3))
            study = optuna.create_study(sampler=sampler)
            hit = None
            for n in range(1, trials + 1):
                trial = study.ask()
                cfg = KernelConfig(**{k: trial.suggest_categorical(k, v) for k, v in space.items()})
                t = table.get(cfg)
                if t is None:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    continue
                study.tell(trial, t)
                if hit is None and t <= best * 1.03:
                    hit = n
            needed.append(hit if hit is not None else float("inf"))
        found = [n for n in needed if n != float("inf")]
        print(f"  {b['name']:14s} {len(table)} configs, best {best:.4f} ms: reached in "
              f"{len(found)}/{seeds} seeds; median {statistics.median(needed) if found else 'n/a'} trials, "
              f"worst {max(needed)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exhaustive", action="store_true")
    ap.add_argument("--replay", default=None)
    ap.add_argument("--out", default="exhaustive.json")
    ap.add_argument("--workers", type=int, default=15)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    if args.exhaustive:
        exhaustive(args.out, args.workers)
    if args.replay:
        replay(args.replay, args.trials, args.seeds)


if __name__ == "__main__":
    main()
