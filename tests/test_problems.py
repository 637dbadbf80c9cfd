"""The problems the tuner times (_problems.py): data made from shapes alone keys as real
data does, and the first docs of a call are the same call on fewer docs."""

from __future__ import annotations

import pytest
import torch

from maxsim_forge.codegen import KernelConfig
from maxsim_forge.tuner import PRESETS


def test_bucket_keys_from_shapes_alone_match_keys_from_data():
    from maxsim_forge._problems import synth
    from maxsim_forge._keys import INTERPRETER
    from maxsim_forge.runtime import bucket_key

    packed = [b for b in PRESETS["default"] if b.layout == "packed"][:1]
    for b in [b.tiny() for b in PRESETS["quick"] + packed]:
        keys = [bucket_key(synth(b.spec, b.sizes, device=dev, seed=3, skew=b.layout == "packed").prep, INTERPRETER)
                for dev in ("meta", "cpu")]
        assert keys[0] == keys[1], b


@pytest.mark.parametrize("layout", ("padded", "allpairs", "packed", "pairs"))
def test_first_docs_is_the_same_call_on_fewer_docs(layout):
    from cases import make_case

    from maxsim_forge._problems import first_docs
    from maxsim_forge.runtime import launch_prepared

    d_kind = "lengths" if layout == "padded" else "mask" if layout == "allpairs" else "none"
    prep, ref = make_case(layout, "fp16", nq=2, lq=9, nb=7, ld=20, dim=32, d_kind=d_kind)
    cfg = KernelConfig(block_q=16, block_d=16, block_k=32)
    part = first_docs(prep, 4)
    assert part.launch_kwargs["nb"] == 4 and prep.launch_kwargs["nb"] == 7
    out = launch_prepared(part, cfg)
    want = ref[:4] if layout == "pairs" else ref[..., :4]
    torch.testing.assert_close(out.reshape(want.shape).double().cpu(), want.cpu(), rtol=1e-5, atol=1e-4)
    assert part.d.data_ptr() == prep.d.data_ptr(), "a view, not a copy"
