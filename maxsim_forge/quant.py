"""Quantized document embeddings: int8 or fp8 (e4m3) codes with one float32 scale per token.

Symmetric, per token (README's Semantics has the formulas): a token ``x`` of ``dim``
features gets the scale ``s = max|x| / Q`` (``Q`` = 127 for int8, 448 for fp8 e4m3, the
largest code) and the codes ``c = round(x / s)`` (int8: to nearest, ties to even, within
[-127, 127]; fp8: torch's cast, to nearest even); ``c * s`` is the token scored. Scales are
float32: 4 bytes a token (3% of an int8 token of dim 128), exact as computed and of any
range, where fp16 scales would round every score and underflow for tokens of small norm.

The scoring entry points (``maxsim``, ``maxsim_packed``, ``maxsim_pairs``,
``maxsim_pairs_packed``) take a :class:`QuantizedDocs` wherever they take docs, and with
``quantize_query=True`` quantize the query the same way on the fly, so that the dot runs
on int8 or fp8 tensor cores.
"""

from __future__ import annotations

import logging

import torch

from ._checks import check_float_dtype, check_rank, check_tensor

log = logging.getLogger("maxsim_forge")

FORMATS = ("int8", "fp8_e4m3")
# The format -> the codes' dtype, the largest code, and the name kernel specs use.
_DTYPE = {"int8": torch.int8, "fp8_e4m3": torch.float8_e4m3fn}
_QMAX = {"int8": 127.0, "fp8_e4m3": 448.0}
SPEC_CODES = {"int8": "int8", "fp8_e4m3": "fp8"}
# Tokens quantized at once: the float32 temporary is at most this many tokens' worth.
CHUNK_TOKENS = 1 << 16


def check_format(name: str, value: object) -> str:
    if value not in FORMATS:
        raise ValueError(f"{name}={value!r} is not a quantized format; accepted: 'int8', 'fp8_e4m3'")
    return value


class QuantizedDocs:
    """Document embeddings as codes and per-token scales, padded ``[B, Ld, dim]`` or packed
    ``[T, dim]`` (scales ``[B, Ld]`` or ``[T]``, float32). Made by :func:`quantize`, or
    from stored codes and scales: the constructor checks their types and shapes and, unless
    ``validate=False``, that every scale is finite (one read-back: pass ``validate=False``
    under ``torch.compile`` or CUDA graph capture): an inf or NaN scale has no token
    ``codes * scale`` that the kernels, which scale each dot, would score alike. Parts and
    copies (indexing, :meth:`to`) are checked without the read-back."""

    __slots__ = ("codes", "scales", "format")

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, format: str,  # noqa: A002 - the format's name
                 *, validate: bool = True):
        check_format("format", format)
        codes = check_tensor("codes", codes)
        scales = check_tensor("scales", scales)
        if codes.dtype != _DTYPE[format]:
            raise TypeError(f"codes has dtype {codes.dtype}; format {format!r} takes {_DTYPE[format]}")
        check_rank("codes", codes, (2, 3), "[B, Ld, dim] (padded) or [T, dim] (packed)")
        if scales.dtype != torch.float32:
            raise TypeError(f"scales has dtype {scales.dtype}; accepted: torch.float32")
        if tuple(scales.shape) != tuple(codes.shape[:-1]):
            raise ValueError(f"scales has shape {tuple(scales.shape)}; codes {tuple(codes.shape)} need "
                             f"{tuple(codes.shape[:-1])} (one scale per token)")
        if scales.device != codes.device:
            raise ValueError(f"scales is on {scales.device} but codes is on {codes.device}; both must match")
        if validate and scales.device.type != "meta" and scales.numel():
            bad = ~torch.isfinite(scales)
            if bool(bad.any()):
                at = _where(bad, scales.shape)
                raise ValueError(f"scales{list(at)} is {float(scales[at])}; every scale must be finite")
        self.codes, self.scales, self.format = codes, scales, format

    @classmethod
    def _of(cls, codes: torch.Tensor, scales: torch.Tensor, format: str) -> QuantizedDocs:  # noqa: A002
        """Codes and scales made whole by this package (quantize, a concatenation of
        checked docs, meta stand-ins): no checks again."""
        out = cls.__new__(cls)
        out.codes, out.scales, out.format = codes, scales, format
        return out

    # ---- what a tensor of docs would say
    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def layout(self) -> str:
        """"padded" (``[B, Ld, dim]``) or "packed" (``[T, dim]``)."""
        return "padded" if self.codes.dim() == 3 else "packed"

    def dim(self) -> int:
        """The number of dimensions, as ``Tensor.dim()``."""
        return self.codes.dim()

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held: the codes and the scales."""
        return self.codes.nbytes + self.scales.nbytes

    def to(self, device, non_blocking: bool = False) -> QuantizedDocs:
        """The same docs on ``device``."""
        return QuantizedDocs(self.codes.to(device, non_blocking=non_blocking),
                             self.scales.to(device, non_blocking=non_blocking), self.format, validate=False)

    def __getitem__(self, index) -> QuantizedDocs:
        """Docs (padded) or tokens (packed) selected along the first dim, as a tensor's are."""
        return QuantizedDocs(self.codes[index], self.scales[index], self.format, validate=False)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``codes * scales`` in ``dtype`` (computed in float32, or float64 if asked)."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return (self.codes.to(work) * self.scales.to(work)[..., None]).to(dtype)

    def __repr__(self) -> str:
        return (f"QuantizedDocs(format={self.format!r}, layout={self.layout!r}, shape={tuple(self.shape)}, "
                f"device={self.device}, nbytes={self.nbytes})")


def _valid(d: torch.Tensor, lengths, mask):
    """Which tokens of padded ``d`` are real, as a function of a chunk of docs ``(i0, i1)``
    (made a chunk at a time, never for the whole batch); None = all."""
    if d.dim() == 2:
        if lengths is not None or mask is not None:
            raise ValueError("lengths and mask mark padding of padded docs [B, Ld, dim]; packed docs [T, dim] have none")
        return None
    from ._checks import check_lengths, check_mask

    nb, ld = int(d.shape[0]), int(d.shape[1])
    if lengths is not None and mask is not None:
        raise ValueError("pass lengths or mask, not both")
    if lengths is not None:
        lengths = check_lengths("lengths", lengths, nb, ld, d, "d", True)
        pos = torch.arange(ld, device=d.device)
        return lambda i0, i1: pos[None, :] < lengths[i0:i1, None]
    if mask is not None:
        mask = check_mask("mask", mask, (nb, ld), d, "d")
        return lambda i0, i1: mask[i0:i1]
    return None


def _where(bad: torch.Tensor, shape) -> tuple:
    flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(shape)))


def quantize(d: torch.Tensor, format: str = "int8", *, lengths: torch.Tensor | None = None,  # noqa: A002
             mask: torch.Tensor | None = None) -> QuantizedDocs:
    """Quantize document embeddings (fp16, bf16 or fp32; padded ``[B, Ld, dim]`` or packed
    ``[T, dim]``) to ``format`` ("int8" or "fp8_e4m3"), one float32 scale per token.

    Padding marked by ``lengths`` (``[B]``) or ``mask`` (``[B, Ld]``, True = real) gets
    code 0 and scale 0, whatever it holds. A real token that is all zeros, or holds NaN or
    inf, is refused (``ValueError`` naming it): it has no scale that scores it as given.
    Works through the tokens in chunks: besides the result, at most a chunk's float32 copy
    is held.
    """
    check_format("format", format)
    d = check_tensor("d", d)
    check_rank("d", d, (2, 3), "[B, Ld, dim] (padded) or [T, dim] (packed)")
    check_float_dtype("d", d)
    from .runtime import largest_dim

    most = largest_dim("fp16")
    if d.shape[-1] > most:
        raise ValueError(f"d has dim {d.shape[-1]}; the kernels take quantized docs of dim up to {most}")
    valid = _valid(d, lengths, mask)
    codes = torch.empty(d.shape, dtype=_DTYPE[format], device=d.device)
    scales = torch.empty(d.shape[:-1], dtype=torch.float32, device=d.device)
    per_item = int(d.shape[1]) if d.dim() == 3 else 1
    step = max(1, CHUNK_TOKENS // max(per_item, 1))
    for i0 in range(0, int(d.shape[0]), step):
        i1 = min(int(d.shape[0]), i0 + step)
        part = None if valid is None else valid(i0, i1)
        c, s = _quantize_chunk(d[i0:i1], format, part, offset=i0)
        codes[i0:i1] = c
        scales[i0:i1] = s
    return QuantizedDocs._of(codes, scales, format)  # finite: non-finite tokens are refused


def _quantize_chunk(x: torch.Tensor, format: str, valid, *, offset: int):  # noqa: A002
    x = x.float()
    amax = x.abs().amax(-1)
    real = torch.ones_like(amax, dtype=torch.bool) if valid is None else valid
    bad = real & ~torch.isfinite(x).all(-1)
    zero = real & (_scale_of(amax, format) == 0)  # all zeros, or too small for a float32 scale
    if bool((bad | zero).any()):
        zeros = not bool(bad.any())
        which, what = (zero, "is all zeros (or too small to scale)") if zeros else (bad, "holds NaN or inf")
        at = _where(which, which.shape)
        at = (at[0] + offset, *at[1:])
        hint = "; mark padding with lengths= or mask=" if zeros and x.dim() == 3 else ""
        raise ValueError(f"d's token at {list(at)} {what}: it cannot be quantized{hint}")
    scale = torch.where(real, _scale_of(amax, format), torch.zeros_like(amax))
    codes = _codes(x, scale, format)
    return codes, scale


def _scale_of(amax: torch.Tensor, format: str) -> torch.Tensor:  # noqa: A002
    """``amax / qmax`` rounded as IEEE division on every device: on CUDA, torch turns a
    division by a Python number into a multiplication by its reciprocal, a bit off at
    times; a tensor divisor keeps the true quotient (the quantize kernel's div_rn)."""
    return amax / torch.full_like(amax, _QMAX[format])


def _codes(x: torch.Tensor, scale: torch.Tensor, format: str) -> torch.Tensor:  # noqa: A002
    """``x / scale`` as codes; a row of scale 0 (or NaN) gets code 0."""
    usable = (scale > 0) & torch.isfinite(scale)
    y = torch.where(usable[..., None], x / torch.where(usable, scale, 1.0)[..., None], 0.0)
    if format == "int8":
        return y.round().clamp_(-127, 127).to(torch.int8)
    return y.clamp_(-448.0, 448.0).to(torch.float8_e4m3fn)


def quantize_rows(x: torch.Tensor, format: str) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: A002
    """A query's tokens quantized as :func:`quantize` does docs, on their device with no
    read-back (safe under CUDA graph capture): ``(codes, float32 scales)``. A token of all
    zeros gets scale 0 (it scores 0, as it would unquantized); one with NaN or inf gets a
    NaN scale, so its scores are NaN, as the unquantized rule has it.

    int8 on a GPU (or through Triton's interpreter) runs one generated kernel, the same
    bits as the torch ops it stands for (:func:`quantize_rows_torch`), which serve
    everywhere else, fp8 included."""
    if format == "int8" and _kernel_for(x):
        try:
            return _quantize_int8(x)
        except Exception as exc:  # noqa: BLE001 - a kernel this device cannot run: torch, said once
            if x.device.type not in _failed:
                _failed.add(x.device.type)
                log.warning("maxsim-forge: the int8 quantize kernel failed on %s (%s: %s); torch quantizes "
                            "queries", x.device, type(exc).__name__, str(exc)[:300])
    return quantize_rows_torch(x, format)


_failed: set = set()


def _kernel_for(x: torch.Tensor) -> bool:
    from .codegen import QUANTIZE_MAX_DIM, kernels_run_on

    return (x.dtype in (torch.float16, torch.bfloat16, torch.float32) and x.dim() >= 1
            and 0 < x.shape[-1] <= QUANTIZE_MAX_DIM and kernels_run_on(x.device))


def _quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from .codegen import launch_guard, quantize_launcher, quantize_meta

    dim = x.shape[-1]
    flat = x.reshape(-1, dim)
    codes = torch.empty(flat.shape, dtype=torch.int8, device=x.device)
    scales = torch.empty(flat.shape[0], dtype=torch.float32, device=x.device)
    rows = flat.shape[0]
    if rows:
        grid = (-(-rows // quantize_meta(dim)["BLOCK_R"]), 1, 1)
        with launch_guard(x):
            quantize_launcher(dim)(grid, (flat, codes, scales, rows, *flat.stride(), *codes.stride(),
                                          scales.stride(0)))
    return codes.view(x.shape), scales.view(x.shape[:-1])


def quantize_rows_torch(x: torch.Tensor, format: str) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: A002
    """:func:`quantize_rows` in torch operations: the rule, on any device and format."""
    xf = x.float()
    amax = xf.abs().amax(-1)
    finite = torch.isfinite(xf).all(-1)
    scale = torch.where(finite, _scale_of(amax, format), float("nan"))
    return _codes(xf, scale, format), scale


__all__ = ["FORMATS", "QuantizedDocs", "quantize", "quantize_rows", "quantize_rows_torch"]
