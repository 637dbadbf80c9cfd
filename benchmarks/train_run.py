"""A short contrastive training run scored by maxsim-forge and by torch, in one process.

    python benchmarks/train_run.py [--steps 300] [--out train.json] [--chart train.png]
    TRITON_INTERPRET=1 python benchmarks/train_run.py --device cpu --tiny --steps 20   # smoke test

Synthetic retrieval: a vocabulary of 4096 token ids; a doc is 64 random ids, its query 16
ids sampled from the doc (without repetition) with a quarter of them replaced by random ids.
The encoder is nn.Embedding(4096, 256) -> nn.Linear(256, 128) -> L2-normalize per token,
the embedding shared, the Linear one for queries and one for docs (see ``Encoder``). Each
step scores a batch of 32 (query, doc) pairs in-batch (scores [32, 32] by MaxSim) with loss
cross_entropy(scores.float() / 0.05, arange(32)), AdamW lr 1e-3. Both runs start from the
same weights (seed) and see the same batches. On CUDA the encoder runs under bf16 autocast
and its tokens are cast to bf16 before scoring (F.normalize would otherwise hand fp32 to
the scorer); on CPU everything is fp32.

Backends: ``maxsim-forge`` (``maxsim_forge.maxsim``) and ``torch``, PyLate's colbert_scores
formula ``einsum("ash,bth->abst").max(-1).values.sum(-1)`` on the same tokens upcast to
fp32 (the reference: bf16 similarities would pick other winners among near-ties). Steps per second count whole steps (encode, score, backward, AdamW) after
10 warm-up steps, between CUDA synchronizations.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
from typing import Callable

os.environ.setdefault("MAXSIM_FORGE_COMPILE", "blocking")  # every step runs the kernels, not the torch stand-in

import torch
import torch.nn.functional as F
from torch import nn

TEMPERATURE = 0.05
NOISE = 0.25  # share of a query's ids replaced by random ids
WARMUP_STEPS = 10
FULL = {"vocab": 4096, "emb": 256, "dim": 128, "doc_len": 64, "query_len": 16, "batch": 32, "steps": 300}
TINY = {"vocab": 4096, "emb": 64, "dim": 32, "doc_len": 16, "query_len": 8, "batch": 8, "steps": 20}
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def torch_scores(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The torch reference: PyLate's ``colbert_scores`` formula (no masks) on the same tokens
    in fp32, so that its similarities are not rounded to bf16 before the max: [nq, nd]."""
    return torch.einsum("ash,bth->abst", q.float(), d.float()).max(dim=-1).values.sum(dim=-1)


def forge_scores(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """maxsim-forge's all-pairs MaxSim: [nq, nd] float32."""
    import maxsim_forge

    return maxsim_forge.maxsim(q, d)


BACKENDS: dict[str, ScoreFn] = {"maxsim-forge": forge_scores, "torch": torch_scores}


class Encoder(nn.Module):
    """Token ids -> L2-normalized token embeddings in ``out_dtype``; one embedding table, one
    projection for queries and one for docs (a single shared projection maps a query token to
    its doc token exactly, similarity 1, and the loss is 0 from the first step)."""

    def __init__(self, vocab: int, emb: int, dim: int, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.emb, self.out_dtype = nn.Embedding(vocab, emb), out_dtype
        self.q_proj, self.d_proj = nn.Linear(emb, dim), nn.Linear(emb, dim)

    def forward(self, ids: torch.Tensor, query: bool) -> torch.Tensor:
        proj = self.q_proj if query else self.d_proj
        return F.normalize(proj(self.emb(ids)), dim=-1).to(self.out_dtype)


def make_data(cfg: dict, steps: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries [steps * batch, query_len] and their docs [steps * batch, doc_len] of token ids."""
    n, lq, ld, vocab = steps * cfg["batch"], cfg["query_len"], cfg["doc_len"], cfg["vocab"]
    if lq > ld:
        raise ValueError(f"query_len ({lq}) must not exceed doc_len ({ld}): queries sample the doc's ids")
    g = torch.Generator().manual_seed(seed)
    docs = torch.randint(vocab, (n, ld), generator=g)
    queries = docs.gather(1, torch.rand(n, ld, generator=g).argsort(dim=1)[:, :lq])
    k = round(NOISE * lq)
    noisy = torch.rand(n, lq, generator=g).argsort(dim=1)[:, :k]
    queries.scatter_(1, noisy, torch.randint(vocab, (n, k), generator=g))
    return queries.to(device), docs.to(device)


def train(backend: str, cfg: dict, data: tuple[torch.Tensor, torch.Tensor], steps: int, lr: float,
          seed: int, device: torch.device) -> dict:
    """One training run: the loss of every step and the steps per second after the warm-up."""
    cuda = device.type == "cuda"
    torch.manual_seed(seed)
    model = Encoder(cfg["vocab"], cfg["emb"], cfg["dim"], torch.bfloat16 if cuda else torch.float32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    score, b = BACKENDS[backend], cfg["batch"]
    labels = torch.arange(b, device=device)
    losses = torch.zeros(steps, device=device)
    start = None
    for i in range(steps):
        if i == WARMUP_STEPS:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with amp:
            q, d = model(data[0][i * b:(i + 1) * b], True), model(data[1][i * b:(i + 1) * b], False)
            loss = F.cross_entropy(score(q, d).float() / TEMPERATURE, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[i] = loss.detach()
    if cuda:
        torch.cuda.synchronize()
    sps = (steps - WARMUP_STEPS) / (time.perf_counter() - start) if start is not None else None
    return {"losses": losses.tolist(), "steps_per_s": sps}


def chart(runs: dict[str, dict], path: str, title: str) -> None:
    """Loss against step for every run; says so and returns when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no chart written to {path} (pip install matplotlib)", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (name, run), style in zip(runs.items(), ("-", "--")):
        sps = run["steps_per_s"]
        ax.plot(run["losses"], style, label=name + (f" ({sps:.1f} steps/s)" if sps else ""), linewidth=1)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("maxsim-forge")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout on PYTHONPATH
        import maxsim_forge

        return getattr(maxsim_forge, "__version__", "checkout")


def environment(device: torch.device) -> dict:
    """Device, library versions, date and command line."""
    import importlib.metadata

    import triton

    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "triton": triton.__version__,
            "maxsim-forge": _version(),
            "triton_interpret": os.environ.get("TRITON_INTERPRET"), "date": datetime.datetime.now().isoformat(),
            "command": [sys.executable, *sys.argv]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help=f"default {FULL['steps']} ({TINY['steps']} with --tiny)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="small model and batch, for a CPU smoke test")
    ap.add_argument("--out", default=None, help="JSON file for the losses, the speeds and the environment")
    ap.add_argument("--chart", default=None, help="PNG file for the loss curves (needs matplotlib)")
    args = ap.parse_args()
    cfg = dict(TINY if args.tiny else FULL)
    steps = cfg["steps"] if args.steps is None else args.steps
    if steps < 1:
        raise SystemExit("--steps must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device (try --device cpu --tiny, TRITON_INTERPRET=1)")
    data = make_data(cfg, steps, args.seed, device)
    runs = {}
    for backend in BACKENDS:
        runs[backend] = train(backend, cfg, data, steps, args.lr, args.seed, device)
        sps = runs[backend]["steps_per_s"]
        print(f"{backend}: final loss {runs[backend]['losses'][-1]:.4f}, "
              f"{'-' if sps is None else f'{sps:.2f}'} steps/s", file=sys.stderr)
    a, b = (runs[k]["losses"] for k in BACKENDS)
    diffs = [abs(x - y) for x, y in zip(a, b)]
    summary = {"max_abs_loss_diff": max(diffs), "max_abs_loss_diff_step": diffs.index(max(diffs)),
               "final_losses": {k: r["losses"][-1] for k, r in runs.items()},
               "steps_per_s": {k: r["steps_per_s"] for k, r in runs.items()}}
    speeds = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in summary["steps_per_s"].items())
    finals = ", ".join(f"{k} {v:.4f}" for k, v in summary["final_losses"].items())
    print(f"max |loss difference| over {steps} steps: {summary['max_abs_loss_diff']:.3g} "
          f"(step {summary['max_abs_loss_diff_step']}); final losses: {finals}; steps/s: {speeds}")
    if args.chart:
        dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
        chart(runs, args.chart, f"in-batch contrastive, batch {cfg['batch']}, {dtype}, "
              f"{summary['max_abs_loss_diff']:.2g} max |loss diff|")
    if args.out:
        with open(args.out, "w") as fh:
            config = {**cfg, "steps": steps, "lr": args.lr, "seed": args.seed, "temperature": TEMPERATURE,
                      "noise": NOISE, "warmup_steps": WARMUP_STEPS}
            json.dump({"env": environment(device), "config": config, "summary": summary, "runs": runs}, fh, indent=1)


if __name__ == "__main__":
    main()
