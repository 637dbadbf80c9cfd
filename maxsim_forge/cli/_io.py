"""``maxsim-forge export`` and ``import``: tuned winners for another program."""

from __future__ import annotations

import click

from ._db import export_json_file, import_json_file, merge_into
from ._group import DB_OPTION, failures, main, open_read, out_folder, writable_db_file


@main.command("export")
@DB_OPTION
@click.option("--format", "fmt", type=click.Choice(["vllm", "json"]), required=True,
              help="vllm: one JSON file per (op, dim, device, dtype) named as vLLM names tuned configs; json: one file.")
@click.option("--out", type=click.Path(), required=True, help="Folder (vllm) or file (json) to write.")
@click.option("--trials", "with_trials", is_flag=True, help="json: include every trial, not only winners.")
def export_cmd(db_path, fmt, out, with_trials) -> None:
    """Export the tuned winners: to review, to move between machines (json), or for vLLM.

    Example: maxsim-forge export --format vllm --out vllm_configs/
    """
    if with_trials and fmt != "json":
        raise click.BadParameter("--trials goes with --format json", param_hint="'--trials'")
    if fmt == "json":
        export_json_file(db_path, out, trials=with_trials)
        return
    from ..integrations.vllm import export_vllm

    folder = out_folder(out)
    tuned = open_read(db_path)
    with failures():
        files = export_vllm(tuned, folder)
    for f in files:
        click.echo(str(f))
    click.echo(f"wrote {len(files)} files to {out}")


@main.command("import")
@DB_OPTION
@click.option("--format", "fmt", type=click.Choice(["vllm", "json"]), required=True,
              help="vllm: a folder of vLLM-format files; json: a file from export --format json.")
@click.argument("source", type=click.Path(exists=True))
def import_cmd(db_path, fmt, source) -> None:
    """Import tuned winners, keeping the better winner per key (current, then faster).

    Example: maxsim-forge import --format vllm vllm_configs/ --db tuned.db
    """
    from pathlib import Path

    is_dir = Path(source).is_dir()
    if is_dir != (fmt == "vllm"):
        want = "a folder of vLLM-format files" if fmt == "vllm" else "a JSON file"
        raise click.BadParameter(f"{source} is a {'folder' if is_dir else 'file'}; --format {fmt} reads {want}",
                                 param_hint="'SOURCE'")
    if fmt == "json":
        import_json_file(db_path, source)
        return
    from ..integrations.vllm import vllm_rows

    writable_db_file(db_path)  # a mistake on the command line first
    with failures():
        rows = vllm_rows(source)  # every file read and checked before the database is opened or made
    merge_into(db_path, [(source, rows)])
