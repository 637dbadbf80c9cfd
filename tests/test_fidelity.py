"""Ranking fidelity of quantized docs (maxsim_forge/fidelity.py): the corpus it ranks and
the numbers it reports."""

from __future__ import annotations

import pytest
import torch

from maxsim_forge.fidelity import _recall, clustered_corpus, ranking_fidelity


def test_the_corpus_is_clustered_with_near_duplicates():
    q, d = clustered_corpus(docs=40, queries=5, lq=6, ld=10, dim=32, topics=3, duplicates=4, seed=2)
    assert q.shape == (5, 6, 32) and d.shape == (40, 10, 32)
    assert torch.allclose(d.norm(dim=-1), torch.ones(40, 10), atol=1e-5)
    assert torch.allclose(q.norm(dim=-1), torch.ones(5, 6), atol=1e-5)
    twins = (d[0] * d[1]).sum(-1).mean()  # one group of near-duplicates
    strangers = (d[0] * d[4:].mean(0)).sum(-1).mean()
    assert twins > 0.99 and strangers < twins
    again, _ = clustered_corpus(docs=40, queries=5, lq=6, ld=10, dim=32, topics=3, duplicates=4, seed=2)
    assert torch.equal(again, q)  # seeded


def test_recall_counts_the_shared_top_k():
    truth = torch.tensor([[5.0, 4, 3, 2, 1], [1.0, 2, 3, 4, 5]])
    assert _recall(truth, truth, 2) == 1.0
    swapped = torch.tensor([[5.0, 4, 1, 2, 3], [5.0, 4, 3, 2, 1]])  # query 0 keeps its top 2; query 1 loses both
    assert _recall(swapped, truth, 2) == 0.5


def test_ranking_fidelity_reports_every_way_and_int8_errs_less_than_fp8():
    rows = ranking_fidelity(docs=40, queries=3, lq=4, ld=8, dim=32, topics=4, duplicates=2, seed=1)
    assert [(r.format, r.quantize_query) for r in rows] == [
        ("int8", False), ("int8", True), ("fp8_e4m3", False), ("fp8_e4m3", True)]
    for r in rows:
        assert 0.0 <= r.recall <= 1.0 and r.k == 10
        assert 0.0 < r.max_abs_error and 0.0 < r.max_rel_error < 0.05
    assert rows[0].max_abs_error < rows[2].max_abs_error  # 8 bits of integer against 3 of mantissa
    with pytest.raises(ValueError, match="k=10 is more than the corpus's 4 docs"):
        ranking_fidelity(docs=4, queries=2, lq=4, ld=4, dim=32)
