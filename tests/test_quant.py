"""Quantized documents (maxsim_forge/quant.py): the quantizer's formulas and errors, and
every scoring entry point on int8 and fp8 docs, with the query as given or quantized too,
against the float64 reference on the tokens the codes stand for.

Without CUDA the kernels run through Triton's interpreter, which runs int8 and fp8 dots
and casts on the CPU (triton 3.9), so every path below is checked there too; the
compiled paths run on the GPU (``pytest -m gpu``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import maxsim_forge as mf
from maxsim_forge import quant
from maxsim_forge._inputs import prepare_padded
from maxsim_forge.codegen import ConfigError, KernelConfig, KernelSpec, load_variant, validate
from maxsim_forge.quant import QuantizedDocs, quantize, quantize_rows
from maxsim_forge.reference import maxsim_packed_reference, maxsim_pairs_reference, maxsim_reference, reference_for
from maxsim_forge.runtime import maxsim_pairs_packed
from maxsim_forge.runtime._eager import eager_scores

from conftest import DEVICE, DTYPES, assert_scores, randint, randn

FORMATS = ("int8", "fp8_e4m3")
_QMAX = {"int8": 127.0, "fp8_e4m3": 448.0}


def _tol(fmt: str, quantized: bool) -> float:
    """The stated tolerance: Hopper's fp8 tensor cores sum a dot in fewer bits than fp32
    (``_problems.tolerance``); everything else in fp32."""
    return 1e-4 if quantized and fmt.startswith("fp8") else 1e-5


def _deq(qd: QuantizedDocs) -> torch.Tensor:
    return qd.dequantize(torch.float64)


def _query(q: torch.Tensor, fmt: str, quantized: bool) -> torch.Tensor:
    """The query as a quantized call scores it, in float64."""
    if not quantized:
        return q.double()
    codes, scales = quantize_rows(q, fmt)
    return codes.double() * scales.double()[..., None]


# ---- the quantizer
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", ("fp16", "bf16", "fp32"))
def test_quantize_follows_the_documented_formulas(fmt, dtype):
    d = randn(5, 13, 40, dtype=DTYPES[dtype])
    qd = quantize(d, fmt)
    x = d.float()
    scale = (x.double().abs().amax(-1) / _QMAX[fmt]).float()  # the quotient rounded once, on any device
    assert qd.scales.dtype == torch.float32 and torch.equal(qd.scales, scale)
    y = x / scale[..., None]
    want = y.round().clamp(-127, 127).to(torch.int8) if fmt == "int8" else y.to(torch.float8_e4m3fn)
    assert qd.codes.dtype == want.dtype and torch.equal(qd.codes.view(torch.int8), want.view(torch.int8))
    # Each token's largest feature is a code of full size: the scale uses the whole range.
    assert torch.equal(qd.codes.float().abs().amax(-1), torch.full_like(scale, _QMAX[fmt]))
    err = (qd.dequantize() - x).abs()
    bound = scale[..., None] / 2 if fmt == "int8" else x.abs() * 2.0**-4 + scale[..., None] * 2.0**-10
    assert bool((err <= bound * (1 + 1e-5)).all())


def test_quantize_marks_padding_with_code_and_scale_zero_whatever_it_holds():
    d = randn(4, 9, 32)
    d[1, 3:] = 0.0
    d[2, 5:] = float("nan")  # padding may hold anything
    lengths = torch.tensor([9, 3, 5, 0], device=DEVICE)
    qd = quantize(d, "int8", lengths=lengths)
    valid = torch.arange(9, device=DEVICE)[None, :] < lengths[:, None]
    assert bool((qd.scales[~valid] == 0).all()) and bool((qd.codes[~valid] == 0).all())
    assert bool((qd.scales[valid] > 0).all())
    by_mask = quantize(d, "int8", mask=valid)
    assert torch.equal(by_mask.codes, qd.codes) and torch.equal(by_mask.scales, qd.scales)


def test_quantize_packed_docs_and_chunks_give_the_same_result(monkeypatch):
    d = randn(50, 24)
    whole = quantize(d, "fp8_e4m3")
    assert whole.layout == "packed" and whole.shape == (50, 24) and len(whole) == 50
    monkeypatch.setattr(quant, "CHUNK_TOKENS", 7)  # many chunks, the last one partial
    chunked = quantize(d, "fp8_e4m3")
    assert torch.equal(chunked.codes.view(torch.int8), whole.codes.view(torch.int8))
    assert torch.equal(chunked.scales, whole.scales)
    padded = randn(6, 11, 24)
    monkeypatch.setattr(quant, "CHUNK_TOKENS", 1 << 16)
    once = quantize(padded, "int8")
    monkeypatch.setattr(quant, "CHUNK_TOKENS", 20)  # one doc of 11 tokens a chunk
    again = quantize(padded, "int8")
    assert torch.equal(again.codes, once.codes) and torch.equal(again.scales, once.scales)


def test_quantized_docs_object():
    qd = quantize(randn(3, 8, 32), "int8")
    assert qd.layout == "padded" and qd.dim() == 3 and qd.device.type == torch.device(DEVICE).type
    assert qd.nbytes == 3 * 8 * 32 + 3 * 8 * 4
    assert "int8" in repr(qd) and "padded" in repr(qd)
    moved = qd.to("cpu")
    assert torch.equal(moved.codes.cpu(), qd.codes.cpu()) and moved.format == "int8"
    first = qd[:2]
    assert first.shape == (2, 8, 32) and torch.equal(first.scales, qd.scales[:2])
    again = QuantizedDocs(qd.codes, qd.scales, "int8")  # from stored codes and scales
    assert torch.equal(again.dequantize(), qd.dequantize())
    assert qd.dequantize(torch.float16).dtype == torch.float16


@pytest.mark.parametrize("bad, exc, words", [
    (lambda d: quantize(d.int(), "int8"), TypeError, "d has dtype torch.int32"),
    (lambda d: quantize(d, "int4"), ValueError, "format='int4' is not a quantized format"),
    (lambda d: quantize(d[0, 0], "int8"), ValueError, "d has shape"),
    (lambda d: quantize(d, "int8", lengths=torch.tensor([1, 2], device=d.device)), ValueError, "lengths has shape"),
    (lambda d: quantize(d[0], "int8", lengths=torch.tensor([1], device=d.device)), ValueError, "packed docs"),
    (lambda d: quantize(d, "int8", lengths=torch.tensor([1, 2, 3], device=d.device),
                        mask=torch.ones(3, 5, dtype=torch.bool, device=d.device)), ValueError, "not both"),
    (lambda d: quantize(torch.zeros(2, 4000, device=d.device), "int8"), ValueError, "dim up to"),
])
def test_quantize_refuses_bad_input_by_name(bad, exc, words):
    with pytest.raises(exc, match=words):
        bad(randn(3, 5, 32))


@pytest.mark.parametrize("value, words", [(float("nan"), "holds NaN or inf"), (float("inf"), "holds NaN or inf")])
def test_quantize_refuses_non_finite_tokens_naming_them(value, words):
    d = randn(3, 5, 32)
    d[2, 4, 7] = value
    with pytest.raises(ValueError, match=rf"token at \[2, 4\] {words}"):
        quantize(d, "int8")


def test_quantize_refuses_zero_tokens_and_says_how_to_mark_padding():
    d = randn(3, 5, 32)
    d[1, 2] = 0
    with pytest.raises(ValueError, match=r"token at \[1, 2\] is all zeros.*lengths= or mask="):
        quantize(d, "fp8_e4m3")
    packed = randn(10, 32)
    packed[6] = 0
    with pytest.raises(ValueError, match=r"token at \[6\] is all zeros"):
        quantize(packed, "int8")


def test_quantized_docs_constructor_checks_types_and_shapes():
    qd = quantize(randn(2, 3, 32), "int8")
    with pytest.raises(TypeError, match="format 'fp8_e4m3' takes torch.float8_e4m3fn"):
        QuantizedDocs(qd.codes, qd.scales, "fp8_e4m3")
    with pytest.raises(ValueError, match=r"one scale per token"):
        QuantizedDocs(qd.codes, qd.scales[:1], "int8")
    with pytest.raises(TypeError, match="scales has dtype torch.float16"):
        QuantizedDocs(qd.codes, qd.scales.half(), "int8")
    with pytest.raises(TypeError, match="codes must be a torch.Tensor"):
        QuantizedDocs([1, 2], qd.scales, "int8")


@pytest.mark.parametrize("bad", (float("inf"), float("-inf"), float("nan")))
def test_quantized_docs_constructor_refuses_a_scale_that_is_not_finite(bad):
    # The token scored is codes * scale; the kernels scale each dot instead, which agrees
    # with it for every finite scale only.
    qd = quantize(randn(2, 3, 32), "int8")
    scales = qd.scales.clone()
    scales[1, 2] = bad
    with pytest.raises(ValueError, match=rf"scales\[1, 2\] is {bad}; every scale must be finite"):
        QuantizedDocs(qd.codes, scales, "int8")
    trusted = QuantizedDocs(qd.codes, scales, "int8", validate=False)  # what the caller vouches for
    assert trusted.scales is scales and trusted[1:].scales.shape == (1, 3)
    # Parts and copies skip the read-back, not the shape and dtype checks.
    with pytest.raises(ValueError, match="one scale per token"):
        qd[..., :2]  # codes [2, 3, 2] against scales [2, 2]
    with pytest.raises(TypeError, match="format 'int8' takes torch.int8"):
        qd.to(torch.float16)
    negative = QuantizedDocs(qd.codes, -qd.scales, "int8")  # any finite scale: -c * s is a token too
    q = randn(8, 32)
    assert_scores(mf.maxsim(q, negative), maxsim_reference(q, negative.dequantize(torch.float64)), 1e-5, "negative scales")


def test_quantize_rows_gives_zero_and_nan_tokens_their_rule():
    x = randn(4, 32)
    x[1] = 0
    x[2, 3] = float("nan")
    codes, scales = quantize_rows(x, "int8")
    assert scales[1] == 0 and bool((codes[1] == 0).all())
    assert torch.isnan(scales[2]) and bool((codes[2] == 0).all())
    assert bool(torch.isfinite(scales[[0, 3]]).all())


@pytest.mark.parametrize("format", ("int8", "fp8_e4m3"))
def test_scales_are_the_correctly_rounded_quotient_on_every_device(format):  # noqa: A002
    """A token's scale is amax / qmax rounded once (IEEE division), on CPU and GPU alike,
    for queries and docs: on CUDA torch would multiply by the reciprocal, a bit off. (On
    the CPU torch divides either way: only the compiled run can catch that regression.)"""
    x = randn(4096, 64, dtype=torch.float32) * torch.rand(4096, 1, device=DEVICE) * 30
    qmax = quant._QMAX[format]
    # float32 quotient through float64, rounded once: float64 holds it exactly enough.
    want = (x.double().abs().amax(-1) / qmax).float()
    assert torch.equal(quant.quantize_rows_torch(x, format)[1], want)
    assert torch.equal(quantize(x[:, None, :], format).scales[:, 0], want)


@pytest.mark.parametrize("dtype", ("fp16", "bf16", "fp32"))
@pytest.mark.parametrize("shape", [(3, 9, 40), (37, 128), (2, 5, 200), (4, 16)])
def test_the_int8_quantize_kernel_gives_the_torch_quantizers_bits(monkeypatch, dtype, shape):
    """quantize_rows runs one generated kernel for int8 where kernels run: the same codes
    and scales as the torch operations, bit for bit, ties to even, zero, NaN and inf
    tokens, tiny ones, and a query that is not contiguous."""
    from maxsim_forge import quant

    dim = shape[-1]
    x = randn(*shape, dtype=torch.float32) * torch.rand(*shape[:-1], 1, device=DEVICE) * 30
    flat = x.view(-1, dim)
    flat[0] = 0
    flat[1, :7] = torch.tensor([127.0, 2.5, -3.5, 0.5, -0.5, 1.5, 126.5])  # scale 1: halves round to even
    flat[1, 7:] = 0.25
    flat[2] = flat[2] * 1e-30 if dtype == "fp32" else flat[2] * 1e-4  # tiny scales
    flat[3, dim // 2] = float("nan")
    if flat.shape[0] > 4:
        flat[4, 0] = float("-inf")
    x = x.to(DTYPES[dtype])
    if len(shape) == 3:
        x = x.transpose(0, 1)  # not contiguous
    if not quant._kernel_for(x):
        pytest.skip("no kernels here (CPU without the interpreter)")
    want_codes, want_scales = quant.quantize_rows_torch(x, "int8")

    def no_torch(*args, **kwargs):
        raise AssertionError("int8 quantized by torch where the kernel runs")

    monkeypatch.setattr(quant, "quantize_rows_torch", no_torch)
    codes, scales = quantize_rows(x, "int8")
    assert codes.dtype == torch.int8 and codes.shape == x.shape and scales.shape == x.shape[:-1]
    assert torch.equal(codes, want_codes)
    assert torch.equal(torch.isnan(scales), torch.isnan(want_scales))
    assert torch.equal(scales.nan_to_num(-1.0), want_scales.nan_to_num(-1.0))
    as_made = codes.transpose(0, 1) if len(shape) == 3 else codes
    assert as_made.reshape(-1, dim)[1, :7].tolist() == [127, 2, -4, 0, 0, 2, 126]


def test_a_failing_quantize_kernel_leaves_torch_to_quantize(monkeypatch, caplog):
    from maxsim_forge import codegen, quant

    x = randn(2, 6, 32)
    if not quant._kernel_for(x):
        pytest.skip("no kernels here (CPU without the interpreter)")

    def broken(dim):
        raise RuntimeError("no such kernel here")

    monkeypatch.setattr(codegen, "quantize_launcher", broken)
    monkeypatch.setattr(quant, "_failed", set())
    for _ in range(2):
        codes, scales = quantize_rows(x, "int8")
        want = quant.quantize_rows_torch(x, "int8")
        assert torch.equal(codes, want[0]) and torch.equal(scales, want[1])
    assert caplog.text.count("the int8 quantize kernel failed") == 1


# ---- scoring: every entry point, both formats, both query paths
PATHS = [(fmt, qq) for fmt in FORMATS for qq in (False, True)]


@pytest.mark.parametrize("fmt, qq", PATHS)
@pytest.mark.parametrize("dtype", ("fp16", "bf16", "fp32"))
@pytest.mark.parametrize("nq, dim, sides", [(1, 128, "plain"), (1, 40, "lengths"), (3, 96, "masks"),
                                            (2, 48, "qlengths")])
def test_padded_and_allpairs_score_the_tokens_the_codes_stand_for(isolated_lookup, fmt, qq, dtype, nq, dim, sides):
    q = randn(nq, 9, dim, dtype=DTYPES[dtype]) if nq > 1 else randn(9, dim, dtype=DTYPES[dtype])
    d = randn(5, 21, dim, dtype=DTYPES[dtype])
    kw: dict = {}
    if sides == "lengths":
        kw["d_lengths"] = torch.tensor([21, 0, 4, 17, 1], device=DEVICE)
    elif sides == "masks":
        kw["d_mask"] = torch.rand(5, 21, device=DEVICE) > 0.3
        kw["q_mask"] = torch.rand(nq, 9, device=DEVICE) > 0.2
    elif sides == "qlengths":
        kw["q_lengths"] = torch.tensor([9, 4], device=DEVICE)
    padding = {"lengths": kw.get("d_lengths"), "mask": kw.get("d_mask")}
    if sides == "masks":
        d[~kw["d_mask"]] = 0  # padding of zeros: quantize is told which tokens are real
    qd = quantize(d, fmt, **padding)
    precision = "ieee" if dtype == "fp32" else "tf32"
    out = mf.maxsim(q, qd, quantize_query=qq, precision=precision, **kw)
    qr = _query(q if q.dim() == 3 else q[None], fmt, qq)
    qr = qr if q.dim() == 3 else qr[0]
    ref = maxsim_reference(qr, _deq(qd), **kw)
    scale = maxsim_reference(qr, _deq(qd), absolute=True, **kw).abs().max()
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert_scores(out, ref, _tol(fmt, qq), f"{fmt} quantize_query={qq} {dtype} {sides}", scale=float(scale))
    if sides == "lengths":
        assert out[1] == 0  # an empty doc scores 0


@pytest.mark.parametrize("fmt, qq", PATHS)
@pytest.mark.parametrize("nq", (1, 3))
def test_packed_docs(isolated_lookup, fmt, qq, nq):
    q = randn(nq, 7, 64) if nq > 1 else randn(7, 64)
    lens = [5, 0, 19, 1, 33]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    qd = quantize(randn(sum(lens), 64), fmt)
    out = mf.maxsim_packed(q, qd, cu, quantize_query=qq)
    q3 = q if q.dim() == 3 else q[None]
    ref = maxsim_packed_reference(_query(q3, fmt, qq), _deq(qd), cu)
    ref = ref if q.dim() == 3 else ref[0]
    assert_scores(out, ref, _tol(fmt, qq), f"packed {fmt} quantize_query={qq}")
    assert out[..., 1].abs().max() == 0


@pytest.mark.parametrize("fmt, qq", PATHS)
def test_pairs_from_lists_and_packed(isolated_lookup, fmt, qq):
    q_lens, d_lens = [3, 11, 1, 6], [17, 2, 9, 0]
    queries = [randn(n, 48) for n in q_lens]
    packed = quantize(randn(sum(d_lens), 48), fmt)
    ends = torch.tensor([0, *d_lens]).cumsum(0).tolist()
    docs = [packed[ends[i]:ends[i + 1]] for i in range(len(d_lens))]
    out = mf.maxsim_pairs(queries, docs, quantize_query=qq)
    ref = maxsim_pairs_reference([_query(x, fmt, qq) for x in queries], [_deq(x) for x in docs])
    assert_scores(out, ref, _tol(fmt, qq), f"pairs {fmt} quantize_query={qq}")
    assert out[3] == 0
    q_cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    d_cu = torch.tensor(ends, dtype=torch.int32, device=DEVICE)
    out2 = maxsim_pairs_packed(torch.cat(queries), q_cu, packed, d_cu, max_q_len=max(q_lens),
                               quantize_query=qq)
    assert_scores(out2, ref, _tol(fmt, qq), f"pairs packed {fmt} quantize_query={qq}")


def test_quantized_query_keeps_the_nan_rule(isolated_lookup):
    q = randn(2, 6, 32)
    q[0, 2, 5] = float("nan")  # a valid token: its query's scores are NaN
    q[1, 5, 0] = float("nan")  # a masked token: changes nothing
    q_lengths = torch.tensor([6, 5], device=DEVICE)
    d = randn(3, 8, 32)
    lengths = torch.tensor([8, 0, 3], device=DEVICE)
    qd = quantize(d, "int8", lengths=lengths)
    out = mf.maxsim(q, qd, q_lengths=q_lengths, d_lengths=lengths, quantize_query=True)
    assert bool(torch.isnan(out[0, [0, 2]]).all()) and out[0, 1] == 0  # an empty doc scores 0
    ref = maxsim_reference(_query(q[1:, :5], "int8", True), _deq(qd), d_lengths=lengths)
    assert_scores(out[1:], ref, 1e-5, "the query whose NaN is masked")


@pytest.mark.parametrize("codes", ("int8", "fp8", "int8xint8", "fp8xfp8"))
@pytest.mark.parametrize("cfg", [
    KernelConfig(block_q=16, block_d=16, block_k=32, num_warps=2, num_stages=2, q_mode="grid", split_d=2),
    KernelConfig(block_q=32, block_d=32, block_k=64, num_warps=4, num_stages=3, q_mode="tile", overlap_max=True,
                 masked_loop=True),
    KernelConfig(block_q=16, block_d=16, block_k=128, num_warps=2, num_stages=1, q_mode="loop", exact_k=True,
                 defer_max=True),
    KernelConfig(block_q=64, block_d=16, block_k=128, num_warps=4, num_stages=2, q_mode="fold"),
    KernelConfig(block_q=32, block_d=16, block_k=128, num_warps=4, num_stages=2, q_mode="persist", defer_max=True),
], ids=lambda c: c.key())
def test_corners_of_the_config_space(codes, cfg):
    layout = "allpairs" if cfg.q_mode in ("fold", "persist") else "padded"
    spec = KernelSpec(layout, "fp16", 96, "tf32", "none", "lengths", codes)
    try:
        validate(spec, cfg)
    except ConfigError:
        pytest.skip("not a variant of this spec")
    nq = 3 if layout == "allpairs" else 1
    q = randn(nq, 13, 96)
    d = randn(4, 37, 96)
    lengths = torch.tensor([37, 0, 16, 5], device=DEVICE)
    prep = prepare_padded(q, quantize(d, "int8" if spec.doc_codes == "int8" else "fp8_e4m3", lengths=lengths),
                          d_lengths=lengths, quantize_query=spec.query_codes is not None)
    assert prep.spec == spec
    out = load_variant(spec, cfg).launch(prep.q, prep.d, **prep.launch_kwargs)
    assert_scores(out, reference_for(prep), _tol(codes, spec.query_codes is not None), f"{spec.key()} {cfg.key()}",
                  scale=float(reference_for(prep, absolute=True).abs().max()))


def test_quantized_query_needs_deep_feature_tiles():
    spec = KernelSpec("padded", "fp16", 48, codes="int8xint8")
    with pytest.raises(ConfigError, match="at least 32 features"):
        validate(spec, KernelConfig(block_k=16))
    with pytest.raises(ConfigError, match=r"exact_k feature tiles \[32, 16\]"):
        validate(spec, KernelConfig(block_k=64, exact_k=True))
    with pytest.raises(ConfigError, match="dim of at least 32"):
        KernelSpec("padded", "fp16", 16, codes="fp8xfp8").validate()


def test_eager_fallback_scores_quantized_calls_in_chunks(isolated_lookup, monkeypatch):
    from maxsim_forge.runtime import _eager

    monkeypatch.setattr(_eager, "_CHUNK", 64)  # many chunks
    q = randn(2, 5, 32)
    d = randn(7, 11, 32)
    lengths = randint(0, 12, (7,))
    for qq in (False, True):
        prep = prepare_padded(q, quantize(d, "fp8_e4m3", lengths=lengths), d_lengths=lengths, quantize_query=qq)
        assert_scores(eager_scores(prep), reference_for(prep), 1e-5, f"eager quantize_query={qq}")


def test_scoring_refuses_mismatched_quantized_input(isolated_lookup):
    q = randn(6, 32)
    qd = quantize(randn(3, 5, 32), "int8")
    with pytest.raises(ValueError, match="quantize_query=True quantizes the query.*must be QuantizedDocs"):
        mf.maxsim(q, randn(3, 5, 32), quantize_query=True)
    with pytest.raises(TypeError, match="quantize_query must be True or False"):
        mf.maxsim(q, qd, quantize_query="yes")
    with pytest.raises(ValueError, match="d has 32 features but q has 16"):
        mf.maxsim(randn(6, 16), qd)
    with pytest.raises(ValueError, match=r"d_packed has shape \(3, 5, 32\)"):
        mf.maxsim_packed(q, qd, torch.tensor([0, 3], dtype=torch.int32, device=DEVICE))
    with pytest.raises(TypeError, match=r"docs\[1\] is Tensor"):
        mf.maxsim_pairs([q, q], [quantize(randn(4, 32), "int8"), randn(4, 32)])
    with pytest.raises(TypeError, match=r"docs\[1\] is fp8_e4m3"):
        mf.maxsim_pairs([q, q], [quantize(randn(4, 32), "int8"), quantize(randn(4, 32), "fp8_e4m3")])


def test_a_quantized_call_has_a_bucket_of_its_own(isolated_lookup):
    q = randn(32, 128)
    d = randn(3, 40, 128)
    plain = mf.explain(q, d)
    for fmt, codes in (("int8", "int8"), ("fp8_e4m3", "fp8")):
        dec = mf.explain(q, quantize(d, fmt))
        assert dec.bucket != plain.bucket and f"dim128/{codes} " in dec.bucket
        assert f"codes_{codes}." in dec.variant
        both = mf.explain(q, quantize(d, fmt), quantize_query=True)
        assert f"dim128/{codes}x{codes} " in both.bucket
    pairs = mf.explain([q], [quantize(d[0], "int8")], quantize_query=True)
    assert "pairs/fp16/dim128/int8xint8" in pairs.bucket


def test_problems_of_quantized_specs_check_against_their_tokens():
    from maxsim_forge._keys import Sizes
    from maxsim_forge._problems import synth

    for layout in ("padded", "allpairs", "packed", "pairs"):
        spec = KernelSpec(layout, "fp16", 32, "tf32", "none", "lengths" if layout == "padded" else "none", "fp8xfp8")
        problem = synth(spec, Sizes(nq=2 if layout in ("allpairs", "packed") else 1, lq=5, nb=3, ld=9), device=DEVICE,
                        seed=1)
        assert problem.prep.spec == spec
        assert problem.prep.d.dtype == torch.float8_e4m3fn and problem.prep.q.dtype == torch.float8_e4m3fn
        assert dataclasses.replace(problem.prep).launch_kwargs["d_scales"].dtype == torch.float32
        meta = synth(spec, Sizes(nq=1, lq=5, nb=3, ld=9), device="meta", seed=1)
        assert meta.prep.spec.codes == "fp8xfp8"


def test_a_tuned_quantized_row_serves_its_own_codes_only(tmp_path, monkeypatch):
    from maxsim_forge.codegen import template_hash
    from maxsim_forge.runtime import Lookup, reset
    from maxsim_forge.tuned_db import TunedDB

    monkeypatch.setenv("MAXSIM_FORGE_COMPILE", "blocking")
    q, d = randn(32, 128), randn(3, 40, 128)
    base = mf.explain(q, quantize(d, "int8"))  # its bucket, from the heuristic
    db_path = tmp_path / "user.db"
    key = mf.runtime._keys.bucket_key(prepare_padded(q, quantize(d, "int8")),
                                      mf._keys.gpu_info(torch.device(DEVICE)))
    cfg = KernelConfig(block_q=32, block_d=16, block_k=128, num_warps=2, num_stages=2, q_mode="tile")
    TunedDB(db_path).put_winner(key, {"config": cfg.to_dict(), "time_ms": 1.0, "trials": 3,
                                      "template_hash": template_hash()})
    reset(Lookup(user_path=db_path, shipped_paths=[]))
    try:
        coded = mf.explain(q, quantize(d, "int8"))
        assert coded.source == "user-db" and coded.config == cfg.to_dict() and coded.bucket == base.bucket
        for other in (mf.explain(q, d), mf.explain(q, quantize(d, "fp8_e4m3")),
                      mf.explain(q, quantize(d, "int8"), quantize_query=True)):
            assert other.source == "heuristic", other  # float docs and other codes are buckets of their own
        out = mf.maxsim(q, quantize(d, "int8"))
        assert_scores(out, maxsim_reference(q.double(), _deq(quantize(d, "int8"))), 1e-5, "tuned int8 row")
    finally:
        reset()


def test_a_quantized_query_below_the_dots_depth_is_scored_by_torch(isolated_lookup):
    q, d = randn(6, 16), randn(3, 5, 16)
    qd = quantize(d, "int8")
    dec = mf.explain(q, qd, quantize_query=True)
    assert dec.source == "torch-fallback" and "at least 32" in dec.variant
    out = mf.maxsim(q, qd, quantize_query=True)
    assert_scores(out, maxsim_reference(_query(q[None], "int8", True)[0], _deq(qd)), 1e-5, "dim 16, int8 x int8")


def test_pairs_of_quantized_docs_are_checked_doc_by_doc(isolated_lookup):
    qs = [randn(3, 32), randn(2, 32)]
    with pytest.raises(ValueError, match=r"docs\[1\] has 64 features but queries\[0\] has 32"):
        mf.maxsim_pairs(qs, [quantize(randn(4, 32), "int8"), quantize(randn(5, 64), "int8")])
    with pytest.raises(ValueError, match="quantize_query=True quantizes the query.*got Tensor"):
        mf.maxsim_pairs(qs, [randn(4, 32), randn(5, 32)], quantize_query=True)
    with pytest.raises(ValueError, match=r"token at \[0\] is all zeros \(or too small to scale\)"):
        quantize(torch.full((2, 32), 1e-44, device=DEVICE), "int8")
