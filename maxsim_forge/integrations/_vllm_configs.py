"""Tuned configs in vLLM's format: one JSON file per (op, dim, device, dtype).

File names follow vLLM's tuned kernel configs, e.g.
``op=maxsim_pairs,dim=128,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp16.json``. A file
holds ``{"triton_version": ..., "<bucket>": {config}}``; a bucket is written
``nq=1,lq=32,ld=512,nb=64,docs=full`` (``docs``: full or ragged; a bucket written
without it did not record its docs). Each config carries the knobs and, under ``"_winner"``,
the rest of its database row, so a folder imports back without loss.

The bucket's fields are read by name, in any order; they are written in the order
above, the file format's.

Files come from outside: every part of a file name is checked against one allow-list
(:func:`safe_name_part`) and the path must stay inside the target folder; an import reads
plain files only, never a link that leaves its folder; ``_winner`` carries a row's values,
never its key (the file name and the bucket give that); every row read passes the tuned
database's schema (``tuned_db.check_winner``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from pathlib import Path

from .._keys import BucketKey, Entry, Sizes, nearest, query_tile_limit
from ..codegen import KernelConfig
from ..tuned_db import TunedDB, check_config, check_winner, merge_rows, row_label

# What a part of a file name may hold: letters, digits and "_", "-", "+", "." (never a
# name of dots alone): a device name or a dtype tag, never a path.
_SAFE_PART = re.compile(r"[A-Za-z0-9_+.-]+")
# A size in a file name or a bucket: ASCII digits, no more than a 64-bit integer has.
_WHOLE = re.compile(r"[0-9]{1,19}")

log = logging.getLogger("maxsim_forge")

OPS = {"padded": "maxsim", "allpairs": "maxsim_allpairs", "packed": "maxsim_packed", "pairs": "maxsim_pairs"}
LAYOUTS = {op: layout for layout, op in OPS.items()}
# The backward's winners kernel has files of its own: op=maxsim_allpairs_backward, ...
BACKWARD = "_backward"
_BUCKET_FIELDS = ("nq", "lq", "nb", "ld")
_KEY_FIELDS = set(BucketKey.__dataclass_fields__)
# The fields a bucket's "_winner" block may carry: a row's values and its compute capability.
_WINNER_BLOCK = {"cc"} | {"time_ms", "baseline_ms", "speedup", "near_best", "trials", "seed", "template_hash",
                          "created_at", "sm_count", "smem_limit", "triton_version", "torch_version",
                          "package_version", "kernel_hash", "space_hash", "space_sizes", "cut"}


def safe_name_part(name: str, value: object) -> str:
    """``value`` as a part of a file name, if the allow-list takes it; else a ValueError."""
    text = str(value)
    if not _SAFE_PART.fullmatch(text) or set(text) == {"."}:
        raise ValueError(f"{name} {text!r} cannot be part of a file name; accepted: letters, digits, "
                         "'_', '-', '+' and '.'")
    return text


def _dtype_tag(dtype: str, precision: str, codes: str = "none") -> str:
    """The file name's dtype: ``fp16``, ``fp32_tf32``; quantized docs add their codes
    (``fp16+int8``, ``fp16+fp8xfp8``)."""
    tag = f"{dtype}_{precision}" if dtype == "fp32" and precision != "native" else dtype
    return tag if codes == "none" else f"{tag}+{codes}"


def _untag(tag: str) -> tuple[str, str, str]:
    """(dtype, precision, codes) of a file name's dtype tag."""
    tag, _, codes = tag.partition("+")
    if tag.startswith("fp32_"):
        return "fp32", tag.split("_", 1)[1], codes or "none"
    return tag, "native", codes or "none"


def file_name(op: str, dim: int, device_name: str, dtype_tag: str) -> str:
    """The file of one (op, dim, device, dtype); a part the allow-list refuses is a ValueError."""
    parts = {"op": op, "dim": dim, "device_name": device_name, "dtype": dtype_tag}
    return ",".join(f"{k}={safe_name_part(k, v)}" for k, v in parts.items()) + ".json"


def bucket_label(sizes: Sizes, docs: str = "") -> str:
    """A bucket as the file format writes it: ``nq=1,lq=32,ld=512,nb=64,docs=full``."""
    return f"nq={sizes.nq},lq={sizes.lq},ld={sizes.ld},nb={sizes.nb}" + (f",docs={docs}" if docs else "")


def _parse_fields(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{text!r}: expected comma-separated name=value fields")
        out[name] = value
    return out


def export_vllm(db: TunedDB, out_dir: str | Path) -> list[Path]:
    """Write every winner of ``db`` into ``out_dir``, one file per (op, dim, device, dtype).

    Every file name is checked before anything is written: a row whose device name the
    allow-list refuses, or a name that would leave ``out_dir``, is a ValueError naming
    the row."""
    out_dir = Path(out_dir)
    files: dict[str, dict] = {}
    for w in db.winners():
        try:
            op = OPS[w["layout"]] + (BACKWARD if w.get("op", "fwd") == "bwd" else "")
            name = file_name(op, w["dim"], w["gpu"], _dtype_tag(w["dtype"], w["precision"], w.get("codes", "none")))
        except ValueError as exc:
            raise ValueError(f"{db.path}: row {row_label(w)}: {exc}") from None
        if (out_dir / name).resolve().parent != out_dir.resolve():
            raise ValueError(f"{db.path}: row {row_label(w)}: file name {name!r} leaves {out_dir}")
        doc = files.setdefault(name, {"triton_version": w.get("triton_version")})
        label = bucket_label(BucketKey.from_row(w).sizes, w.get("docs", ""))
        extra = {k: v for k, v in w.items() if k not in _KEY_FIELDS and k != "config"}
        doc[label] = {**w["config"], "_winner": {**extra, "cc": w["cc"]}}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in sorted(files.items()):
        path = out_dir / name
        path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        written.append(path)
    return written


def _head(path: Path) -> tuple[str, int, str, str, str, str, str]:
    """(layout, dim, device, dtype, precision, codes, kernel op) of a file, from its name."""
    head = _parse_fields(path.name.removesuffix(".json"))
    try:
        op, dim, device, tag = head["op"], head["dim"], head["device_name"], head["dtype"]
    except KeyError as exc:
        raise ValueError(f"{path.name}: file name lacks {exc}; expected op=,dim=,device_name=,dtype=") from None
    kind = "bwd" if op.endswith(BACKWARD) else "fwd"
    op = op.removesuffix(BACKWARD)
    if op not in LAYOUTS:
        raise ValueError(f"{path.name}: op {op!r} is not one of {', '.join(LAYOUTS)}")
    if not _WHOLE.fullmatch(dim):
        raise ValueError(f"{path.name}: dim={dim[:40]!r}; accepted: a positive integer of at most 19 "
                         "digits")
    safe_name_part("device_name", device)
    return (LAYOUTS[op], int(dim), device, *_untag(tag), kind)


def _bucket_fields(path: Path, label: str) -> tuple[dict[str, int], str]:
    fields = _parse_fields(label)
    docs = fields.pop("docs", "")
    if docs not in ("", "full", "ragged"):
        raise ValueError(f"{path.name}: bucket {label!r} has docs={docs!r}; accepted: full, ragged")
    if sorted(fields) != sorted(_BUCKET_FIELDS) or not all(_WHOLE.fullmatch(v) for v in fields.values()):
        raise ValueError(f"{path.name}: bucket {label!r}; accepted: nq=, lq=, ld=, nb= (powers of two) "
                         "and optionally docs=")
    return {k: int(v) for k, v in fields.items()}, docs


def _read(path: Path, folder: Path) -> object:
    """The JSON document of a file of ``folder``: a plain file inside it (a link may point
    only inside it); a ValueError naming the file otherwise."""
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(os.path.realpath(folder)):
        raise ValueError(f"{path.name}: a link to {target}, outside {folder}; accepted: files in the folder")
    if not target.is_file():
        raise ValueError(f"{path.name}: is no plain file; accepted: a JSON file of buckets")
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path.name}: is no UTF-8 text (byte {exc.start}); accepted: a JSON file of buckets") \
            from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _rows_of(path: Path, folder: Path) -> list[dict]:
    layout, dim, device, dtype, precision, codes, kind = _head(path)
    doc = _read(path, folder)
    if not isinstance(doc, dict):
        raise ValueError(f"{path.name}: holds {type(doc).__name__}; accepted: an object of buckets")
    rows = []
    for label, value in doc.items():
        if label == "triton_version":
            continue
        fields, docs = _bucket_fields(path, label)
        if not isinstance(value, dict) or not isinstance(value.get("_winner", {}), dict):
            raise ValueError(f"{path.name}: bucket {label!r} is no object of knobs (with an object '_winner')")
        winner = dict(value.get("_winner", {}))
        keys = sorted(set(winner) - _WINNER_BLOCK)
        if keys:
            raise ValueError(f"{path.name}: bucket {label!r}: _winner sets {keys}; it carries a row's values "
                             f"only ({', '.join(sorted(_WINNER_BLOCK))}), the key comes from the file name "
                             "and the bucket")
        try:
            config = check_config({k: v for k, v in value.items() if k != "_winner"})
        except ValueError as exc:
            raise ValueError(f"{path.name}: bucket {label!r}: {exc}") from None
        winner.setdefault("triton_version", doc.get("triton_version"))
        row = {"gpu": device, "cc": winner.pop("cc", ""), "layout": layout, "dtype": dtype,
               "precision": precision, "dim": dim, **{f"{k}_bucket": fields[k] for k in _BUCKET_FIELDS},
               "docs": docs, "codes": codes, "op": kind, "config": config, **winner}
        rows.append(check_winner(row, where=path.name))
    return rows


def import_vllm(db: TunedDB, folder: str | Path) -> int:
    """Read a folder written by :func:`export_vllm` (or by hand) into ``db``; returns winners
    taken. Every file is read and checked before any row is stored (:func:`vllm_rows`)."""
    return merge_rows(db, vllm_rows(folder))


def vllm_rows(folder: str | Path) -> list[dict]:
    """The winner rows of a folder of vLLM-format files, every file read and checked; a
    folder without such files is a ValueError naming it."""
    folder = Path(folder)
    paths = sorted(folder.glob("op=*.json"))
    if not paths:
        raise ValueError(f"{folder}: holds no tuned-config files; accepted: files named as vLLM names them, "
                         "e.g. op=maxsim,dim=128,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp16.json")
    return [row for path in paths for row in _rows_of(path, folder)]


@functools.lru_cache(maxsize=64)
def _entries(path: str, mtime: float) -> tuple[Entry, ...]:
    """The buckets of one file (as of ``mtime``); a bucket this version cannot read is
    reported once and skipped, and the rest of the file still serves."""
    out = []
    for label, value in json.loads(Path(path).read_text()).items():
        if label == "triton_version":
            continue
        try:
            fields = _parse_fields(label)
            sizes = Sizes(**{k: int(fields[k]) for k in _BUCKET_FIELDS})
            config = KernelConfig.from_dict(check_config({k: v for k, v in value.items() if k != "_winner"}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("maxsim-forge: %s: bucket %r cannot be read (%s); skipped", path, label, exc)
            continue
        out.append(Entry(sizes=sizes, config=config, docs=fields.get("docs", ""), source=path))
    return tuple(out)


def read_vllm_config(
    op: str, dim: int, dtype: str, device_name: str, *, nq: int = 1, lq: int, nb: int, ld: int,
    precision: str = "tf32", docs: str = "full", codes: str = "none", folder: str | Path | None = None,
) -> KernelConfig | None:
    """The config of the call's bucket in the tuned-config folder, else of its nearest
    neighbour, or None.

    ``nq, lq, nb, ld``: the call's sizes, bucketed as the runtime buckets them; the
    bucket is chosen by the runtime's rule (:func:`maxsim_forge._keys.nearest`): a
    neighbour has as many queries in kind (one, or a set) and, for a set, no query tile
    taller than its ``nq * lq`` rows. ``docs``: "full" where every doc fills its padded
    length, "ragged" where docs carry lengths or masks; buckets tuned on the other kind
    count as farther. ``codes``: quantized docs' codes (``int8``, ``fp8xfp8``, ...), which
    have files of their own. The file says nothing of the device's limits or of the kernels a
    config was timed with: every bucket it holds is taken as usable.

    ``folder`` defaults to ``VLLM_TUNED_CONFIG_FOLDER``, as vLLM's own lookups do.
    """
    folder = folder or os.environ.get("VLLM_TUNED_CONFIG_FOLDER")
    if not folder:
        return None
    tag = _dtype_tag(dtype, precision if dtype == "fp32" else "native", codes)
    path = Path(folder) / file_name(op, dim, device_name, tag)
    if not path.exists():
        return None
    entries = _entries(str(path), path.stat().st_mtime)
    want = Sizes(nq=nq, lq=lq, nb=nb, ld=ld).bucketed()
    best = next(nearest(entries, want, docs=docs, tallest=query_tile_limit(nq=nq, lq=lq)), None)
    return None if best is None else best.config
