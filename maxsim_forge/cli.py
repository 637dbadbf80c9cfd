"""The ``maxsim-forge`` command. Thin: each command calls one library function."""

from __future__ import annotations

import json
import os

import click

from .codegen import DTYPES, LAYOUTS, MASK_KINDS, Q_MODES, ConfigError, KernelConfig, KernelSpec


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
