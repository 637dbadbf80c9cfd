"""Shape buckets to tune: named presets, or a YAML/JSON file of the same form.

A bucket names a layout, dtype, dim and representative sizes; the tuner times
candidates on exactly those sizes and stores the winner under their buckets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .._keys import Sizes, doc_fill, shape_label
from ..codegen import KernelSpec
from ..runtime import largest_dim


@dataclass(frozen=True, kw_only=True)
class Bucket:
    """A bucket to tune, by its representative sizes (``nq, lq, nb, ld``, as a call's)."""

    layout: str
    dtype: str
    dim: int
    nq: int = 1
    lq: int
    nb: int
    ld: int
    precision: str = "tf32"
    q_mask: str = "none"
    d_mask: str = "none"
    codes: str = "none"
    op: str = "fwd"  # "bwd": the backward's winners kernel
    name: str = ""

    @property
    def spec(self) -> KernelSpec:
        return KernelSpec(self.layout, self.dtype, self.dim, self.precision, self.q_mask, self.d_mask, self.codes)

    @property
    def sizes(self) -> Sizes:
        return Sizes(nq=self.nq, lq=self.lq, nb=self.nb, ld=self.ld)

    def label(self) -> str:
        """Its name, then its bucket as ``db show`` writes it (the sizes rounded up to their
        buckets): ``colbert padded/fp16/dim128 nq1 lq32 nb1024 ld512 ragged``."""
        bucketed = shape_label(self.layout, self.dtype, self.dim, self.sizes.bucketed(), doc_fill(self.spec), self.codes,
                               self.op)
        return f"{self.name or self.layout} {bucketed}"

    def tiny(self) -> Bucket:
        """The same bucket shrunk for Triton's interpreter: same code paths, small sizes."""
        return replace(self, nq=min(self.nq, 3), lq=min(self.lq, 8), nb=min(self.nb, 3), ld=min(self.ld, 24),
                       dim=min(self.dim, 64))


def dim_error(dtype: str, dim: int) -> str | None:
    """Why the kernels cannot take ``dim`` on a Hopper-sized device (naming the largest), or None."""
    most = largest_dim(dtype)
    if dim <= most:
        return None
    return f"dim={dim} is above the largest the generated kernels take for {dtype} ({most}, with Hopper's shared memory)"


def _colbert(dtype: str, dim: int, d_mask: str) -> list[Bucket]:
    name = "colbert" if d_mask != "none" else "colbert-full"
    out = []
    for ld in (128, 200, 300):  # buckets 128, 256, 512
        for nb in (64, 1000, 4000, 16000):
            out.append(Bucket(layout="padded", dtype=dtype, dim=dim, lq=32, nb=nb, ld=ld, d_mask=d_mask, name=name))
    return out


def _default() -> list[Bucket]:
    buckets: list[Bucket] = []
    for dtype in ("fp16", "bf16"):
        buckets += _colbert(dtype, 128, "lengths")
        for dim in (96, 64):
            buckets += [Bucket(layout="padded", dtype=dtype, dim=dim, lq=32, nb=nb, ld=300, d_mask="lengths",
                               name="colbert") for nb in (1000, 16000)]
        buckets += [Bucket(layout="padded", dtype=dtype, dim=128, lq=lq, nb=1000, ld=1030, name="colpali")
                    for lq in (16, 32, 64)]
        buckets += [Bucket(layout="padded", dtype=dtype, dim=128, lq=lq, nb=1000, ld=1024, name="image-query")
                    for lq in (256, 1024)]
        buckets += [Bucket(layout="allpairs", dtype=dtype, dim=128, nq=nq, lq=32, nb=1000, ld=300, name="multi-query")
                    for nq in (2, 4, 8, 16, 32)]
        buckets += [Bucket(layout="pairs", dtype=dtype, dim=128, lq=32, nb=nb, ld=300, name="serving-pairs")
                    for nb in (64, 1000)]
        buckets += [Bucket(layout="packed", dtype=dtype, dim=128, lq=32, nb=nb, ld=512, name="packed")
                    for nb in (4000, 50000)]
    # Docs that fill their padded length (no lengths, no mask) prefer other tiles than
    # ragged ones and have buckets of their own; last, so a resumed run of the buckets
    # above finds them where it left them.
    for dtype in ("fp16", "bf16"):
        buckets += _colbert(dtype, 128, "none")
        for dim in (96, 64):
            buckets += [Bucket(layout="padded", dtype=dtype, dim=dim, lq=32, nb=nb, ld=300, name="colbert-full")
                        for nb in (1000, 16000)]
    return buckets + _quantized() + _backward()


def _backward() -> list[Bucket]:
    """The backward's winners kernel for training shapes: a PyLate-like contrastive batch
    (32 queries of 32 tokens against 256 docs of 180) and a ColPali-like one (docs of
    1030 tokens), bf16 and fp16."""
    return [Bucket(layout="allpairs", dtype=dtype, dim=128, nq=32, lq=32, nb=256, ld=ld, d_mask="mask", op="bwd",
                   name=name) for dtype in ("bf16", "fp16") for ld, name in ((180, "train"), (1030, "train-colpali"))]


def _quantized() -> list[Bucket]:
    """Quantized docs (fp16 queries): the serving shapes above (ColBERT's the largest batch
    first), then images as queries; int8 and fp8 codes dequantized in registers. And, for
    the shapes the dots bound (long queries, query sets, the largest batch), the query
    quantized too."""
    out: list[Bucket] = []
    for codes in ("int8", "fp8"):
        out += [Bucket(layout="padded", dtype="fp16", dim=128, lq=32, nb=16000, ld=300, codes=codes,
                       name="colbert-full")]
        out += [Bucket(layout="padded", dtype="fp16", dim=128, lq=32, nb=nb, ld=300, d_mask="lengths", codes=codes,
                       name="colbert") for nb in (16000, 1000, 64)]
        out += [Bucket(layout="padded", dtype="fp16", dim=128, lq=32, nb=1000, ld=1030, codes=codes, name="colpali"),
                Bucket(layout="allpairs", dtype="fp16", dim=128, nq=16, lq=32, nb=1000, ld=300, codes=codes,
                       name="multi-query"),
                Bucket(layout="pairs", dtype="fp16", dim=128, lq=32, nb=1000, ld=300, codes=codes,
                       name="serving-pairs"),
                Bucket(layout="packed", dtype="fp16", dim=128, lq=32, nb=50000, ld=512, codes=codes, name="packed"),
                # Images as queries with the query left in fp16: without this bucket its
                # nearest row was ColBERT's, a 32-row query tile (0.31x our fp16 for int8
                # docs on an H100; BENCHMARKS.md).
                Bucket(layout="padded", dtype="fp16", dim=128, lq=1024, nb=1000, ld=1024, codes=codes,
                       name="image-query")]
    for codes in ("int8xint8", "fp8xfp8"):
        out += [Bucket(layout="padded", dtype="fp16", dim=128, lq=lq, nb=1000, ld=1024, codes=codes,
                       name="image-query") for lq in (1024, 256)]
        out += [Bucket(layout="allpairs", dtype="fp16", dim=128, nq=16, lq=32, nb=1000, ld=300, codes=codes,
                       name="multi-query"),
                Bucket(layout="padded", dtype="fp16", dim=128, lq=32, nb=16000, ld=300, codes=codes,
                       name="colbert-full")]
    return out


PRESETS: dict[str, list[Bucket]] = {
    "quick": [
        Bucket(layout="padded", dtype="fp16", dim=128, lq=32, nb=1000, ld=300, d_mask="lengths", name="colbert"),
        Bucket(layout="padded", dtype="fp16", dim=128, lq=32, nb=1000, ld=1030, name="colpali"),
        Bucket(layout="allpairs", dtype="fp16", dim=128, nq=16, lq=32, nb=1000, ld=300, name="multi-query"),
        Bucket(layout="pairs", dtype="fp16", dim=128, lq=32, nb=64, ld=300, name="serving-pairs"),
    ],
    "default": _default(),
}


class ShapesFileError(ValueError):
    """A file of buckets that holds no list of them: not text, not JSON or YAML, or no list."""


def load_buckets(path: str | Path) -> list[Bucket]:
    """Buckets from a JSON or YAML file: a list of objects with Bucket's fields, at least one."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ShapesFileError(f"{path}: not a text file (byte {exc.start} is no UTF-8); accepted: a JSON or YAML "
                              "list of buckets") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ValueError(f"{path} is YAML but PyYAML is not installed; use JSON or install pyyaml") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ShapesFileError(f"{path}: not YAML ({' '.join(str(exc).split())})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ShapesFileError(f"{path}: not JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get("buckets", data)
    if not isinstance(data, list):
        raise ShapesFileError(f"{path}: expected a list of buckets, got {type(data).__name__}")
    if not data:
        raise ShapesFileError(f"{path} holds no buckets; accepted: a list of objects with fields "
                              f"{', '.join(Bucket.__dataclass_fields__)}")
    return [_checked(item, f"{path}: bucket {i}") for i, item in enumerate(data)]


def _checked(item: object, where: str) -> Bucket:
    """A bucket from a file: known fields of exact types, sizes of at least 1, a spec
    that validates and a dim the kernels take; a ValueError names the field otherwise."""
    fields = ", ".join(Bucket.__dataclass_fields__)
    if not isinstance(item, dict):
        raise ValueError(f"{where} is {type(item).__name__}; accepted: an object with fields {fields}")
    try:
        bucket = Bucket(**item)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}; fields: {fields}") from None
    for name in ("dim", "nq", "lq", "nb", "ld"):
        value = getattr(bucket, name)
        if type(value) is not int or value < 1:
            raise ValueError(f"{where}: {name}={value!r}; accepted: a positive integer")
    for name in ("layout", "dtype", "precision", "q_mask", "d_mask", "codes", "op", "name"):
        if not isinstance(getattr(bucket, name), str):
            raise ValueError(f"{where}: {name}={getattr(bucket, name)!r}; accepted: a string")
    if bucket.op not in ("fwd", "bwd"):
        raise ValueError(f"{where}: op={bucket.op!r}; accepted: 'fwd', 'bwd'")
    if bucket.op == "bwd" and bucket.codes != "none":
        raise ValueError(f"{where}: op='bwd' takes float docs (codes 'none'): gradients are of float docs only")
    try:
        bucket.spec.validate()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    why = dim_error(bucket.dtype, bucket.dim)
    if why:
        raise ValueError(f"{where}: {why}")
    return bucket


def resolve(preset: str | None, shapes: str | Path | None, dtypes: tuple[str, ...] = (),
            only: tuple[str, ...] = ()) -> list[Bucket]:
    """The buckets of a preset or a file, for ``dtypes`` if given, and of those only the
    ones whose label contains one of ``only`` (e.g. ``"colbert-full padded/fp16/dim96"``)."""
    if shapes:
        buckets = load_buckets(shapes)
    else:
        name = preset or "quick"
        if name not in PRESETS:
            raise ValueError(f"preset {name!r} is unknown; accepted: {', '.join(PRESETS)}")
        buckets = list(PRESETS[name])
    if dtypes:
        buckets = [b for b in buckets if b.dtype in dtypes] or [replace(b, dtype=dt) for b in buckets for dt in dtypes]
    if only:
        chosen = pick(buckets, only)
        if not chosen:
            raise ValueError(
                f"only={list(only)} matches no bucket; labels look like {buckets[0].label()!r}" if buckets
                else f"only={list(only)}: there are no buckets to choose from"
            )
        buckets = chosen
    return buckets


def pick(buckets: list[Bucket], only: tuple[str, ...], *, shrunk: bool = False) -> list[Bucket]:
    """The buckets whose label contains one of ``only``; with ``shrunk``, also those whose
    label shrunk for the interpreter (``tiny``, as its tune tables print it) does."""
    def labels(b: Bucket) -> tuple[str, ...]:
        return (b.label(), b.tiny().label()) if shrunk else (b.label(),)

    return [b for b in buckets if any(part in label for part in only for label in labels(b))]
