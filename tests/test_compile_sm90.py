"""Generated variants compiled ahead of time for Hopper (sm_90) on a machine without a GPU.

The interpreter checks what every variant computes; this checks that Triton compiles
them for the GPU the databases ship for, with the Hopper paths that make them fast:
warp-group MMA (``wgmma``) for half-precision tiles of 64 rows or more on warpgroups,
and doc tiles copied asynchronously (``cp.async``) by the software pipeline. Integers
of value 1 and 16-byte aligned pointers and strides are specialised as Triton does at
launch. Needs the ``ptxas`` that Triton's wheel bundles; skipped without it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

from maxsim_forge.codegen import KernelConfig, KernelSpec

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource  # noqa: F401  (the compile step needs it)
except ImportError:  # another Triton layout
    GPUTarget = None

_PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
pytestmark = pytest.mark.skipif(GPUTarget is None or not os.path.exists(_PTXAS),
                                reason="needs Triton's bundled ptxas to compile for sm_90")

VARIANTS = [
    # (spec, config, wgmma expected)
    (KernelSpec("padded", "fp16", 128), KernelConfig(block_q=256, block_d=64, block_k=128, num_warps=8,
                                                      num_stages=3, q_mode="grid"), True),
    (KernelSpec("padded", "bf16", 128, d_mask="lengths"),
     KernelConfig(block_q=32, block_d=64, block_k=128, num_warps=2, num_stages=4, q_mode="tile", masked_loop=True,
                  overlap_max=True), False),
    (KernelSpec("padded", "fp16", 128), KernelConfig(block_q=128, block_d=64, block_k=128, num_warps=8,
                                                      num_stages=3, q_mode="grid", defer_max=True), True),
    (KernelSpec("allpairs", "fp16", 128), KernelConfig(block_q=256, block_d=64, block_k=128, num_warps=8,
                                                        num_stages=3, q_mode="fold"), True),
    (KernelSpec("allpairs", "bf16", 128, "tf32", "lengths", "mask"),
     KernelConfig(block_q=256, block_d=64, block_k=128, num_warps=8, num_stages=3, q_mode="persist"), True),
    (KernelSpec("allpairs", "fp16", 96, "tf32", "mask", "lengths"),
     KernelConfig(block_q=64, block_d=32, block_k=128, num_warps=4, num_stages=3, q_mode="persist", exact_k=True,
                  defer_max=True), True),
    (KernelSpec("packed", "fp16", 128), KernelConfig(block_q=32, block_d=32, block_k=128, num_warps=2,
                                                      num_stages=4, q_mode="loop", masked_loop=True), False),
    (KernelSpec("pairs", "fp16", 128), KernelConfig(block_q=32, block_d=16, block_k=128, num_warps=2,
                                                     num_stages=3, q_mode="loop", split_d=16), False),
    (KernelSpec("padded", "fp32", 128, "ieee", d_mask="mask"),
     KernelConfig(block_q=32, block_d=32, block_k=64, num_warps=4, num_stages=2, q_mode="grid", split_d=2), False),
    # Quantized docs: codes dequantized in registers (fp16 dot), or both sides quantized
    # (int8 and fp8 tensor-core dots, which the test below looks for by their PTX types).
    (KernelSpec("padded", "fp16", 128, d_mask="lengths", codes="int8"),
     KernelConfig(block_q=32, block_d=64, block_k=128, num_warps=2, num_stages=3, q_mode="tile", masked_loop=True),
     False),
    (KernelSpec("padded", "bf16", 128, codes="fp8"),
     KernelConfig(block_q=64, block_d=64, block_k=128, num_warps=4, num_stages=3, q_mode="tile"), True),
    (KernelSpec("padded", "fp16", 128, codes="int8xint8"),
     KernelConfig(block_q=128, block_d=64, block_k=128, num_warps=8, num_stages=3, q_mode="grid"), True),
    (KernelSpec("padded", "fp16", 128, d_mask="lengths", codes="fp8xfp8"),
     KernelConfig(block_q=128, block_d=64, block_k=128, num_warps=8, num_stages=3, q_mode="grid"), True),
    (KernelSpec("allpairs", "fp16", 96, "tf32", "none", "lengths", "int8xint8"),
     KernelConfig(block_q=64, block_d=32, block_k=128, num_warps=4, num_stages=3, q_mode="persist", exact_k=True),
     True),
    (KernelSpec("pairs", "fp16", 128, codes="fp8xfp8"),
     KernelConfig(block_q=32, block_d=32, block_k=128, num_warps=2, num_stages=3, q_mode="loop", split_d=4), False),
    (KernelSpec("packed", "fp16", 64, codes="int8xint8"),
     KernelConfig(block_q=32, block_d=32, block_k=64, num_warps=2, num_stages=3, q_mode="loop"), False),
]
# A quantized query's dot, as its PTX instruction names the operand types.
_CODE_MMA = {"int8xint8": ".s8", "fp8xfp8": ".e4m3"}


@pytest.fixture(scope="module")
def compiled():
    # One process compiles every variant, without the interpreter.
    results = _aot([[dataclasses.asdict(spec), cfg.to_dict()] for spec, cfg, _ in VARIANTS])
    return dict(zip(range(len(VARIANTS)), results))


def _aot(request: list) -> list:
    """Compile the requested kernels for sm_90 in one process of its own, without the
    interpreter (tests/_aot_sm90.py): its result per request."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("_aot_sm90.py"))], input=json.dumps(request),
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("n", range(len(VARIANTS)), ids=[f"{s.key()}-{c.key()}" for s, c, _ in VARIANTS])
def test_variant_compiles_for_hopper(n, compiled):
    spec, cfg, wgmma = VARIANTS[n]
    result = compiled[n]
    assert result["error"] is None, f"{spec.key()} {cfg.key()} does not compile for sm_90: {result['error']}"
    assert result["shared"] <= 232_448, f"{cfg.key()}: {result['shared']} bytes of shared memory"
    if wgmma:
        assert result["wgmma"], f"{spec.key()} {cfg.key()}: no warp-group MMA on sm_90"
    if cfg.num_stages > 1:
        assert result["cp_async"], f"{spec.key()} {cfg.key()}: doc tiles are not copied asynchronously"
    if spec.query_codes:
        # The dot runs on tensor cores: with warp-group tiles, on the codes themselves (an
        # s8 or e4m3 wgmma); below them (Triton 3.9, sm_90), an int8 dot stays on s8
        # mma.sync and an fp8 one is cast to fp16 in registers for an f16 mma.sync.
        want = _CODE_MMA[spec.codes] if wgmma or spec.query_codes == "int8" else ".f16"
        assert any(want in op for op in result["mma"]), f"{spec.key()} {cfg.key()}: no {want} MMA: {result['mma']}"


# The backward's winners kernel: every layout and mask kind, half and fp32 dots.
WINNERS = [
    (KernelSpec("padded", "fp16", 128, d_mask="lengths"), {"block_q": 32, "block_d": 64, "num_warps": 4,
                                                            "num_stages": 2}),
    (KernelSpec("allpairs", "bf16", 96, "tf32", "mask", "mask"), {"block_q": 64, "block_d": 64, "num_warps": 4,
                                                                   "num_stages": 2}),
    (KernelSpec("packed", "fp16", 128, "tf32", "lengths"), {"block_q": 64, "block_d": 32, "num_warps": 4,
                                                             "num_stages": 3}),
    (KernelSpec("pairs", "fp32", 320, "ieee"), {"block_q": 32, "block_d": 32, "num_warps": 4, "num_stages": 2}),
]


@pytest.fixture(scope="module")
def compiled_winners():
    return _aot([[dataclasses.asdict(spec), {"winners": cfg}] for spec, cfg in WINNERS])


@pytest.mark.parametrize("n", range(len(WINNERS)), ids=[s.key() for s, _ in WINNERS])
def test_winners_kernel_compiles_for_hopper(n, compiled_winners):
    spec, cfg = WINNERS[n]
    result = compiled_winners[n]
    assert result["error"] is None, f"{spec.key()} winners {cfg} does not compile for sm_90: {result['error']}"
    assert result["shared"] <= 232_448
    if cfg["num_stages"] > 1:
        assert result["cp_async"], f"{spec.key()} winners: doc tiles are not copied asynchronously"


# The backward's gradient kernels: padded, query-set and packed docs, half and fp32 dots,
# tiles of short and long queries and docs.
GRADS = [
    (KernelSpec("padded", "fp16", 128), {"rows": 32}),
    (KernelSpec("allpairs", "bf16", 128, "tf32", "lengths", "mask"), {"rows": 1024}),
    (KernelSpec("packed", "bf16", 96), {"rows": 8192}),
    (KernelSpec("allpairs", "fp32", 320, "ieee"), {"rows": 90}),
]


@pytest.fixture(scope="module")
def compiled_grads():
    return _aot([[dataclasses.asdict(spec), {"grads": sizes}] for spec, sizes in GRADS])


@pytest.mark.parametrize("n", range(len(GRADS)), ids=[f"{s.key()}-rows{z['rows']}" for s, z in GRADS])
def test_gradient_kernels_compile_for_hopper(n, compiled_grads):
    spec, sizes = GRADS[n]
    result = compiled_grads[n]
    assert result["error"] is None, \
        f"{spec.key()} gradient kernels at {sizes} do not compile for sm_90: {result['error']}"
    assert result["shared"] <= 232_448


QUANTIZE = [(KernelSpec("padded", dtype, dim), dim) for dtype, dim in (("fp16", 128), ("bf16", 96), ("fp32", 200))]


@pytest.fixture(scope="module")
def compiled_quantize():
    return _aot([[dataclasses.asdict(spec), {"quantize": dim}] for spec, dim in QUANTIZE])


@pytest.mark.parametrize("n", range(len(QUANTIZE)), ids=[f"{s.dtype}-dim{d}" for s, d in QUANTIZE])
def test_the_quantize_kernel_compiles_for_hopper_with_ieee_divisions(n, compiled_quantize):
    """The int8 quantize kernel compiles, its divisions round as IEEE's (and torch's) do
    (``div.rn``, never the approximate ``div.full`` that Triton's ``/`` gives float32), and
    its rounding is not folded away: what its bit-for-bit agreement with the torch
    quantizer, checked through the interpreter, rests on."""
    result = compiled_quantize[n]
    assert result["error"] is None, f"{QUANTIZE[n]}: {result['error']}"
    assert result["divs"] and all(d.startswith("div.rn.") for d in result["divs"]), result["divs"]
    # Rounding half to even adds and takes away 1.5 * 2**23: both additions must survive.
    assert min(result["round_adds"]) > 0, result["round_adds"]
