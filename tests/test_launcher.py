"""Direct launches (codegen/_launcher.py): the key, the cache and the fallbacks, with a
stand-in for Triton's kernel objects (the GPU suite runs the real ones)."""

from __future__ import annotations

import pytest
import torch

from maxsim_forge.codegen import _launcher
from maxsim_forge.codegen._launcher import Launcher


class FakeCompiled:
    def __init__(self, log, refuse=False):
        self.log, self.refuse, self.loaded = log, refuse, False

    def __getitem__(self, grid):
        def run(*args):
            if self.refuse:
                raise TypeError("function takes exactly 9 arguments (11 given)")
            self.log.append(("direct", grid, args))
        return run

    def _init_handles(self):
        self.loaded = True


class FakeKernel:
    arg_names = ["a_ptr", "b_ptr", "N", "stride", "BLOCK", "SPLIT"]

    def __init__(self, refuse=False):
        self.log, self.refuse, self.compiled = [], refuse, []

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.log.append(("jit", grid, args, meta))
            self.compiled.append(FakeCompiled(self.log, self.refuse))
            return self.compiled[-1]
        return run

    def warmup(self, *args, grid, **meta):
        self.log.append(("warmup", grid, args, meta))
        self.compiled.append(FakeCompiled(self.log, self.refuse))
        return self.compiled[-1]


@pytest.fixture
def make(monkeypatch):
    monkeypatch.setattr(_launcher, "JITFunction", FakeKernel)
    monkeypatch.setattr(Launcher, "direct_ok", True)

    def make(refuse=False):
        kernel = FakeKernel(refuse)
        return kernel, Launcher(kernel, fixed=1, constexprs={"BLOCK": 64, "SPLIT": 2}, num_warps=4,
                                num_stages=3)
    return make


def test_the_first_launch_compiles_through_triton_and_repeats_go_direct(make):
    kernel, launch = make()
    a, b = torch.empty(64), torch.empty(64, dtype=torch.int32)
    launch((7,), (a, b, 300, 128))
    launch((9,), (a, b, 301, 128))  # another size of the same class: no new specialisation
    assert kernel.log[0] == ("jit", (7,), (a, b, 300, 128), {"BLOCK": 64, "SPLIT": 2, "num_warps": 4, "num_stages": 3})
    # Direct: the grid padded to three dimensions, every argument and then the constexprs.
    assert kernel.log[1] == ("direct", (9, 1, 1), (a, b, 301, 128, 64, 2))
    assert launch.direct_launches == 1


@pytest.mark.parametrize("change", ("alignment", "index dtype", "value 1", "divisible by 16", "width", "device"))
def test_every_specialisation_change_goes_through_triton_again(make, change):
    kernel, launch = make()
    a, b = torch.empty(64), torch.empty(64, dtype=torch.int32)
    args = (a, b, 300, 128)
    launch((1,), args)
    changed = {
        "alignment": (a[1:], b, 300, 128),
        "index dtype": (a, b.long(), 300, 128),
        "value 1": (a, b, 1, 128),
        "divisible by 16": (a, b, 300, 129),
        "width": (a, b, (1 << 33) + 12, 128),  # as 300: not 1, not divisible by 16; only wider
    }.get(change)
    if change == "device":
        assert launch.key(args)[0] == -1  # the device index leads the key (-1: CPU)
        return
    launch((1,), changed)
    assert [entry[0] for entry in kernel.log] == ["jit", "jit"]
    launch((1,), changed)
    assert [entry[0] for entry in kernel.log] == ["jit", "jit", "direct"]


def test_a_refused_direct_launch_falls_back_for_good(make):
    kernel, launch = make(refuse=True)
    a, b = torch.empty(64), torch.empty(64, dtype=torch.int32)
    launch((1,), (a, b, 300, 128))
    launch((1,), (a, b, 300, 128))  # refused by the "launcher": redone through Triton
    assert [entry[0] for entry in kernel.log] == ["jit", "jit"]
    assert Launcher.direct_ok is False
    launch((1,), (a, b, 300, 128))
    assert [entry[0] for entry in kernel.log] == ["jit", "jit", "jit"]


def test_compile_warms_up_once_and_the_first_launch_goes_direct(make):
    kernel, launch = make()
    a, b = torch.empty(64), torch.empty(64, dtype=torch.int32)
    launch.compile((5,), (a, b, 300, 128))
    launch.compile((5,), (a, b, 300, 128))
    assert [entry[0] for entry in kernel.log] == ["warmup"] and kernel.compiled[0].loaded
    launch((5,), (a, b, 300, 128))
    assert [entry[0] for entry in kernel.log] == ["warmup", "direct"]


def test_interpreted_or_mismatched_kernels_always_go_through_triton(monkeypatch):
    monkeypatch.setattr(Launcher, "direct_ok", True)
    kernel = FakeKernel()  # not a JITFunction here: the interpreter's case
    launch = Launcher(kernel, fixed=1, constexprs={"BLOCK": 64, "SPLIT": 2}, num_warps=4)
    a, b = torch.empty(64), torch.empty(64, dtype=torch.int32)
    for _ in range(2):
        launch((1,), (a, b, 300, 128))
    launch.compile((1,), (a, b, 300, 128))
    assert [entry[0] for entry in kernel.log] == ["jit", "jit"]
    monkeypatch.setattr(_launcher, "JITFunction", FakeKernel)
    # constexprs given out of the kernel's parameter order: no direct launches either
    assert not Launcher(kernel, fixed=1, constexprs={"SPLIT": 2, "BLOCK": 64}, num_warps=4).direct


def test_every_generated_kernel_takes_its_tensors_first():
    """A launcher counts a kernel's tensors as its leading ``*_ptr`` parameters (the key
    reads their alignment and dtypes, the rest as integers): every template names its
    pointers so and lists them before any integer, whatever the layout, codes or split."""
    from maxsim_forge.codegen import (
        KernelConfig, KernelSpec, WinnersConfig, grads_launcher, grads_meta, load_variant, quantize_launcher,
        winners_launcher,
    )

    launchers = [quantize_launcher(96)]
    for layout in ("padded", "allpairs", "packed", "pairs"):
        spec = KernelSpec(layout, "fp16", 128)
        launchers.append(winners_launcher(spec, WinnersConfig()))
        if layout != "pairs":
            launchers += [grads_launcher(spec, w, m) for w, m in zip(("dq", "dd"), grads_meta(spec, rows=64))]
        for codes in ("none", "int8"):
            cfg = KernelConfig(block_q=32, block_d=64, block_k=128, num_warps=4, num_stages=2,
                               q_mode="loop" if layout != "allpairs" else "grid", split_d=2 if layout == "padded" else 1)
            variant = load_variant(KernelSpec(layout, "fp16", 128, codes=codes), cfg, smem_limit=232_448)
            launchers += [variant.fwd] + ([variant.reduce] if variant.reduce else [])
    for launcher in launchers:
        names = list(launcher.kernel.arg_names)
        assert launcher.tensors > 0 and all(n.endswith("_ptr") for n in names[:launcher.tensors])
        assert not any(n.endswith("_ptr") for n in names[launcher.tensors:]), names
    # The winners kernel: q, d, idx, val and six extents (a count written by hand said 9).
    assert launchers[1].tensors == 10


def test_a_deferring_miss_raises_before_launching_and_compiles_nothing(make, monkeypatch):
    """With DEFER on (a warm call in background mode), a deferrable launcher's miss raises
    CompileNeeded and leaves the compile to the caller; once compiled (the compile
    thread's Launcher.compile) the launch goes direct. Not deferrable, DEFER off, or under
    CUDA graph capture: it compiles in place, as always."""
    kernel, launch = make()
    a, b = torch.empty(64), torch.empty(64, dtype=torch.int32)
    monkeypatch.setattr(_launcher.DEFER, "on", True)
    launch((1,), (a, b, 300, 128))  # not deferrable: compiles here
    assert [entry[0] for entry in kernel.log] == ["jit"]
    launch.deferrable = True
    launch((1,), (a, b, 301, 128))  # compiled: direct
    with pytest.raises(_launcher.CompileNeeded):
        launch((1,), (a, b, 304, 128))  # another class: nothing launched, nothing compiled
    assert [entry[0] for entry in kernel.log] == ["jit", "direct"]
    launch.compile((1,), (a, b, 304, 128))
    launch((1,), (a, b, 320, 128))
    assert [entry[0] for entry in kernel.log] == ["jit", "direct", "warmup", "direct"]
    monkeypatch.setattr(_launcher, "_capturing", lambda: True)
    launch((1,), (a, b, 1, 128))  # under capture: compiled in place
    monkeypatch.setattr(_launcher, "_capturing", lambda: False)
    monkeypatch.setattr(_launcher.DEFER, "on", False)
    launch((1,), (a[1:], b, 300, 128))  # DEFER off: compiled in place
    assert [entry[0] for entry in kernel.log] == ["jit", "direct", "warmup", "direct", "jit", "jit"]
