"""Shape buckets to tune: named presets, or a YAML/JSON file of the same form.

A bucket names a layout, dtype, dim and representative sizes; the tuner times
candidates on exactly those sizes and stores the winner under their buckets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..codegen import KernelSpec
from .._problems import Sizes


@dataclass(frozen=True)
class Bucket:
    layout: str
    dtype: str
    dim: int
    lq: int
    ld: int
    nb: int
    nq: int = 1
    precision: str = "tf32"
    q_mask: str = "none"
    d_mask: str = "none"
    name: str = ""

    @property
    def spec(self) -> KernelSpec:
        return KernelSpec(self.layout, self.dtype, self.dim, self.precision, self.q_mask, self.d_mask)

    @property
    def sizes(self) -> Sizes:
        return Sizes(self.nq, self.lq, self.nb, self.ld)

    def label(self) -> str:
        nq = f"{self.nq}x" if self.nq > 1 else ""
        return f"{self.name or self.layout} {self.dtype} d{self.dim} {nq}q{self.lq} d{self.ld} n{self.nb}"

    def tiny(self) -> Bucket:
        """The same bucket shrunk for Triton's interpreter: same code paths, small sizes."""
        return replace(self, lq=min(self.lq, 8), ld=min(self.ld, 24), nb=min(self.nb, 3),
                       nq=min(self.nq, 3), dim=min(self.dim, 64))


def _colbert(dtype: str, dim: int, d_mask: str) -> list[Bucket]:
    name = "colbert" if d_mask != "none" else "colbert-full"
    out = []
    for ld in (128, 200, 300):  # buckets 128, 256, 512
        for nb in (64, 1000, 4000, 16000):
            out.append(Bucket("padded", dtype, dim, 32, ld, nb, d_mask=d_mask, name=name))
    return out


def _default() -> list[Bucket]:
    buckets: list[Bucket] = []
    for dtype in ("fp16", "bf16"):
        buckets += _colbert(dtype, 128, "lengths")
        for dim in (96, 64):
            buckets += [Bucket("padded", dtype, dim, 32, 300, nb, d_mask="lengths", name="colbert")
                        for nb in (1000, 16000)]
        buckets += [Bucket("padded", dtype, 128, lq, 1030, 1000, name="colpali") for lq in (16, 32, 64)]
        buckets += [Bucket("padded", dtype, 128, lq, 1024, 1000, name="image-query") for lq in (256, 1024)]
        buckets += [Bucket("allpairs", dtype, 128, 32, 300, 1000, nq=nq, name="multi-query")
                    for nq in (2, 4, 8, 16, 32)]
        buckets += [Bucket("pairs", dtype, 128, 32, 300, nb, name="serving-pairs") for nb in (64, 1000)]
        buckets += [Bucket("packed", dtype, 128, 32, 512, nb, name="packed") for nb in (4000, 50000)]
    # Docs that fill their padded length (no lengths, no mask) prefer other tiles than
    # ragged ones and have buckets of their own; last, so a resumed run of the buckets
    # above finds them where it left them.
    for dtype in ("fp16", "bf16"):
        buckets += _colbert(dtype, 128, "none")
        for dim in (96, 64):
            buckets += [Bucket("padded", dtype, dim, 32, 300, nb, name="colbert-full") for nb in (1000, 16000)]
    return buckets


PRESETS: dict[str, list[Bucket]] = {
    "quick": [
        Bucket("padded", "fp16", 128, 32, 300, 1000, d_mask="lengths", name="colbert"),
        Bucket("padded", "fp16", 128, 32, 1030, 1000, name="colpali"),
        Bucket("allpairs", "fp16", 128, 32, 300, 1000, nq=16, name="multi-query"),
        Bucket("pairs", "fp16", 128, 32, 300, 64, name="serving-pairs"),
    ],
    "default": _default(),
}


def load_buckets(path: str | Path) -> list[Bucket]:
    """Buckets from a JSON or YAML file: a list of objects with Bucket's fields."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ValueError(f"{path} is YAML but PyYAML is not installed; use JSON or install pyyaml") from exc
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("buckets", data)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of buckets, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        try:
            bucket = Bucket(**item)
        except TypeError as exc:
            raise ValueError(f"{path}: bucket {i}: {exc}; fields: {', '.join(Bucket.__dataclass_fields__)}") from exc
        bucket.spec.validate()
        out.append(bucket)
    return out


def resolve(preset: str | None, shapes: str | Path | None, dtypes: tuple[str, ...] = (),
            only: tuple[str, ...] = ()) -> list[Bucket]:
    """The buckets of a preset or a file, for ``dtypes`` if given, and of those only the
    ones whose label contains one of ``only`` (e.g. ``"colbert-full fp16 d96"``)."""
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
        chosen = [b for b in buckets if any(part in b.label() for part in only)]
        if not chosen:
            raise ValueError(
                f"only={list(only)} matches no bucket; labels look like {buckets[0].label()!r}" if buckets
                else f"only={list(only)}: there are no buckets to choose from"
            )
        buckets = chosen
    return buckets
