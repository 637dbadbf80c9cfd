"""``maxsim-forge db ...``: inspect and move tuned databases."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from ..codegen import DTYPES, LAYOUTS, KernelConfig, is_current, winners_config_of
from ._group import DB_OPTION, SEED, check_cache, failures, main, open_read, open_write, out_file, table, \
    use_interpreter_without_cuda, writable_db_file


@main.group()
def db() -> None:
    """Inspect and move tuned databases."""


def _shown(w: dict) -> tuple:
    from ..tuner import in_current_space, trials_label

    speed = f"{w['speedup']:.2f}x" if w.get("speedup") else "-"
    ms = f"{w['time_ms']:.4f}" if w.get("time_ms") is not None else "-"
    op = w.get("op", "fwd")
    config = winners_config_of(w["config"]).key() if op == "bwd" else KernelConfig.from_dict(w["config"]).key()
    return (w["gpu"], w["layout"], w["dtype"], w["dim"], w.get("codes", "none"), op, w["nq_bucket"], w["lq_bucket"],
            w["ld_bucket"], w["nb_bucket"], w.get("docs") or "-", config, ms, speed,
            trials_label(w.get("trials") or 0, bool(w.get("cut"))),
            "yes" if is_current(w) else "stale", "current" if in_current_space(w) else "older")


def _bad(exc) -> tuple:
    # A row that breaks the schema: its key as far as it can be read, and why it is skipped.
    return (exc.row, "", "", "", "", "", "", "", "", "", "", f"BAD ROW: field {exc.field}: {exc.why}", "-", "-", "-",
            "bad", "-")


@db.command("show")
@DB_OPTION
@click.option("--gpu", default=None, help="Only this GPU (normalised name, e.g. NVIDIA_H100_80GB_HBM3).")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None, help="Only this layout.")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Only this dtype.")
@click.option("--shipped", is_flag=True, help="Show the databases shipped in the package instead.")
def db_show(db_path, gpu, layout, dtype, shipped) -> None:
    """List the winners as a table; rows that break the schema are marked BAD ROW.

    Example: maxsim-forge db show --layout padded --dtype fp16
    """
    from ..tuned_db import open_db, scan_winners, shipped_db_paths

    # A read: files are opened read-only, never created, migrated or switched to WAL.
    if shipped:
        with failures():
            opened = [(str(p), open_db(str(p), read_only=True, immutable=True)) for p in shipped_db_paths()]
    else:
        tuned = open_read(db_path)
        opened = [(str(tuned.path), tuned.db)]
    good, bad = [], []
    with failures():
        for where, conn in opened:
            rows, errors = scan_winners(conn, where=where, gpu=gpu, layout=layout, dtype=dtype)
            conn.conn.close()
            good, bad = good + rows, bad + errors
    click.echo(table(("gpu", "layout", "dtype", "dim", "codes", "op", "nq", "lq", "ld", "nb", "docs", "config", "ms",
                      "vs torch",
                      "trials", "current", "space"), [_shown(w) for w in good] + [_bad(e) for e in bad]))
    stale = sum(not is_current(w) for w in good)
    if stale:
        click.echo(f"\n{stale} stale row{'' if stale == 1 else 's'}: tuned on kernels since changed, "
                   "each still serves its own bucket; `maxsim-forge tune --resume` tunes them again.")


@db.command("export", hidden=True)
@DB_OPTION
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="JSON file to write.")
@click.option("--trials", "with_trials", is_flag=True, help="Include every trial, not only winners.")
def db_export(db_path, out, with_trials) -> None:
    """The same as ``maxsim-forge export --format json``, kept for scripts that use it.

    Example: maxsim-forge db export --out h100.json
    """
    export_json_file(db_path, out, trials=with_trials)


def export_json_file(db_path, out, *, trials: bool = False) -> None:
    from ..tuned_db import export_json

    path = out_file(out)
    tuned = open_read(db_path)
    with failures():
        doc = export_json(tuned, trials=trials)
        tuned.close()
        # Written beside it (a file made here: mode 0600, no name a link could wait at),
        # then moved on: a failure leaves the old file, and a link at --out is replaced,
        # never followed to a file elsewhere.
        fd, part = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(doc, indent=1, sort_keys=True))
            os.replace(part, path)
        finally:
            Path(part).unlink(missing_ok=True)
    click.echo(f"wrote {len(doc['winners'])} winners to {out}")


def import_json_file(db_path, source) -> None:
    from ..tuned_db import export_rows

    writable_db_file(db_path)  # a mistake on the command line first
    with failures(f"{source}: "):
        doc = json.loads(Path(source).read_text())
    with failures():
        rows = export_rows(doc, where=str(source))  # checked before the database is opened or made
    merge_into(db_path, [(source, rows)])


def merge_into(db_path, sources: list[tuple[str, list[dict]]]) -> None:
    """Offer each source's checked rows to the database ``db_path`` names (made if need
    be, only now that nothing can fail but the database itself)."""
    from ..tuned_db import merge_rows

    tuned = open_write(db_path)  # the target's errors name the target
    try:
        for source, rows in sources:
            with failures():
                taken = merge_rows(tuned, rows)
            click.echo(f"took {taken} winners from {source}")
    finally:
        tuned.close()


@db.command("import", hidden=True)
@DB_OPTION
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
def db_import(db_path, source) -> None:
    """The same as ``maxsim-forge import --format json``, kept for scripts that use it.

    Keeps the better winner per key (current, then faster).

    A row that breaks the schema is refused, with its key and field, and nothing is stored.

    Example: maxsim-forge db import h100.json --db tuned.db
    """
    import_json_file(db_path, source)


@db.command("merge")
@DB_OPTION
@click.argument("others", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def db_merge(db_path, others) -> None:
    """Merge other databases in (the workers' of a fleet, say), keeping per key a current
    winner over a stale one, then the faster.

    Example: maxsim-forge db merge worker-*.db --db tuned.db
    """
    from ..tuned_db import db_rows

    writable_db_file(db_path)  # a mistake on the command line first
    sources = []
    for other in others:  # every source read before the target is opened or made
        with failures():
            sources.append((other, db_rows(other)))  # the other's errors name the other
    merge_into(db_path, sources)


@db.command("coverage")
@click.option("--record", "record", type=click.Path(dir_okay=False), required=True,
              help="The record file a service wrote (MAXSIM_FORGE_RECORD=path).")
def db_coverage(record) -> None:
    """How the buckets a deployment served were served, weighted by calls: by their own
    tuned winner, a stale one, a neighbour's, another GPU's of the same architecture,
    the heuristic or torch.

    Example: maxsim-forge db coverage --record served.db
    """
    from ..tuner import coverage_rows, served

    with failures():
        items = served(record)
    if not items:
        click.echo(f"{record} holds no calls yet (counts are written at exit and every "
                   "MAXSIM_FORGE_RECORD_INTERVAL seconds)")
        return
    per_bucket, per_kind = coverage_rows(items)
    click.echo(table(("gpu", "bucket", "calls", "share", "served by", "own winner"), per_bucket))
    click.echo("")
    click.echo(table(("served by", "calls", "share"), per_kind))
    todo = sum(s.own_share < 1.0 for s in items)
    if todo:
        click.echo(f"\n{todo} bucket{'' if todo == 1 else 's'} served by something other than {'its' if todo == 1 else 'their'} "
                   f"own winner: `maxsim-forge tune --from-record {record}` tunes {'it' if todo == 1 else 'them'}, "
                   "most called first.")


@db.command("ship")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Database file to write (replaced).")
def db_ship(sources, out) -> None:
    """Pack the winners of SOURCES into one read-only-friendly file for the package's data/.

    Example: maxsim-forge db ship h100-run1.db h100-run2.db --out maxsim_forge/tuned_db/data/NVIDIA_H100_80GB_HBM3.db
    """
    from ..tuned_db import is_source, ship
    from ..tuner import stamp_kernel_hash

    if is_source(out_file(out), sources):
        raise click.BadParameter(f"{out} is one of the SOURCES; write the shipped database to another file",
                                 param_hint="'--out'")
    with failures():
        taken = ship(sources, out, prepare=stamp_kernel_hash)
    click.echo(f"wrote {taken} winners to {out}")


@db.command("verify")
@DB_OPTION
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the fresh random inputs.")
def db_verify(db_path, seed) -> None:
    """Check every winner tuned on this GPU against the float64 reference on fresh data.

    Example: maxsim-forge db verify --db maxsim_forge/tuned_db/data/NVIDIA_H100_80GB_HBM3.db
    """
    interpreted = use_interpreter_without_cuda()
    from ..tuner import verify_winners

    tuned = open_read(db_path)
    check_cache()
    with failures():
        rows = verify_winners(tuned, seed=seed, device="cpu" if interpreted else "cuda")
    click.echo(table(("bucket", "config", "status", "detail"), rows))
    if any(r[2] != "ok" for r in rows):
        raise click.ClickException("some winners do not match the reference or cannot be read")
