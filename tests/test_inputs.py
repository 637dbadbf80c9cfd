"""Bad input raises a TypeError or ValueError naming the argument, the value and what is accepted."""

from __future__ import annotations

import pytest
import torch

from maxsim_forge._inputs import pack_pairs, prepare_packed, prepare_padded, prepare_pairs


def _q(*shape, dtype=torch.float16):
    return torch.randn(*shape).to(dtype)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(q=_q(4, 2, 3, 8), d=_q(2, 5, 8)), ValueError, r"q has shape \(4, 2, 3, 8\); expected \[Lq, dim\] or \[Nq, Lq, dim\]"),
        (dict(q=_q(3, 8), d=_q(5, 8)), ValueError, r"d has shape \(5, 8\); expected \[B, Ld, dim\]"),
        (dict(q=_q(3, 8), d=_q(2, 5, 16)), ValueError, "d has 16 features but q has 8; both must match"),
        (dict(q=_q(3, 8), d=_q(2, 5, 8, dtype=torch.float32)), TypeError, "d has dtype torch.float32 but q has torch.float16"),
        (dict(q=_q(3, 8).int(), d=_q(2, 5, 8)), TypeError, r"q has dtype torch.int32; accepted: torch.float16, torch.bfloat16, torch.float32, torch.float64 \(float64 through torch only\)"),
        (dict(q=_q(3, 8).double(), d=_q(2, 5, 8)), TypeError, r"d has dtype torch.float16 but q has torch.float64; both must match"),
        (dict(q=_q(3, 8).to(torch.int8), d=_q(2, 5, 8)), TypeError, "q has dtype torch.int8"),
        (dict(q=[[1.0]], d=_q(2, 5, 8)), TypeError, "q must be a torch.Tensor, got list"),
        (dict(q=_q(3, 8), d=_q(2, 5, 8), d_lengths=torch.tensor([5, 6])), ValueError, "d_lengths holds values from 5 to 6; accepted: 0 to 5"),
        (dict(q=_q(3, 8), d=_q(2, 5, 8), d_lengths=torch.tensor([-1, 2])), ValueError, "d_lengths holds values from -1 to 2; accepted: 0 to 5"),
        (dict(q=_q(3, 8), d=_q(2, 5, 8), d_lengths=torch.tensor([1.0, 2.0])), TypeError, "d_lengths has dtype torch.float32; accepted: torch.int32, torch.int64"),
        (dict(q=_q(3, 8), d=_q(2, 5, 8), d_lengths=torch.tensor([1, 2, 3])), ValueError, r"d_lengths has shape \(3,\); expected \(2,\)"),
        (dict(q=_q(2, 3, 8), d=_q(2, 5, 8), q_lengths=torch.tensor([4, 1])), ValueError, "q_lengths holds values from 1 to 4; accepted: 0 to 3"),
        (dict(q=_q(2, 3, 8), d=_q(2, 5, 8), q_mask=torch.ones(2, 3)), TypeError, "q_mask has dtype torch.float32; accepted: torch.bool"),
        (dict(q=_q(2, 3, 8), d=_q(2, 5, 8), q_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, r"q_mask has shape \(2, 4\); expected \(2, 3\)"),
        (dict(q=_q(3, 8), d=_q(2, 5, 8), d_lengths=torch.tensor([1, 2]), d_mask=torch.ones(2, 5, dtype=torch.bool)), ValueError, "pass d_lengths or d_mask, not both"),
        (dict(q=_q(3, 8), d=_q(2, 5, 8), precision="fp64"), ValueError, "precision='fp64' is not supported; accepted: 'tf32', 'ieee'"),
        (dict(q=_q(3, 0), d=_q(2, 5, 0)), ValueError, r"q has shape \(3, 0\); its last \(feature\) dim must be >= 1"),
    ],
)
def test_padded_rejects(kwargs, error, message):
    with pytest.raises(error, match=message):
        prepare_padded(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_mixed_devices():
    with pytest.raises(ValueError, match="d is on cuda:0 but q is on cpu"):
        prepare_padded(_q(3, 8), _q(2, 5, 8).cuda())


def test_mixed_devices_meta():
    # The meta device stands in for a second device on machines without a GPU.
    with pytest.raises(ValueError, match="d is on meta but q is on cpu; both must match"):
        prepare_padded(_q(3, 8), torch.empty(2, 5, 8, dtype=torch.float16, device="meta"))
    with pytest.raises(ValueError, match="d_lengths is on meta but d is on cpu"):
        prepare_padded(_q(3, 8), _q(2, 5, 8), d_lengths=torch.empty(2, dtype=torch.int64, device="meta"))


@pytest.mark.parametrize(
    "cu, message",
    [
        (torch.tensor([1, 3, 5]), "cu_seqlens starts at 1; it must start at 0"),
        (torch.tensor([0, 4, 2]), r"cu_seqlens decreases at index 2 \(4 -> 2\); it must be non-decreasing"),
        (torch.tensor([0, 4, 9]), "cu_seqlens ends at 9 but d_packed has only 6 tokens"),
        (torch.tensor([[0, 4]]), r"cu_seqlens has shape \(1, 2\)"),
        (torch.tensor([], dtype=torch.int64), r"cu_seqlens has shape \(0,\)"),
    ],
)
def test_packed_rejects_bad_cu_seqlens(cu, message):
    with pytest.raises(ValueError, match=message):
        prepare_packed(_q(3, 8), _q(6, 8), cu)


def test_packed_rejects_float_cu_and_bad_max_len():
    with pytest.raises(TypeError, match="cu_seqlens has dtype torch.float32"):
        prepare_packed(_q(3, 8), _q(6, 8), torch.tensor([0.0, 6.0]))
    with pytest.raises(ValueError, match="max_doc_len must be a non-negative int or None, got -1"):
        prepare_packed(_q(3, 8), _q(6, 8), torch.tensor([0, 6]), max_doc_len=-1)
    with pytest.raises(ValueError, match=r"d_packed has shape \(1, 6, 8\); expected \[total_tokens, dim\]"):
        prepare_packed(_q(3, 8), _q(1, 6, 8), torch.tensor([0, 6]))


def test_pairs_rejects():
    with pytest.raises(ValueError, match="queries has 2 items but docs has 1; pairs need equal counts"):
        pack_pairs([_q(3, 8), _q(2, 8)], [_q(4, 8)])
    with pytest.raises(ValueError, match=r"docs\[1\] has 16 features but queries\[1\] has 8"):
        pack_pairs([_q(3, 8), _q(2, 8)], [_q(4, 8), _q(4, 16)])
    with pytest.raises(ValueError, match=r"queries\[0\] has shape \(1, 3, 8\); expected \[Lq, dim\]"):
        pack_pairs([_q(1, 3, 8)], [_q(4, 8)])
    with pytest.raises(TypeError, match="queries must be a sequence of 2-D tensors, got Tensor"):
        pack_pairs(_q(2, 3, 8), [_q(4, 8)])
    with pytest.raises(TypeError, match=r"docs\[0\] has dtype torch.float32 but queries\[0\] has torch.float16"):
        pack_pairs([_q(3, 8)], [_q(4, 8, dtype=torch.float32)])
    # What torch.cat would let through on the fast path: a 1-D empty item (cat skips it),
    # one item of another dtype (cat promotes), items all of rank 1 or 3.
    with pytest.raises(ValueError, match=r"queries\[1\] has shape \(0,\); expected \[Lq, dim\]"):
        pack_pairs([_q(3, 8), torch.empty(0, dtype=torch.float16)], [_q(4, 8), _q(2, 8)])
    with pytest.raises(TypeError, match=r"docs\[1\] has dtype torch.float16 but queries\[1\] has torch.float32"):
        pack_pairs([_q(3, 8), _q(3, 8, dtype=torch.float32)], [_q(4, 8), _q(2, 8)])
    with pytest.raises(ValueError, match=r"queries\[0\] has shape \(8,\); expected \[Lq, dim\]"):
        pack_pairs([_q(8), _q(8)], [_q(8), _q(8)])
    with pytest.raises(ValueError, match=r"queries\[0\] has shape \(1, 3, 8\); expected \[Lq, dim\]"):
        pack_pairs([_q(1, 3, 8), _q(1, 2, 8)], [_q(1, 4, 8), _q(1, 2, 8)])
    with pytest.raises(ValueError, match="q_cu describes 2 queries but d_cu 1 docs"):
        prepare_pairs(_q(5, 8), torch.tensor([0, 2, 5]), _q(4, 8), torch.tensor([0, 4]), max_q_len=3)
    with pytest.raises(ValueError, match="max_q_len must be a non-negative int"):
        prepare_pairs(_q(5, 8), torch.tensor([0, 5]), _q(4, 8), torch.tensor([0, 4]), max_q_len=None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_q_len=3), "max_q_len=3 but item 1 of q_cu has 4 tokens; max_q_len must be at least the longest"),
    (dict(max_q_len=0), "max_q_len=0 but item 1 of q_cu has 4 tokens"),
    (dict(max_q_len=4, max_d_len=5), "max_d_len=5 but item 0 of d_cu has 6 tokens; max_d_len must be at least"),
    (dict(max_q_len=4, max_d_len=-1), "max_d_len must be a non-negative int, got -1"),
    (dict(max_q_len=4, max_d_len=2.5), "max_d_len must be a non-negative int, got 2.5"),
    (dict(max_q_len=4, max_d_len="x"), "max_d_len must be a non-negative int, got 'x'"),
    (dict(max_q_len=True), "max_q_len must be a non-negative int, got True"),
])
def test_pairs_length_bounds_are_checked_against_the_offsets(kwargs, message):
    # The kernels' grid covers max_q_len tokens of each query and the torch path pads
    # docs to max_d_len: a bound below the longest item would drop tokens.
    q_cu, d_cu = torch.tensor([0, 1, 5, 5]), torch.tensor([0, 6, 8, 9])
    with pytest.raises(ValueError, match=message):
        prepare_pairs(_q(5, 8), q_cu, _q(9, 8), d_cu, **kwargs)


def test_pairs_length_bounds_at_or_above_the_longest_pass_and_unchecked_values_are_trusted():
    q_cu, d_cu = torch.tensor([0, 1, 5, 5]), torch.tensor([0, 6, 8, 9])
    for mq, md in ((4, 6), (4, 0), (40, 100)):
        prep = prepare_pairs(_q(5, 8), q_cu, _q(9, 8), d_cu, max_q_len=mq, max_d_len=md)
        assert (prep.launch_kwargs["lq"], prep.launch_kwargs["ld"]) == (mq, md)
    prep = prepare_pairs(_q(5, 8), q_cu, _q(9, 8), d_cu, max_q_len=3, max_d_len=5, check_values=False)
    assert (prep.launch_kwargs["lq"], prep.launch_kwargs["ld"]) == (3, 5)


def test_packed_max_doc_len_is_checked_against_the_offsets():
    cu = torch.tensor([0, 2, 6])
    with pytest.raises(ValueError, match="max_doc_len=3 but item 1 of cu_seqlens has 4 tokens; max_doc_len must be"):
        prepare_packed(_q(3, 8), _q(6, 8), cu, max_doc_len=3)
    with pytest.raises(ValueError, match="max_doc_len must be a non-negative int or None, got True"):
        prepare_packed(_q(3, 8), _q(6, 8), cu, max_doc_len=True)
    for ok in (None, 0, 4, 100):
        assert prepare_packed(_q(3, 8), _q(6, 8), cu, max_doc_len=ok).launch_kwargs["ld"] == (ok or 0)
    prepare_packed(_q(3, 8), _q(6, 8), cu, max_doc_len=3, check_values=False)  # trusted


def test_two_dim_query_accepts_scalar_length_and_1d_mask():
    prep = prepare_padded(_q(3, 8), _q(2, 5, 8), q_lengths=torch.tensor(2))
    assert prep.squeeze and prep.launch_kwargs["q_lengths"].shape == (1,)
    prep = prepare_padded(_q(3, 8), _q(2, 5, 8), q_mask=torch.tensor([True, False, True]))
    assert prep.launch_kwargs["q_mask"].shape == (1, 3)
    assert prep.spec.layout == "padded" and prep.spec.q_mask == "mask"


def test_reference_scale_is_the_magnitude_of_the_products():
    # A dot product that cancels to 0 still has terms of size 2: errors are judged
    # against that, per row the largest over the doc's valid tokens, summed over rows.
    from maxsim_forge.reference import maxsim_pairs_reference, maxsim_reference

    q = torch.tensor([[1.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    d = torch.tensor([[[1.0, 1.0], [-3.0, 0.0], [9.0, 9.0]]], dtype=torch.float64)
    lengths = torch.tensor([2])
    assert maxsim_reference(q, d, d_lengths=lengths).tolist() == [0.0 + 1.0]  # row maxima 0 and 1
    # row 0: max(|1|+|-1|, 3 + 0) = 3; row 1: max(1, 1.5) = 1.5; the masked token (9, 9) never counts
    assert maxsim_reference(q, d, d_lengths=lengths, absolute=True).tolist() == [4.5]
    assert maxsim_pairs_reference([q], [d[0, :2]], absolute=True).tolist() == [4.5]
