"""Ranking fidelity of quantized docs: a clustered synthetic corpus scored in fp32 and with
int8 and fp8 docs, reported as recall@k against the fp32 ranking and the largest score
error.

The corpus is made to make quantization flip ranks where it can: documents come in topics
(tokens drawn around a topic's centres) and each document has near-duplicates (the same
tokens with a little noise), so the scores near the k-th place lie close together. Queries
are noisy subsets of one document's tokens. Every token is L2-normalised, as ColBERT's are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .quant import FORMATS, quantize
from .runtime import maxsim

TARGET_RECALL = 0.99


@dataclass(frozen=True)
class Fidelity:
    """One way of scoring against fp32: recall@k and the score errors."""

    format: str  # "int8" or "fp8_e4m3"
    quantize_query: bool
    recall: float  # mean over queries of |top-k here ∩ top-k fp32| / k
    k: int
    max_abs_error: float  # largest |score - fp32 score|
    max_rel_error: float  # the same over the largest fp32 score

    def row(self) -> tuple:
        path = "query quantized too" if self.quantize_query else "query as given"
        return (self.format, path, f"{self.recall:.4f}", f"{self.max_abs_error:.4f}", f"{self.max_rel_error:.2e}")


def _normed(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def clustered_corpus(*, docs: int = 2000, queries: int = 64, lq: int = 32, ld: int = 64, dim: int = 128,
                     topics: int = 50, duplicates: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries ``[Nq, Lq, dim]``, docs ``[B, Ld, dim]``), float32 on the CPU: ``docs`` in
    groups of ``duplicates`` near-copies, spread over ``topics``."""
    if docs < 1 or queries < 1 or duplicates < 1 or topics < 1:
        raise ValueError("docs, queries, topics and duplicates must be >= 1")
    g = torch.Generator().manual_seed(seed)

    def noise(norm: float, *shape: int) -> torch.Tensor:  # of about this norm per token
        return norm / dim**0.5 * torch.randn(*shape, dim, generator=g)

    centres = _normed(torch.randn(topics, 8, dim, generator=g))  # a topic: 8 unit centres
    groups = -(-docs // duplicates)
    topic = torch.randint(0, topics, (groups,), generator=g)
    pick = torch.randint(0, 8, (groups, ld), generator=g)
    # A document's tokens lie near its topic's centres (noise of norm 0.5); its
    # near-duplicates differ from it by noise of norm 0.05 a token.
    base = _normed(centres[topic[:, None], pick] + noise(0.5, groups, ld))
    d = _normed(base.repeat_interleave(duplicates, 0)[:docs] + noise(0.05, docs, ld))
    # A query: tokens of one document, each moved by noise of norm 0.3.
    src = torch.randint(0, docs, (queries,), generator=g)
    tok = torch.randint(0, ld, (queries, lq), generator=g)
    q = _normed(d[src[:, None], tok] + noise(0.3, queries, lq))
    return q, d


def _recall(scores: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    top = scores.topk(k, dim=1).indices
    want = truth.topk(k, dim=1).indices
    hits = (top[:, :, None] == want[:, None, :]).any(-1).sum(1).double() / k
    return float(hits.mean())


def ranking_fidelity(*, device: str = "cpu", dtype: torch.dtype = torch.float16, k: int = 10,
                     quantize_query: bool = True, **corpus) -> list[Fidelity]:
    """Score the clustered corpus with fp32 docs and queries (the truth), then with the
    docs in each format (the query in ``dtype``), and, with ``quantize_query``, with the
    query quantized too; one :class:`Fidelity` per way."""
    q32, d32 = clustered_corpus(**corpus)
    if k > d32.shape[0]:
        raise ValueError(f"k={k} is more than the corpus's {d32.shape[0]} docs")
    truth = maxsim(q32.to(device), d32.to(device), precision="ieee").double().cpu()
    q = q32.to(device, dtype)
    out = []
    for fmt in FORMATS:
        docs = quantize(d32.to(device), fmt)
        for qq in (False, True) if quantize_query else (False,):
            scores = maxsim(q, docs, quantize_query=qq).double().cpu()
            err = (scores - truth).abs().max().item()
            out.append(Fidelity(fmt, qq, _recall(scores, truth, k), k, err, err / truth.abs().max().item()))
    return out


__all__ = ["TARGET_RECALL", "Fidelity", "clustered_corpus", "ranking_fidelity"]
