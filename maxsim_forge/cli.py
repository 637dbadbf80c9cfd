"""The ``maxsim-forge`` command. Thin: each command calls one library function."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .codegen import DTYPES, LAYOUTS, MASK_KINDS, ConfigError, KernelConfig, KernelSpec, is_current


def _use_interpreter_without_cuda() -> bool:
    """Without CUDA, route kernels through Triton's interpreter (before triton loads)."""
    import torch

    if torch.cuda.is_available():
        return False
    os.environ.setdefault("TRITON_INTERPRET", "1")
    return True


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maxsim-forge")
def main() -> None:
    """maxsim-forge: generated, autotuned Triton kernels for MaxSim scoring."""


def _spec_options(f):
    options = [
        click.option("--layout", type=click.Choice(LAYOUTS), default="padded", show_default=True,
                     help="Call layout the kernel is specialised on."),
        click.option("--dtype", type=click.Choice(DTYPES), default="fp16", show_default=True,
                     help="Input dtype (accumulation is always fp32)."),
        click.option("--dim", type=int, default=128, show_default=True,
                     help="Embedding dimension (exact)."),
        click.option("--precision", type=click.Choice(["tf32", "ieee"]), default="tf32",
                     show_default=True, help="fp32 dot precision."),
        click.option("--q-mask", type=click.Choice(MASK_KINDS), default="none", show_default=True,
                     help="How invalid query tokens are given."),
        click.option("--d-mask", type=click.Choice(MASK_KINDS), default="none", show_default=True,
                     help="How invalid doc tokens are given."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command()
@_spec_options
@click.option("--config", "config_json", default=None,
              help='Config as JSON, e.g. \'{"block_q": 64, "q_mode": "grid"}\'; unset knobs keep defaults.')
@click.option("--smem-limit", type=int, default=None,
              help="Shared-memory bytes per block to validate against (default: Hopper's).")
def codegen(layout, dtype, dim, precision, q_mask, d_mask, config_json, smem_limit) -> None:
    """Print the generated Triton source of one variant.

    Example: maxsim-forge codegen --layout allpairs --dim 96 --config '{"q_mode": "fold"}'
    """
    from .codegen import render

    spec = KernelSpec(layout, dtype, dim, precision, q_mask, d_mask)
    try:
        cfg = KernelConfig.from_dict(json.loads(config_json) if config_json else {})
        click.echo(render(spec, cfg, smem_limit=smem_limit), nl=False)
    except (ConfigError, json.JSONDecodeError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--batch", type=int, default=None,
              help="Docs to score (default: 1024 on a GPU, 8 through the interpreter).")
@click.option("--dtype", type=click.Choice(DTYPES), default="fp16", show_default=True,
              help="Input dtype.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
def check(batch, dtype, seed) -> None:
    """Score a random ColBERT-shaped batch (Lq 32, Ld 300, dim 128) and compare with float64.

    Example: maxsim-forge check --batch 64 --dtype bf16
    """
    from .selfcheck import colbert_check

    interpreted = _use_interpreter_without_cuda()
    if interpreted:
        click.echo("No CUDA device: running the generated kernel through Triton's interpreter.")
    try:
        report = colbert_check(batch=batch, dtype=dtype, seed=seed)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(report.text())
    if not report.ok:
        raise click.ClickException("the generated kernel does not match the float64 reference")


def _table(headers: tuple[str, ...], rows: list[tuple]) -> str:
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


@main.command()
@click.option("--preset", type=click.Choice(["quick", "default"]), default=None,
              help="Named set of shape buckets (default: quick).")
@click.option("--shapes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON or YAML file with a list of buckets instead of a preset.")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["fp16", "bf16", "fp32"]),
              help="Only these dtypes (repeatable).")
@click.option("--only", multiple=True,
              help="Only buckets whose label contains this text, e.g. 'colbert-full fp16 d96' (repeatable).")
@click.option("--trials", type=int, default=24, show_default=True, help="Optuna trials per bucket.")
@click.option("--time-budget", type=float, default=None, help="Seconds for the whole run; later buckets are skipped.")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
              help="Database to write (default: MAXSIM_FORGE_DB or the user cache).")
@click.option("--resume", is_flag=True, help="Skip buckets whose winner still runs the kernels it was timed with.")
@click.option("--refresh", is_flag=True,
              help="Like --resume, but tune again the buckets whose winner was found in an older search space "
                   "(knobs added since); their winner is among the new study's seeds.")
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs to tune on, one worker process each.")
@click.option("--workers", type=int, default=None, help="Compile processes per GPU (default: cores - 1).")
@click.option("--storage", default=None,
              help="Optuna storage URL shared by several processes or machines: journal:PATH, sqlite:///F, postgresql://...")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the sampler and the random inputs.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def tune(preset, shapes, dtypes, only, trials, time_budget, db_path, resume, refresh, gpus, workers, storage, seed,
         quiet) -> None:
    """Tune kernel variants for this GPU and store the winners.

    Example: maxsim-forge tune --preset quick --db tuned.db
    """
    interpreted = _use_interpreter_without_cuda()
    from .tuner import resolve, summary_rows
    from .tuner import tune as run_tune

    try:
        buckets = resolve(preset, shapes, tuple(dtypes), tuple(only))
    except (ValueError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    if interpreted:
        click.echo("No CUDA device: tuning through Triton's interpreter on shrunk buckets "
                   "(the pipeline runs end to end; its timings mean nothing).")
    try:
        report = run_tune(buckets, db_path=db_path, trials=trials, seed=seed, time_budget_s=time_budget,
                          resume=resume, refresh=refresh, storage_url=storage, gpus=gpus, workers=workers, progress=not quiet)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    n = len(report.results)
    click.echo(f"\n{report.device}: {n} bucket{'' if n == 1 else 's'} in {report.wall_s:.1f} s")
    click.echo(_table(("bucket", "best config", "ms", "torch ms", "speedup", "trials", "device"), summary_rows(report)))
    left = sum(r.unfinished for r in report.results)
    if left:
        click.echo(f"\n{left} bucket{'' if left == 1 else 's'} cut short or not reached by the time budget: "
                   f"run again with --{'refresh' if refresh else 'resume'} to finish.")


@main.group()
def db() -> None:
    """Inspect and move tuned databases."""


def _open(path):
    from .tuned_db import TunedDB, user_db_path

    return TunedDB(path or user_db_path())


_DB_OPTION = click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
                          help="Database (default: MAXSIM_FORGE_DB or the user cache).")


@db.command("show")
@_DB_OPTION
@click.option("--gpu", default=None, help="Only this GPU (normalised name, e.g. NVIDIA_H100_80GB_HBM3).")
@click.option("--layout", default=None, help="Only this layout.")
@click.option("--dtype", default=None, help="Only this dtype.")
@click.option("--shipped", is_flag=True, help="Show the databases shipped in the package instead.")
def db_show(db_path, gpu, layout, dtype, shipped) -> None:
    """List the winners as a table.

    Example: maxsim-forge db show --layout padded --dtype fp16
    """
    from .tuned_db import open_db, read_winners, shipped_db_paths, user_db_path
    from .tuner import in_current_space, trials_label

    if shipped:
        winners = [w for p in shipped_db_paths()
                   for w in read_winners(open_db(str(p), read_only=True, immutable=True), gpu=gpu, layout=layout, dtype=dtype)]
    else:
        # A read: the file is opened read-only, never created, migrated or switched to WAL.
        path = Path(db_path or user_db_path())
        if not path.is_file():
            raise click.ClickException(f"no tuned database at {path}; `maxsim-forge tune` writes one")
        winners = read_winners(open_db(str(path), read_only=True), gpu=gpu, layout=layout, dtype=dtype)
    rows = []
    for w in winners:
        cfg = KernelConfig.from_dict(w["config"])
        speed = f"{w['speedup']:.2f}x" if w.get("speedup") else "-"
        rows.append((w["gpu"], w["layout"], w["dtype"], w["dim"], w["nq_bucket"], w["lq_bucket"], w["ld_bucket"],
                     w["nb_bucket"], w.get("docs") or "-", cfg.key(), f"{w['time_ms']:.4f}", speed,
                     trials_label(w["trials"], bool(w.get("cut"))),
                     "yes" if is_current(w) else "stale", "current" if in_current_space(w) else "older"))
    click.echo(_table(("gpu", "layout", "dtype", "dim", "nq", "lq", "ld", "nb", "docs", "config", "ms", "vs torch",
                       "trials", "current", "space"), rows))


@db.command("export")
@_DB_OPTION
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="JSON file to write.")
@click.option("--trials", "with_trials", is_flag=True, help="Include every trial, not only winners.")
def db_export(db_path, out, with_trials) -> None:
    """Export winners (and optionally trials) as JSON.

    Example: maxsim-forge db export --out h100.json
    """
    _export_json_file(db_path, out, trials=with_trials)


def _export_json_file(db_path, out, *, trials: bool = False) -> None:
    from .tuned_db import export_json

    doc = export_json(_open(db_path), trials=trials)
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
    click.echo(f"wrote {len(doc['winners'])} winners to {out}")


def _import_json_file(db_path, source) -> None:
    from .tuned_db import import_json

    try:
        with open(source) as fh:
            taken = import_json(_open(db_path), json.load(fh))
    except (ValueError, KeyError, OSError) as exc:
        raise click.ClickException(f"{source}: {exc}") from exc
    click.echo(f"took {taken} winners from {source}")


@db.command("import")
@_DB_OPTION
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
def db_import(db_path, source) -> None:
    """Import a JSON export, keeping the faster winner per key.

    Example: maxsim-forge db import h100.json --db tuned.db
    """
    _import_json_file(db_path, source)


@db.command("merge")
@_DB_OPTION
@click.argument("other", type=click.Path(exists=True, dir_okay=False))
def db_merge(db_path, other) -> None:
    """Merge another database in, keeping the faster winner per key.

    Example: maxsim-forge db merge gpu1.db --db tuned.db
    """
    from .tuned_db import merge_db

    try:
        taken = merge_db(_open(db_path), other)
    except Exception as exc:  # sqlite errors, schema errors
        raise click.ClickException(f"{other}: {exc}") from exc
    click.echo(f"took {taken} winners from {other}")


@db.command("ship")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Database file to write (replaced).")
def db_ship(sources, out) -> None:
    """Pack the winners of SOURCES into one read-only-friendly file for the package's data/.

    Example: maxsim-forge db ship h100-run1.db h100-run2.db --out maxsim_forge/tuned_db/data/NVIDIA_H100_80GB_HBM3.db
    """
    from .tuned_db import ship
    from .tuner import stamp_kernel_hash

    try:
        taken = ship(sources, out, prepare=stamp_kernel_hash)
    except Exception as exc:  # sqlite errors, schema errors
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {taken} winners to {out}")


@db.command("verify")
@_DB_OPTION
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fresh random inputs.")
def db_verify(db_path, seed) -> None:
    """Check every winner tuned on this GPU against the float64 reference on fresh data.

    Example: maxsim-forge db verify --db maxsim_forge/tuned_db/data/NVIDIA_H100_80GB_HBM3.db
    """
    interpreted = _use_interpreter_without_cuda()
    from .tuner import verify_winners

    rows = verify_winners(_open(db_path), seed=seed, device="cpu" if interpreted else "cuda")
    click.echo(_table(("bucket", "config", "status", "detail"), rows))
    if any(r[2] != "ok" for r in rows):
        raise click.ClickException("some winners do not match the reference")


@main.command("export")
@_DB_OPTION
@click.option("--format", "fmt", type=click.Choice(["vllm", "json"]), required=True,
              help="vllm: one JSON file per (op, dim, device, dtype) named as vLLM names tuned configs; json: one file.")
@click.option("--out", type=click.Path(), required=True, help="Folder (vllm) or file (json) to write.")
def export_cmd(db_path, fmt, out) -> None:
    """Export the tuned winners for another program.

    Example: maxsim-forge export --format vllm --out vllm_configs/
    """
    if fmt == "json":
        _export_json_file(db_path, out)
        return
    from .integrations.vllm import export_vllm

    files = export_vllm(_open(db_path), out)
    for f in files:
        click.echo(str(f))
    click.echo(f"wrote {len(files)} files to {out}")


@main.command("import")
@_DB_OPTION
@click.option("--format", "fmt", type=click.Choice(["vllm", "json"]), required=True,
              help="vllm: a folder of vLLM-format files; json: a file from export --format json.")
@click.argument("source", type=click.Path(exists=True))
def import_cmd(db_path, fmt, source) -> None:
    """Import tuned winners, keeping the faster winner per key.

    Example: maxsim-forge import --format vllm vllm_configs/ --db tuned.db
    """
    if fmt == "json":
        _import_json_file(db_path, source)
        return
    from .integrations.vllm import import_vllm

    try:
        taken = import_vllm(_open(db_path), source)
    except (ValueError, KeyError, OSError) as exc:
        raise click.ClickException(f"{source}: {exc}") from exc
    click.echo(f"took {taken} winners from {source}")


@main.command()
@click.option("--bucket", "buckets", multiple=True,
              help='Bucket as JSON, e.g. \'{"layout": "padded", "dtype": "fp16", "dim": 128, "lq": 32, "ld": 300, "nb": 1000}\'.')
def warmup(buckets) -> None:
    """Compile ahead of time the variants this GPU would run (every tuned bucket by default).

    Example: maxsim-forge warmup
    """
    interpreted = _use_interpreter_without_cuda()
    from .runtime import warmup as run_warmup

    try:
        parsed = [json.loads(b) for b in buckets] or None
        decisions = run_warmup(parsed, device="cpu" if interpreted else "cuda")
    except (ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    for d in decisions:
        click.echo(str(d))
    click.echo(f"warmed {len(decisions)} variants")


@main.command()
@click.option("--cases", default="all", show_default=True,
              help="Comma-separated case names, or 'all'; --list shows them.")
@click.option("--impl", "impls", multiple=True,
              help="Implementations to run (repeatable; default: all that are installed).")
@click.option("--out", type=click.Path(file_okay=False), default="bench-results", show_default=True,
              help="Folder for bench.csv, bench.json and bench.png.")
@click.option("--first-call", is_flag=True, help="Also time each first call in a fresh process with empty caches.")
@click.option("--list", "list_cases", is_flag=True, help="List the cases and implementations, run nothing.")
def bench(cases, impls, out, first_call, list_cases) -> None:
    """Time maxsim-forge next to torch, vLLM's algorithm, flash-maxsim and late-interaction-kernels.

    Example: maxsim-forge bench --cases colbert-1k-fp16,16-queries-x-1k --out results/
    """
    interpreted = _use_interpreter_without_cuda()
    from . import bench as b

    if list_cases:
        for c in b.CASES:
            click.echo(f"{c.name:20s} {c.layout:8s} nq {c.nq} lq {c.lq} ld {c.ld} nb {c.nb} dim {c.dim} {c.dtype}")
        click.echo("implementations: " + ", ".join(b.IMPLS))
        return
    chosen = b.CASES if cases == "all" else []
    if cases != "all":
        by_name = {c.name: c for c in b.CASES}
        unknown = [n for n in cases.split(",") if n not in by_name]
        if unknown:
            raise click.ClickException(f"unknown case(s) {unknown}; accepted: {', '.join(by_name)}")
        chosen = [by_name[n] for n in cases.split(",")]
    bad = [i for i in impls if i not in b.IMPLS]
    if bad:
        raise click.ClickException(f"unknown implementation(s) {bad}; accepted: {', '.join(b.IMPLS)}")
    if interpreted:
        click.echo("No CUDA device: shrunk cases through Triton's interpreter; the timings mean nothing.")
    rows, meta = b.run(chosen, list(impls) or list(b.IMPLS), device="cpu" if interpreted else "cuda",
                       first_call=first_call, log=click.echo)
    for line in b.format_versus(rows):
        click.echo(line)
    for path in b.write(rows, meta, out):
        click.echo(f"wrote {path}")
