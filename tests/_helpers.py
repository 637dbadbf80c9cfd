"""What several test modules share: tiny tuning buckets, tuned rows put in a database
for the lookup and warm-up tests, and compiled kernels as a GPU would hold them (compile marks)."""

from __future__ import annotations

import torch

from maxsim_forge._keys import gpu_info
from maxsim_forge.codegen import KernelConfig, template_hash
from maxsim_forge.tuned_db import BucketKey, TunedDB
from maxsim_forge.tuner import Bucket

from conftest import DEVICE, randn

TINY = [Bucket(layout="padded", dtype="fp16", dim=32, lq=8, nb=3, ld=20, d_mask="lengths", name="tiny"),
        Bucket(layout="allpairs", dtype="bf16", dim=32, nq=3, lq=4, nb=3, ld=16, name="tiny-multi")]


def _gpu():
    return gpu_info(torch.device(DEVICE))


def _winner(db: TunedDB, cfg: KernelConfig, *, gpu=None, cc=None, lq=32, ld=64, nb=4, nq=1, layout="padded",
            docs="full"):
    g = _gpu()
    key = BucketKey(gpu=gpu or g.name, cc=cc or g.cc, layout=layout, dtype="fp16", precision="native", dim=128,
                    nq_bucket=nq, lq_bucket=lq, nb_bucket=nb, ld_bucket=ld, docs=docs)
    db.put_winner(key, {"config": cfg.to_dict(), "time_ms": 1.0, "baseline_ms": 2.0, "speedup": 2.0,
                        "near_best": [], "trials": 3, "seed": 0, "template_hash": template_hash()})
    return key


def _call():
    q, d = randn(32, 128), randn(3, 40, 128)  # buckets: lq 32, ld 64, nb 4
    return q, d


CFG_A = KernelConfig(block_q=32, block_d=16, block_k=64, num_warps=2, num_stages=2)
CFG_B = KernelConfig(block_q=16, block_d=32, block_k=128, num_warps=4, num_stages=1)


HASH = "ab" * 32  # a compiled kernel's hash; Triton's cache names its entry by the base32 of it
ENTRY = "VOV2XK5LVOV2XK5LVOV2XK5LVOV2XK5LVOV2XK5LVOV2XK5LVOVQ"


def compiled_here(monkeypatch, tmp_path):
    """As on a GPU: the launchers hold a compiled kernel, and Triton's cache its entry."""
    from types import SimpleNamespace

    from maxsim_forge.codegen import Launcher

    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setattr(Launcher, "compiled_for", lambda self, key: SimpleNamespace(hash=HASH))
    (tmp_path / "triton" / ENTRY).mkdir(parents=True)
    (tmp_path / "triton" / ENTRY / "__grp__kernel.json").write_text("{}")


def one_error(result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and one ``Error:`` line last naming every needle,
    no traceback; returns that line."""
    assert isinstance(result.exception, SystemExit), f"{result.exception!r}: {result.output}"
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), result.output
    assert sum(line.startswith("Error:") for line in lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"
    return lines[-1]
