"""vLLM's vanilla late-interaction scorer, re-implemented as the baseline it is measured against.

The algorithm: walk the pairs in windows of at most ``max_batch_size``, shrinking a
window until ``pairs * longest query * longest doc`` fits ``max_score_matrix_elements``;
pad each window into float32 buffers with a Python loop; ``bmm``; mask padded doc
tokens with -inf; max; zero padded query tokens; sum. A doc with no tokens scores -inf
here (maxsim-forge scores it 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def vanilla_maxsim_batched(
    q_embs: Sequence[torch.Tensor],
    d_embs: Sequence[torch.Tensor],
    max_batch_size: int = 64,
    max_score_matrix_elements: int = 64_000_000,
) -> list[torch.Tensor]:
    scores: list[torch.Tensor] = []
    n = len(q_embs)
    start = 0
    while start < n:
        end = min(start + max_batch_size, n)
        while True:
            lq = max(int(t.shape[0]) for t in q_embs[start:end])
            ld = max(int(t.shape[0]) for t in d_embs[start:end])
            if end - start == 1 or (end - start) * lq * ld <= max_score_matrix_elements:
                break
            end -= 1
        count, device, dim = end - start, q_embs[start].device, int(q_embs[start].shape[1])
        qb = torch.zeros(count, lq, dim, dtype=torch.float32, device=device)
        db = torch.zeros(count, ld, dim, dtype=torch.float32, device=device)
        qm = torch.zeros(count, lq, dtype=torch.bool, device=device)
        dm = torch.zeros(count, ld, dtype=torch.bool, device=device)
        for i in range(count):
            q, d = q_embs[start + i], d_embs[start + i]
            qb[i, : q.shape[0]] = q.to(device=device, dtype=torch.float32)
            db[i, : d.shape[0]] = d.to(device=device, dtype=torch.float32)
            qm[i, : q.shape[0]] = True
            dm[i, : d.shape[0]] = True
        s = torch.bmm(qb, db.transpose(1, 2))
        s.masked_fill_(~dm[:, None, :], float("-inf"))
        best = s.amax(dim=-1)
        best.masked_fill_(~qm, 0.0)
        scores.extend(best.sum(dim=-1).unbind(0))
        start = end
    return scores
