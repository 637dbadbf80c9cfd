"""``maxsim-forge tune``: tune kernel variants for this GPU and store the winners."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import click

from ..codegen import ConfigError
from ._group import SEED, check_cache, failures, in_existing_folder, main, one_line, open_write, table, \
    use_interpreter_without_cuda, writable_db_file


def _finite(ctx, param, value: float | None) -> float | None:
    # FloatRange lets nan through (no comparison holds for it), and inf is no budget.
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} seconds; accepted: a finite number above 0")
    return value


@main.command()
@click.option("--preset", type=click.Choice(["quick", "default"]), default=None,
              help="Named set of shape buckets (default: quick).")
@click.option("--shapes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON or YAML file with a list of buckets instead of a preset.")
@click.option("--from-record", "record", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Instead: the buckets a service recorded (MAXSIM_FORGE_RECORD) that were served by anything "
                   "but their own winner, most called first.")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["fp16", "bf16", "fp32"]),
              help="Only these dtypes (repeatable).")
@click.option("--only", multiple=True,
              help="Only buckets whose label contains this text, e.g. 'colbert-full padded/fp16/dim96' (repeatable).")
@click.option("--trials", type=click.IntRange(min=1), default=24, show_default=True,
              help="Optuna trials per bucket (at least 1).")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None, callback=_finite,
              help="Seconds for the whole run (above 0); later buckets are skipped.")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
              help="Database to write (default: MAXSIM_FORGE_DB or the user cache).")
@click.option("--resume", is_flag=True, help="Skip buckets whose winner still runs the kernels it was timed with.")
@click.option("--refresh", is_flag=True,
              help="Like --resume, but tune again the buckets whose winner was found in an older search space "
                   "(knobs added since); their winner is among the new study's seeds.")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="GPUs to tune on, one worker process each.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Compile processes per GPU (default: cores - 1).")
@click.option("--storage", default=None,
              help="Optuna storage URL shared by several processes or machines: journal:PATH, sqlite:///F, "
                   "postgresql://user@host/db (a fleet: docs/tuning.md).")
@click.option("--heartbeat", type=click.IntRange(min=1), default=None,
              help="Seconds between a running trial's heartbeats in a shared database storage (default 30); a "
                   "worker silent for four of them is taken for dead and its trials are retried.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed for the sampler and the random inputs (0 to 2**32 - 1).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def tune(preset, shapes, record, dtypes, only, trials, time_budget, db_path, resume, refresh, gpus, workers, storage,
         heartbeat, seed, quiet) -> None:
    """Tune kernel variants for this GPU and store the winners.

    Example: maxsim-forge tune --preset quick --db tuned.db
    """
    interpreted = use_interpreter_without_cuda()
    from ..tuner import ShapesFileError, buckets_from_record, resolve, summary_rows
    from ..tuner import tune as run_tune

    if record and (preset or shapes):
        raise click.UsageError("--from-record names the buckets itself: pass it without --preset or --shapes")
    if heartbeat:
        os.environ["MAXSIM_FORGE_HEARTBEAT_S"] = str(heartbeat)  # worker processes inherit it
    recorded: list = []
    try:
        if record:
            recorded = buckets_from_record(record, gpu=_this_gpu(interpreted))
            buckets = _recorded(recorded, tuple(dtypes), tuple(only))
        else:
            buckets = _only(resolve(preset, shapes, tuple(dtypes)), tuple(only), interpreted)
    except ShapesFileError as exc:
        raise click.BadParameter(str(exc), param_hint="'--shapes'") from None
    except (ValueError, ConfigError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not buckets and record:
        click.echo(f"{record}: every bucket recorded on this GPU was served by its own winner; nothing to tune"
                   if not recorded else f"{record}: --dtype and --only leave none of its {len(recorded)} buckets")
        return
    writable_db_file(db_path)
    if storage:
        _check_storage(storage)  # before the database is made: a storage that cannot be used writes nothing
    tuned = open_write(db_path)  # a database that cannot be written stops the run before any work
    tuned.close()
    check_cache()
    if interpreted:
        click.echo("No CUDA device: tuning through Triton's interpreter on shrunk buckets "
                   "(the pipeline runs end to end; its timings mean nothing).")
    with failures():
        report = run_tune(buckets, db_path=tuned.path, trials=trials, seed=seed, time_budget_s=time_budget,
                          resume=resume, refresh=refresh, storage_url=storage, gpus=gpus, workers=workers,
                          progress=not quiet)
    n = len(report.results)
    click.echo(f"\n{report.device}: {n} bucket{'' if n == 1 else 's'} in {report.wall_s:.1f} s")
    click.echo(table(("bucket", "best config", "ms", "torch ms", "speedup", "trials", "device"), summary_rows(report)))
    click.echo(f"\nwinners written to {tuned.path} (the runtime reads it"
               f"{' as the user database' if _is_user_db(tuned.path) else ' when MAXSIM_FORGE_DB names it'}); "
               f"`maxsim-forge db show --db {tuned.path}` lists them.")
    left = sum(r.unfinished for r in report.results)
    if left:
        click.echo(f"\n{left} bucket{'' if left == 1 else 's'} cut short or not reached by the time budget: "
                   f"run again with --{'refresh' if refresh else 'resume'} to finish.")


STORAGES = "journal:PATH, sqlite:///FILE or postgresql://user@host/db"


def _check_storage(url: str) -> None:
    """``--storage`` before any work: a journal file Optuna wrote (or a new one) in a folder
    that exists, or a database URL SQLAlchemy parses whose server answers."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    from ..tuner import journal_path, make_storage

    hint = "'--storage'"
    journal = journal_path(url)
    if journal is not None:
        _check_journal(Path(journal))
        return
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise click.BadParameter(f"{url!r} is no storage URL; accepted: {STORAGES}", param_hint=hint) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        in_existing_folder(Path(parsed.database), "--storage")
    shown = parsed.render_as_string(hide_password=True)
    try:
        make_storage(url)  # connects, and makes Optuna's tables where there are none
    except sqlalchemy.exc.ArgumentError as exc:  # no dialect of that name, say
        raise click.BadParameter(f"{shown}: {one_line(exc)}; accepted: {STORAGES}", param_hint=hint) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise click.ClickException(f"--storage {shown} cannot be used: {one_line(getattr(exc, 'orig', None) or exc)}") \
            from None
    except ValueError as exc:  # the PostgreSQL driver is not installed
        raise click.ClickException(f"--storage: {one_line(exc)}") from None


def _check_journal(path: Path) -> None:
    # Optuna appends to a journal it cannot read: a file of anything else gets its lines
    # and the run fails on them after.
    hint = "'--storage'"
    if path.is_dir():
        raise click.BadParameter(f"{path} is a folder; give a journal file such as {path / 'tune.journal'}",
                                 param_hint=hint)
    in_existing_folder(path, "--storage")
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        entry = json.loads(first)
    except ValueError:  # not JSON, or not UTF-8
        entry = None
    if not (isinstance(entry, dict) and "op_code" in entry):
        raise click.BadParameter(f"{path} exists and is not an Optuna journal (its first line is no journal entry); "
                                 "give a new file or one an earlier --storage journal run wrote", param_hint=hint)


def _only(buckets: list, only: tuple, interpreted: bool) -> list:
    """The buckets --only names: by their label, or without CUDA also by the shrunk label
    the interpreter's table prints."""
    from ..tuner import pick

    chosen = pick(buckets, only, shrunk=interpreted) if only else buckets
    if buckets and not chosen:
        step = max(1, len(buckets) // 3)
        examples = ", ".join(repr(b.label()) for b in buckets[::step][:3])
        shrunk = ", or the shrunk labels tune prints without CUDA" if interpreted else ""
        raise click.BadParameter(f"no bucket's label contains {' or '.join(map(repr, only))}; accepted: a part of a "
                                 f"label of the {len(buckets)} buckets{shrunk}, such as {examples}",
                                 param_hint="'--only'")
    return chosen


def _this_gpu(interpreted: bool) -> str:
    """The name records give the GPU this run tunes on."""
    import torch

    from .._keys import INTERPRETER, gpu_info

    return INTERPRETER.name if interpreted else gpu_info(torch.device("cuda")).name


def _recorded(buckets, dtypes: tuple, only: tuple):
    """The recorded buckets, filtered as --dtype and --only filter a preset's."""
    return [b for b in buckets if (not dtypes or b.dtype in dtypes) and (not only or any(o in b.label() for o in only))]


def _is_user_db(path) -> bool:
    from pathlib import Path

    from ..tuned_db import user_db_path

    return Path(path).resolve() == user_db_path().resolve()
