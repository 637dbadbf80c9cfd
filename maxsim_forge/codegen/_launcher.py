"""Repeat launches of a generated kernel without Triton's per-call Python dispatch.

``kernel[grid](...)`` binds every argument, computes a specialisation string and
looks up the compiled kernel on each call: tens of microseconds of host time, as
much as the whole kernel takes on a small batch. A :class:`Launcher` keeps the
compiled kernel that the first launch returned, under a key of everything Triton
specialises a non-constexpr argument on (device, pointer alignment, the dtype of
tensors the launcher does not fix, and each integer's value class), and launches it
directly on later calls. Any miss of the key goes through ``kernel[grid]`` again,
so a new specialisation compiles exactly as Triton would compile it.

Under the interpreter, or where the installed Triton lacks the pieces used here,
every launch goes through ``kernel[grid]``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

import torch

from ._render import interpreting

log = logging.getLogger("maxsim_forge")

# Triton's interpreter patches triton.language globally while a kernel runs, so
# interpreted launches from several threads must take turns; compiled ones need not.
INTERPRETER_LOCK = threading.Lock()


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def kernels_disabled() -> bool:
    """``MAXSIM_FORGE_DISABLE`` set: torch does everything."""
    return os.environ.get("MAXSIM_FORGE_DISABLE", "0") not in ("", "0")


def kernels_run_on(device: torch.device) -> bool:
    """Whether generated kernels run for tensors on ``device``: a GPU, or the CPU through
    Triton's interpreter, unless ``MAXSIM_FORGE_DISABLE`` is set."""
    if kernels_disabled():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device: switch to the tensor's when it differs."""
    index = t.get_device()
    if index < 0 or index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(index)


def launch_guard(t: torch.Tensor):
    """What a launch for tensors like ``t`` needs around it: their device as the current
    one, or on the CPU the interpreter to itself."""
    return INTERPRETER_LOCK if t.device.type == "cpu" else device_guard(t)


class CompileNeeded(Exception):
    """A deferring launch (:data:`DEFER`) met a specialisation its launcher has not
    compiled: nothing was launched by that launcher; the caller compiles elsewhere."""


# DEFER.on, set by the dispatcher around a warm call in background-compile mode: a
# deferrable launcher's miss raises CompileNeeded instead of compiling on the calling
# thread (outside CUDA graph capture, which compiles in place as before).
DEFER = threading.local()
DEFER.on = False


# Integers of this magnitude or more are passed as 64-bit; below, as 32-bit.
_I32 = 1 << 31
# triton's JITFunction, imported at the first launcher, not with this module: Triton reads
# TRITON_INTERPRET when it loads, and the CLI turns the interpreter on after
# maxsim_forge is imported.
JITFunction = None


def _jit_function() -> type:
    global JITFunction
    if JITFunction is None:
        from triton.runtime.jit import JITFunction as jit_function

        JITFunction = jit_function
    return JITFunction


class Launcher:
    """One ``@triton.jit`` kernel with its meta-parameters fixed.

    The kernel's leading parameters named ``*_ptr`` are its tensors (every template names
    them so and puts them first); the rest are integers. ``fixed`` is how many leading
    tensor arguments have a dtype the caller already checked (only their alignment enters
    the key).
    """

    # Set to False once a direct launch is refused by the installed Triton: every
    # launch of the process then goes through kernel[grid].
    direct_ok = True

    def __init__(self, kernel, *, fixed: int, constexprs: dict, num_warps: int, num_stages: int | None = None,
                 deferrable: bool = False):
        self.kernel = kernel
        self.deferrable = deferrable  # a miss may raise CompileNeeded (see DEFER)
        names = list(getattr(kernel, "arg_names", ()))
        self.tensors = next((i for i, name in enumerate(names) if not name.endswith("_ptr")), len(names))
        self.fixed = fixed
        self.meta = dict(constexprs, num_warps=num_warps)
        if num_stages is not None:
            self.meta["num_stages"] = num_stages
        # Direct launches need a compiled kernel: not the interpreter's function.
        self.direct = (isinstance(kernel, _jit_function()) and bool(constexprs)
                       and names[-len(constexprs):] == list(constexprs))
        # The compiled kernel's launcher takes every argument, constexprs included,
        # in the kernel's parameter order.
        self.tail = tuple(constexprs.values())
        self._compiled: dict[tuple, object] = {}
        self.direct_launches = 0  # for tests and benchmarks

    def key(self, args: tuple) -> tuple:
        # Triton specialises a pointer on 16-byte alignment and an integer on being 1,
        # on divisibility by 16 and on its width; 0 keeps a class of its own here.
        n = self.tensors
        ts = args[:n]
        ints = args[n:]
        return (
            ts[0].get_device(),
            *[t.data_ptr() & 15 == 0 for t in ts],
            *[t.dtype for t in ts[self.fixed:]],
            *[v & 15 == 0 if v > 1 else v - 2 for v in ints],
            max(ints) < _I32,
        )

    def compiled_for(self, key: tuple):
        """The compiled kernel this launcher holds for ``key`` (:meth:`key`), or None."""
        return self._compiled.get(key)

    def __call__(self, grid: tuple, args: tuple) -> None:
        if not (self.direct and Launcher.direct_ok):
            self.kernel[grid](*args, **self.meta)
            return
        key = self.key(args)
        compiled = self._compiled.get(key)
        if compiled is None:
            if self.deferrable and getattr(DEFER, "on", False) and not _capturing():
                raise CompileNeeded(key)
            compiled = self.kernel[grid](*args, **self.meta)
            if compiled is not None:
                self._compiled[key] = compiled
            return
        try:
            compiled[(grid[0], 1, 1) if len(grid) == 1 else grid](*args, *self.tail)
        except (TypeError, AttributeError) as exc:  # this Triton's launcher takes other arguments
            # Argument parsing fails before anything reaches the device, so the
            # launch is simply redone the usual way.
            log.info("maxsim-forge: direct launches unavailable with this Triton (%s); "
                     "launching through kernel[grid]", exc)
            Launcher.direct_ok = False
            self.kernel[grid](*args, **self.meta)
            return
        self.direct_launches += 1

    def compile(self, grid: tuple, args: tuple) -> None:
        """Compile (and load) for these arguments without launching."""
        if not self.direct:
            return
        key = self.key(args)
        if key in self._compiled:
            return
        compiled = self.kernel.warmup(*args, grid=grid, **self.meta)
        if compiled is not None:
            init = getattr(compiled, "_init_handles", None)
            if init is not None:
                init()  # load the module now, not on the first launch
            self._compiled[key] = compiled


# Launchers of kernels built outside a Variant (the backward's, the quantizer), once per
# key (their spec, config or meta-parameters, and whether the interpreter runs them).
_cached: dict[tuple, Launcher] = {}


def cached_launcher(key: tuple, load, meta: dict) -> Launcher:
    """The launcher of ``load()``'s kernel with ``meta`` (its constexprs, ``num_warps`` and
    ``num_stages`` where given), built the first time ``key`` is asked for."""
    launcher = _cached.get(key)
    if launcher is None:
        constexprs = {k: v for k, v in meta.items() if k not in ("num_warps", "num_stages")}
        launcher = _cached[key] = Launcher(load(), fixed=0, constexprs=constexprs, num_warps=meta["num_warps"],
                                           num_stages=meta.get("num_stages"))
    return launcher
