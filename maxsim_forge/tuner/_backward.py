"""Tuning the backward's winners kernel per bucket (``Bucket.op == "bwd"``): an Optuna study
over its tiles, warps and stages, every candidate checked on fresh data (each winner must
be a maximum of its row, in float64) and timed, the winner stored under the bucket's key
with op "bwd" (schema 9), where the runtime's backward looks it up."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import time

import optuna
import torch
from optuna.trial import TrialState

from .. import __version__
from .._keys import GpuInfo
from .._problems import first_docs, synth
from ..codegen import ConfigError, WinnersConfig, check_winners, template_hash, winners_config, winners_hash
from ..codegen import winners_smem
from ..reference import valid_tokens
from ..runtime import bucket_key, torch_backward, winners
from ..tuned_db import TunedDB
from . import _fleet
from ._presets import Bucket
from ._study import BucketResult, TuneOptions, _triton_version, make_sampler, study_name
from ._timing import time_fn

log = logging.getLogger("maxsim_forge.tuner")

SPACE = {"block_q": (16, 32, 64, 128), "block_d": (16, 32, 64, 128), "num_warps": (2, 4, 8), "num_stages": (1, 2, 3)}
# Docs of the fresh problem each candidate is checked on.
CHECK_DOCS = 24


def space_id() -> str:
    """The hash of :data:`SPACE`: a backward row found in another space is tuned again by
    ``tune --refresh``."""
    return hashlib.sha256(repr(sorted(SPACE.items())).encode()).hexdigest()[:16]


def winners_space(spec, gpu: GpuInfo) -> list[WinnersConfig]:
    """Every config of :data:`SPACE` the winners kernel takes for ``spec`` on ``gpu``."""
    out = []
    for values in itertools.product(*SPACE.values()):
        cfg = WinnersConfig(**dict(zip(SPACE, values)))
        try:
            check_winners(spec, cfg)
        except ConfigError:
            continue
        if winners_smem(spec, cfg) <= gpu.smem_limit:
            out.append(cfg)
    return out


def check_winners_output(prep, idx: torch.Tensor) -> str | None:
    """Why ``idx`` is not a set of winners of ``prep`` (each a maximum of its row within
    rounding, -1 exactly where a row has no valid doc token), or None."""
    from ..reference import unpack

    k = prep.launch_kwargs
    q, d = prep.q.double(), prep.d.double()
    if prep.spec.layout == "pairs":
        qs, q_len = unpack(q, k["q_cu"])
        ds, d_len = unpack(d, k["d_cu"])
        s = torch.einsum("bid,bjd->bij", qs, ds)  # [nb, lq, ld]
        d_valid = valid_tokens(ds.shape[0], ds.shape[1], d_len, None, d.device)[:, None, :]
        q_valid = valid_tokens(qs.shape[0], qs.shape[1], q_len, None, q.device)
        got = torch.full(q_valid.shape, -1, dtype=torch.long, device=q.device)
        got[q_valid] = idx.long()
    else:
        if prep.spec.layout == "packed":
            d, d_len = unpack(d, k["d_cu"])
            d_valid = valid_tokens(d.shape[0], d.shape[1], d_len, None, d.device)
        else:
            d_valid = valid_tokens(d.shape[0], d.shape[1], k.get("d_lengths"), k.get("d_mask"), d.device)
        nq, lq = k["nq"], k["lq"]
        q_valid = valid_tokens(nq, lq, k.get("q_lengths"), k.get("q_mask"), q.device).reshape(1, -1)
        s = torch.einsum("md,bjd->bmj", q.reshape(nq * lq, -1), d)  # [nb, m, ld]
        d_valid = d_valid[:, None, :]
        got = idx.long()
    s = s.masked_fill(~d_valid, float("-inf"))
    best = s.amax(-1)
    has = ~torch.isneginf(best) & q_valid
    if bool(((got >= 0) != has).any()):
        return "a row with no winner got one, or one with a winner got none"
    picked = s.gather(-1, got.clamp(min=0)[..., None])[..., 0]
    scale = float(s[has].abs().max()) if bool(has.any()) else 1.0
    gap = (best - picked)[has]
    if gap.numel() and float(gap.max()) > 1e-3 * max(scale, 1e-30):
        return f"a winner is {float(gap.max()):.3e} below its row's maximum"
    return None


class WinnersTuner:
    """Tunes one backward bucket on one device into one database."""

    def __init__(self, bucket: Bucket, db: TunedDB, gpu: GpuInfo, opts: TuneOptions):
        self.bucket, self.db, self.gpu, self.opts = bucket, db, gpu, opts
        shapes = synth(bucket.spec, bucket.sizes, device="meta", seed=opts.seed, skew=bucket.layout == "packed")
        self.spec = shapes.prep.spec
        self.key = dataclasses.replace(bucket_key(shapes.prep, gpu), op="bwd")

    def run(self, bar=None) -> BucketResult:
        opts, result = self.opts, BucketResult(self.bucket, self.key)
        space = winners_space(self.spec, self.gpu)
        if not space:
            return result
        problem = synth(self.spec, self.bucket.sizes, device=opts.device, seed=opts.seed,
                        skew=self.bucket.layout == "packed")
        prep = problem.prep
        check = first_docs(prep, CHECK_DOCS)
        sizes = prep.sizes
        heuristic = winners_config(self.spec, rows=sizes["lq"] if self.spec.layout == "pairs"
                                   else sizes["nq"] * sizes["lq"], ld=sizes["ld"] or 64)
        name = study_name(self.gpu, self.key)
        study = optuna.create_study(study_name=name, storage=opts.storage, direction="minimize", load_if_exists=True,
                                    sampler=make_sampler(opts.seed, opts.trials))
        if not study.get_trials(deepcopy=False) and heuristic in space:
            study.enqueue_trial(dataclasses.asdict(heuristic))
        timed: dict[WinnersConfig, float] = {}
        target = min(opts.trials, len(space))
        for _ in range(4 * target):
            done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
            if done >= target or (opts.deadline is not None and time.monotonic() > opts.deadline):
                result.cut = done < target
                break
            (trial,) = _fleet.ask(study, 1)
            cfg = WinnersConfig(**{n: trial.suggest_categorical(n, list(v)) for n, v in SPACE.items()})
            if cfg not in space or cfg in timed:
                study.tell(trial, timed.get(cfg), state=None if cfg in timed else TrialState.PRUNED,
                           skip_if_finished=True)
                continue
            with _fleet.heartbeat(study, [trial]):
                try:
                    why = check_winners_output(check, winners(check, cfg))
                    t = None if why else time_fn(lambda c=cfg: winners(prep, c), device=opts.device).median_ms
                except Exception as exc:  # noqa: BLE001 - a config this device cannot compile or run
                    why, t = f"{type(exc).__name__}: {str(exc)[:300]}", None
            if why:
                trial.set_user_attr("status", why)
                study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
                continue
            timed[cfg] = t
            study.tell(trial, t, skip_if_finished=True)
            if bar is not None:
                bar.n = min(len(timed), target)
                bar.set_postfix_str(f"best {min(timed.values()):.4f} ms")
                bar.refresh()
        if not timed:
            return result
        best = min(timed, key=timed.get)
        grad = torch.randn(prep.launch_kwargs["nb"] if self.spec.layout == "pairs" else
                           (prep.launch_kwargs["nq"], prep.launch_kwargs["nb"]), device=prep.q.device)
        baseline = time_fn(lambda: torch_backward(prep, grad, True, True), device=opts.device).median_ms
        result.config, result.time_ms, result.baseline_ms, result.trials = best, timed[best], baseline, len(timed)
        self.db.offer_winner(self.key, {
            "config": dataclasses.asdict(best), "time_ms": timed[best], "baseline_ms": baseline,
            "speedup": baseline / timed[best] if timed[best] else None, "near_best": [], "trials": len(timed),
            "cut": int(result.cut), "seed": opts.seed, "template_hash": template_hash(),
            "kernel_hash": winners_hash(self.spec.layout, self.spec.dtype, self.spec.dim, self.spec.precision, best),
            "space_hash": space_id(),
            "sm_count": self.gpu.sm_count, "smem_limit": self.gpu.smem_limit, "triton_version": _triton_version(),
            "torch_version": str(torch.__version__), "package_version": __version__,
        }, study=True)
        if not result.cut:
            study.set_user_attr("committed_by", _fleet.worker_id())
        return result


__all__ = ["SPACE", "WinnersTuner", "check_winners_output", "space_id", "winners_space"]
