"""Commands that generate or run kernels: ``codegen``, ``check``, ``warmup``, ``bench``."""

from __future__ import annotations

import json

import click

from ..codegen import CODES, DTYPES, LAYOUTS, MASK_KINDS, ConfigError, KernelConfig, KernelSpec
from ._group import SEED, check_cache, failures, main, out_folder, table, use_interpreter_without_cuda


def _spec_options(f):
    options = [
        click.option("--layout", type=click.Choice(LAYOUTS), default="padded", show_default=True,
                     help="Call layout the kernel is specialised on."),
        click.option("--dtype", type=click.Choice(DTYPES), default="fp16", show_default=True,
                     help="Input dtype (accumulation is always fp32)."),
        click.option("--dim", type=click.IntRange(min=1), default=128, show_default=True,
                     help="Embedding dimension (exact; at most 3584 for fp16/bf16, 1792 for fp32 on Hopper)."),
        click.option("--precision", type=click.Choice(["tf32", "ieee"]), default="tf32",
                     show_default=True, help="fp32 dot precision."),
        click.option("--q-mask", type=click.Choice(MASK_KINDS), default="none", show_default=True,
                     help="How invalid query tokens are given."),
        click.option("--d-mask", type=click.Choice(MASK_KINDS), default="none", show_default=True,
                     help="How invalid doc tokens are given."),
        click.option("--codes", type=click.Choice(CODES), default="none", show_default=True,
                     help="Quantized docs: int8 or fp8 (e4m3) codes; int8xint8 and fp8xfp8 quantize the query too."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command()
@_spec_options
@click.option("--config", "config_json", default=None,
              help='Config as JSON, e.g. \'{"block_q": 64, "q_mode": "grid"}\'; unset knobs keep defaults '
                   '(block_k: at most the dim rounded up to a power of two).')
@click.option("--smem-limit", type=click.IntRange(min=1), default=None,
              help="Shared-memory bytes per block to validate against (default: Hopper's).")
def codegen(layout, dtype, dim, precision, q_mask, d_mask, codes, config_json, smem_limit) -> None:
    """Print the generated Triton source of one variant.

    Example: maxsim-forge codegen --layout allpairs --dim 96 --config '{"q_mode": "fold"}'
    """
    from ..codegen import next_pow2, render
    from ..runtime import largest_dim

    most = largest_dim(dtype, smem_limit)
    if not most:
        raise click.BadParameter(f"{smem_limit} bytes of shared memory per block fit no {dtype} kernel; accepted: at "
                                 f"least {_least_smem(dtype)}", param_hint="'--smem-limit'")
    if dim > most:
        raise click.BadParameter(f"{dim} is above the largest dim the generated kernels take for {dtype} "
                                 f"with this shared memory ({most})", param_hint="'--dim'")
    spec = KernelSpec(layout, dtype, dim, precision, q_mask, d_mask, codes)
    try:
        spec.validate()
    except ConfigError as exc:  # options that contradict each other: q_mask and layout, say
        raise click.UsageError(str(exc)) from None
    try:
        given = json.loads(config_json) if config_json else {}
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc}): {config_json}", param_hint="'--config'") from None
    if not isinstance(given, dict):
        raise click.BadParameter(f"a JSON object of knobs is expected, got {type(given).__name__}: {config_json}",
                                 param_hint="'--config'")
    if "block_k" not in given:  # the default tile, no wider than the dim
        given["block_k"] = min(KernelConfig.block_k, max(16, next_pow2(dim)))
    try:
        source = render(spec, KernelConfig.from_dict(given), smem_limit=smem_limit)
    except (ConfigError, TypeError) as exc:
        if config_json:  # a knob given, or one the given ones contradict
            raise click.BadParameter(str(exc), param_hint="'--config'") from None
        if smem_limit:  # the default tiles do not fit it
            raise click.BadParameter(f"{exc}; smaller tiles in --config may fit", param_hint="'--smem-limit'") \
                from None
        raise click.ClickException(str(exc)) from exc
    click.echo(source, nl=False)


def _least_smem(dtype: str) -> int:
    """The fewest bytes of shared memory per block in which a kernel of ``dtype`` fits."""
    from ..codegen import DEFAULT_SMEM_LIMIT
    from ..runtime import largest_dim

    low, high = 0, DEFAULT_SMEM_LIMIT  # high fits a dim, low none
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if largest_dim(dtype, mid) else (mid, high)
    return high


@main.command()
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Docs to score, at least 1 (default: 1024 on a GPU, 8 through the interpreter).")
@click.option("--dtype", type=click.Choice(DTYPES), default="fp16", show_default=True,
              help="Input dtype.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed (0 to 2**32 - 1).")
@click.option("--fidelity", is_flag=True,
              help="Instead: rank a clustered corpus of near-duplicate docs with fp32, int8 and fp8 docs and "
                   "report recall@10 and the largest score error against fp32.")
def check(batch, dtype, seed, fidelity) -> None:
    """Score a random ColBERT-shaped batch (Lq 32, Ld 300, dim 128) and compare with float64.

    Example: maxsim-forge check --batch 64 --dtype bf16; maxsim-forge check --fidelity
    """
    from ..selfcheck import colbert_check

    interpreted = use_interpreter_without_cuda()
    if fidelity:
        _fidelity(dtype, seed, interpreted)
        return
    if interpreted:
        click.echo("No CUDA device: running the generated kernel through Triton's interpreter.")
    check_cache()
    with failures():
        report = colbert_check(batch=batch, dtype=dtype, seed=seed)
    click.echo(report.text())
    if not report.ok:
        raise click.ClickException("the generated kernel does not match the float64 reference")


def _fidelity(dtype: str, seed: int, interpreted: bool) -> None:
    """``check --fidelity``: the ranking fidelity table; fails where the default path
    (the query as given) misses its recall target."""
    import torch

    from ..codegen import torch_dtype
    from ..fidelity import TARGET_RECALL, ranking_fidelity

    # The interpreter takes minutes on the full corpus: there, a smaller one.
    size = dict(docs=60, queries=4, lq=8, ld=16, dim=32) if interpreted else {}
    where = "cuda" if torch.cuda.is_available() else "cpu"
    if interpreted:
        click.echo("No CUDA device: scoring through Triton's interpreter on a smaller corpus.")
    with failures():
        rows = ranking_fidelity(device=where, dtype=torch_dtype(dtype), seed=seed, **size)
    click.echo(table(("docs", "query", f"recall@{rows[0].k}", "max |error|", "relative"), [r.row() for r in rows]))
    missed = [r for r in rows if not r.quantize_query and r.recall < TARGET_RECALL]
    for r in missed:
        click.echo(f"{r.format} with the query as given: recall@{r.k} {r.recall:.4f} is under the target "
                   f"{TARGET_RECALL} by {TARGET_RECALL - r.recall:.4f}")
    if missed:
        raise click.ClickException("ranking fidelity under its target")


def _buckets(values: tuple[str, ...], device: str) -> list[dict] | None:
    """``--bucket`` values parsed and checked, their dims against this device's shared
    memory: a usage error names the bucket and field."""
    import torch

    from .._keys import gpu_info
    from ..runtime import check_bucket, largest_dim

    smem_limit = gpu_info(torch.device(device)).smem_limit if values else None
    parsed = []
    for i, text in enumerate(values):
        try:
            bucket = json.loads(text)
            spec, _ = check_bucket(bucket, i)
        except ValueError as exc:  # JSONDecodeError is one
            raise click.BadParameter(" ".join(str(exc).split()), param_hint="'--bucket'") from exc
        most = largest_dim(spec.dtype, smem_limit)
        if spec.dim > most:
            raise click.BadParameter(f"bucket {i}: dim={spec.dim} is above the largest the generated kernels take for "
                                     f"{spec.dtype} on this device ({most}); torch scores larger dims, with nothing "
                                     "to warm up", param_hint="'--bucket'")
        parsed.append(bucket)
    return parsed or None


@main.command()
@click.option("--bucket", "buckets", multiple=True,
              help='Bucket as JSON, e.g. \'{"layout": "padded", "dtype": "fp16", "dim": 128, "lq": 32, "ld": 300, '
                   '"nb": 1000}\' (optional: nq, precision, q_mask, d_mask).')
def warmup(buckets) -> None:
    """Compile ahead of time the variants this GPU would run (every tuned bucket by default).

    Example: maxsim-forge warmup
    """
    interpreted = use_interpreter_without_cuda()
    from ..runtime import warmup as run_warmup

    parsed = _buckets(buckets, "cpu" if interpreted else "cuda")
    check_cache()
    with failures():
        decisions = run_warmup(parsed, device="cpu" if interpreted else "cuda")
    for d in decisions:
        click.echo(str(d))
    click.echo(f"warmed {len(decisions)} variants")


@main.command()
@click.option("--cases", default="all", show_default=True,
              help="Comma-separated case names, or 'all'; --list shows them.")
@click.option("--impl", "impls", multiple=True,
              help="Implementations to run (repeatable; default: all), or module:function for one of your own.")
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True,
              help="Times the whole run is repeated, implementations interleaved; medians and intervals over them.")
@click.option("--heldout", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Also run this many seeded shapes that no preset tuned (at most 1000), reported as their own "
                   "table.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the inputs and the held-out shapes (0 to 2**32 - 1).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the CSV, JSON and PNG files [default: benchmarks/results/<gpu>-<date>].")
@click.option("--list", "list_cases", is_flag=True, help="List the cases and implementations, run nothing.")
def bench(cases, impls, repeat, heldout, seed, out, list_cases) -> None:
    """Time maxsim-forge next to torch, vLLM's algorithm, flash-maxsim and late-interaction-kernels.

    Each implementation runs each case in a process of its own with empty caches, its
    whole output checked against float64 before it is timed; the run repeats, and each
    case reports the median ratio to the faster peer with its interval.

    Example: maxsim-forge bench --cases colbert-1k-fp16,16-queries-x-1k --heldout 30
    """
    interpreted = use_interpreter_without_cuda()
    from .. import bench as b

    if list_cases:
        for c in b.CASES:
            click.echo(f"{c.name:20s} {c.layout:8s} nq {c.nq} lq {c.lq} nb {c.nb} ld {c.ld} dim {c.dim} {c.dtype}")
        click.echo("implementations: " + ", ".join(b.IMPLS))
        return
    try:
        chosen, held = b.select(cases, heldout, seed)
        for impl in impls:
            b.resolve_impl(impl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--cases'" if "case" in str(exc) else "'--impl'") from None
    if not chosen and not held:  # '' is held-out shapes only, with --heldout N
        raise click.BadParameter(f"{cases!r} names no case and --heldout is 0; accepted: comma-separated case names "
                                 "(--list shows them), all, or '' with --heldout N", param_hint="'--cases'")
    if out:
        out_folder(out)
    device = "cpu" if interpreted else "cuda"
    impls = list(impls) or list(b.IMPLS)
    for note in b.limitations(impls, device):
        click.echo(f"Note: {note}.")
    check_cache()
    out = out or b.release_folder()
    for name, group in (("bench", chosen), ("heldout", held)):
        if not group:
            continue
        def finished(so_far, meta, name=name):  # a run cut short keeps the cases it finished
            b.write(so_far, meta, out, name=name, chart=False)
            last = so_far[-1]
            if last.ratio:
                click.echo(f"  {last.case['name']}: {last.ratio['median']:.2f}x the faster peer "
                           f"[{last.ratio['low']:.2f}, {last.ratio['high']:.2f}] (written to {out})")

        results, meta = b.run(group, impls, device=device, repeats=repeat, seed=seed, log=click.echo, done=finished)
        for line in b.format_report(results, meta, title="held-out shapes" if name == "heldout" else "cases"):
            click.echo(line)
        for path in b.write(results, meta, out, name=name):
            click.echo(f"wrote {path}")
