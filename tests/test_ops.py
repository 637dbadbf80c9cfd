"""The torch.library custom ops (maxsim_forge/ops.py): opcheck on every op, and
torch.compile(fullgraph=True) of a training step through the public entry points."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import maxsim_forge as mf
from maxsim_forge import ops
from maxsim_forge.runtime import maxsim_pairs_packed

from conftest import DEVICE, randn


def _leaf(x):
    return x.detach().clone().requires_grad_()


def _cases():
    q2, q3 = randn(5, 16, dtype=torch.float32), randn(2, 4, 16, dtype=torch.float32)
    d = randn(3, 7, 16, dtype=torch.float32)
    lengths = torch.tensor([7, 0, 3], device=DEVICE)
    mask = torch.rand(3, 7, device=DEVICE) > 0.3
    q_mask = torch.rand(2, 4, device=DEVICE) > 0.2
    dp = randn(9, 16, dtype=torch.float32)
    cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32, device=DEVICE)
    qp = randn(6, 16, dtype=torch.float32)
    q_cu = torch.tensor([0, 2, 6, 6], dtype=torch.int32, device=DEVICE)
    return [
        ("padded", ops.maxsim, (_leaf(q2), _leaf(d), None, None, lengths, None, "ieee")),
        ("allpairs masks", ops.maxsim, (_leaf(q3), _leaf(d), None, q_mask, None, mask, "ieee")),
        ("packed", ops.maxsim_packed, (_leaf(q3), _leaf(dp), cu, None, None, None, "ieee")),
        ("pairs", ops.maxsim_pairs_packed, (_leaf(qp), q_cu, _leaf(dp), cu, 4, 5, "ieee")),
    ]


@pytest.mark.parametrize("n", range(4), ids=["padded", "allpairs-masks", "packed", "pairs"])
def test_opcheck(isolated_lookup, n):
    name, op, args = _cases()[n]
    result = opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("n", range(4), ids=["padded", "allpairs-masks", "packed", "pairs"])
def test_the_op_and_its_gradients_equal_the_entry_point(isolated_lookup, n):
    name, op, args = _cases()[n]
    out = op(*args)
    g = torch.randn(out.shape, device=DEVICE)
    grads = torch.autograd.grad(out, [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad], g)
    eager_args = [_leaf(a) if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args]
    if op is ops.maxsim:
        q, d, ql, qm, dl, dm, p = eager_args
        ref = mf.maxsim(q, d, q_lengths=ql, q_mask=qm, d_lengths=dl, d_mask=dm, precision=p)
    elif op is ops.maxsim_packed:
        q, d, cu, mdl, ql, qm, p = eager_args
        ref = mf.maxsim_packed(q, d, cu, max_doc_len=mdl, q_lengths=ql, q_mask=qm, precision=p)
    else:
        q, q_cu, d, d_cu, mq, md, p = eager_args
        ref = maxsim_pairs_packed(q, q_cu, d, d_cu, max_q_len=mq, max_d_len=md, precision=p)
    ref_grads = torch.autograd.grad(ref, [a for a in eager_args if isinstance(a, torch.Tensor) and a.requires_grad], g)
    # Where kernels run, the entry point's training forward sums the winners kernel's row
    # maxima (kept for its backward) and the op runs the forward kernel: the same scores
    # to float32 rounding, the same winners, so the same gradients.
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        assert torch.equal(a, b)


def test_compiled_training_step_has_no_graph_break(isolated_lookup):
    lengths = torch.tensor([7, 0, 3], device=DEVICE)
    cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32, device=DEVICE)

    def step(q, d, dp):
        a = mf.maxsim(q, d, d_lengths=lengths, precision="ieee")
        b = mf.maxsim_packed(q, dp, cu, precision="ieee")
        return torch.nn.functional.cross_entropy(torch.cat([a, b], dim=1), torch.tensor([0, 1], device=DEVICE))

    q, d, dp = randn(2, 4, 16, dtype=torch.float32), randn(3, 7, 16, dtype=torch.float32), \
        randn(9, 16, dtype=torch.float32)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(q, d, dp)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    leaves = [_leaf(x) for x in (q, d, dp)]
    loss = compiled(*leaves)
    loss.backward()
    ref_leaves = [_leaf(x) for x in (q, d, dp)]
    ref = step(*ref_leaves)
    ref.backward()
    assert torch.allclose(loss, ref)
    for a, b in zip(leaves, ref_leaves):
        assert torch.allclose(a.grad, b.grad)


def test_backward_ops_take_any_strides_and_compiled_calls_keep_their_checks(isolated_lookup):
    q = randn(2, 16, 5, dtype=torch.float32).transpose(1, 2)  # [2, 5, 16], not contiguous
    d = randn(3, 7, 16, dtype=torch.float32)
    g = torch.randn(2, 3, device=DEVICE)
    result = opcheck(ops.maxsim_backward, (g, q, d, None, None, None, None, "ieee", True, True))
    assert set(result.values()) == {"SUCCESS"}, result

    def bad_lengths(a, b):
        return mf.maxsim(a, b, q_lengths=torch.tensor([9, 2], device=DEVICE))

    torch._dynamo.reset()
    with pytest.raises(Exception, match="q_lengths holds values from 2 to 9"):
        torch.compile(bad_lengths, fullgraph=True, backend="aot_eager")(q, d)

    def quantized(a, b):
        return mf.maxsim(a, b, quantize_query=True)

    torch._dynamo.reset()
    with pytest.raises(Exception, match="not traced by torch.compile"):
        torch.compile(quantized, fullgraph=True, backend="aot_eager")(q, d)
