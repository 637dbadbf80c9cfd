"""What a deployment served, from its record (``MAXSIM_FORGE_RECORD``): how each bucket was
served, weighted by calls (``db coverage``), and the buckets worth tuning, most called
first (``tune --from-record``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .._keys import Sizes, shape_label
from ..runtime import SOURCES, read_record
from ._presets import Bucket

# How a bucket was served, by lookup source (runtime.SOURCES, in its order); only the
# first two are its own winner.
KINDS = dict(zip(SOURCES, ("tuned here", "tuned here", "own bucket, kernels since changed",
                           "borrowed from a neighbour", "same architecture, another GPU", "heuristic", "torch")))
OWN = SOURCES[:2]
TORCH = SOURCES[-1]


@dataclass(frozen=True)
class Served:
    """One recorded bucket on one GPU, with how it was served and how often."""

    gpu: str
    label: str
    calls: int
    sources: dict[str, int]  # lookup source -> calls
    row: dict  # the most called of its record rows (its exact sizes, masks, codes)

    @property
    def own_share(self) -> float:
        return sum(self.sources.get(s, 0) for s in OWN) / max(self.calls, 1)

    @property
    def kind(self) -> str:
        """How most of its calls were served."""
        return KINDS.get(max(self.sources, key=self.sources.get), "?")


def _bucket_of(row: dict) -> tuple:
    """A served bucket as the database keys it (the mask kinds of its calls are no part of
    it: one bucket's calls may come with several)."""
    return (row["gpu"], row["layout"], row["dtype"], row["precision"], row["dim"], row["codes"], row["nq_bucket"],
            row["lq_bucket"], row["nb_bucket"], row["ld_bucket"], row["docs"])


def served(path: str | Path) -> list[Served]:
    """The record's buckets, most called first."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in read_record(path):
        groups[_bucket_of(row)].append(row)
    out = []
    for rows in groups.values():
        top = max(rows, key=lambda r: r["calls"])
        sizes = Sizes(nq=top["nq_bucket"], lq=top["lq_bucket"], nb=top["nb_bucket"], ld=top["ld_bucket"])
        label = shape_label(top["layout"], top["dtype"], top["dim"], sizes, top["docs"], top["codes"])
        sources: dict[str, int] = defaultdict(int)
        for r in rows:
            sources[r["source"]] += r["calls"]
        out.append(Served(top["gpu"], label, sum(r["calls"] for r in rows), dict(sources), top))
    return sorted(out, key=lambda s: -s.calls)


def coverage_rows(items: list[Served]) -> tuple[list[tuple], list[tuple]]:
    """(per bucket: gpu, bucket, calls, share of all calls, how it was served, share served
    by its own winner), (per kind of service: kind, calls, share)."""
    total = sum(s.calls for s in items) or 1
    per_bucket = [(s.gpu, s.label, s.calls, f"{s.calls / total:.1%}", s.kind, f"{s.own_share:.0%}") for s in items]
    kinds: dict[str, int] = defaultdict(int)
    for s in items:
        for source, calls in s.sources.items():
            kinds[KINDS.get(source, source)] += calls
    per_kind = [(kind, calls, f"{calls / total:.1%}") for kind, calls in sorted(kinds.items(), key=lambda kv: -kv[1])]
    return per_bucket, per_kind


def buckets_from_record(path: str | Path, gpu: str | None = None) -> list[Bucket]:
    """The buckets served on ``gpu`` (default: every GPU of the record, for a record of one
    kind) by anything but their own current winner, most called first, each at the exact
    sizes and mask kinds of its most called recorded calls, so that it lands in the same
    bucket (packed docs bucket by their mean length, which the tuner's synthetic lengths
    only approach: such a bucket may be tuned as its neighbour). A bucket served on
    several GPUs of the record is listed once."""
    out, seen = [], set()
    for s in served(path):
        if gpu is not None and s.gpu != gpu:
            continue
        if s.own_share >= 1.0 or set(s.sources) == {TORCH}:
            continue  # its own winner served every call; or torch by necessity (a dim too large, no kernels)
        if _bucket_of(s.row)[1:] in seen:
            continue
        seen.add(_bucket_of(s.row)[1:])
        r = s.row
        out.append(Bucket(layout=r["layout"], dtype=r["dtype"], dim=r["dim"], nq=max(1, r["nq"]), lq=max(1, r["lq"]),
                          nb=max(1, r["nb"]), ld=max(1, r["ld"] or r["ld_bucket"]), precision=r["precision"] if r["precision"] != "native"
                          else "tf32", q_mask=r["q_mask"], d_mask=r["d_mask"], codes=r["codes"], name="recorded"))
    return out


__all__ = ["KINDS", "Served", "buckets_from_record", "coverage_rows", "served"]
