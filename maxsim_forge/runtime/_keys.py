"""A call's bucket key: cheap to compute on every call.

GPU identity, buckets and the nearest-bucket rule live in ``maxsim_forge._keys``; what
belongs to the runtime is how a checked call maps onto its bucket.
"""

from __future__ import annotations

from .._inputs import Prepared
from .._keys import BucketKey, GpuInfo, bucket, doc_fill


def bucket_key(prep: Prepared, gpu: GpuInfo) -> BucketKey:
    """The key a call is looked up by: its spec and the buckets of its sizes.

    Packed docs bucket by their mean length, which the host knows without reading
    ``cu_seqlens``; pairs by the longest doc, known when they are packed.
    """
    k = prep.launch_kwargs
    ld = k["ld"]
    if prep.spec.layout == "packed" or (prep.spec.layout == "pairs" and not ld):
        ld = -(-prep.d.shape[0] // max(k["nb"], 1))
    spec = prep.spec
    return BucketKey(gpu=gpu.name, cc=gpu.cc, layout=spec.layout, dtype=spec.dtype, precision=spec.precision,
                     dim=spec.dim, nq_bucket=bucket(k["nq"]), lq_bucket=bucket(k["lq"]), nb_bucket=bucket(k["nb"]),
                     ld_bucket=bucket(ld), docs=doc_fill(spec), codes=spec.codes)
