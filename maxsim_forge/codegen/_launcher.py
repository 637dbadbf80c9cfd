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

import logging
import threading

log = logging.getLogger("maxsim_forge")

# Triton's interpreter patches triton.language globally while a kernel runs, so
# interpreted launches from several threads must take turns; compiled ones need not.
INTERPRETER_LOCK = threading.Lock()
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

    ``fixed`` is how many leading tensor arguments have a dtype the caller already
    checked (only their alignment enters the key); ``tensors`` is how many leading
    arguments are tensors; the rest are integers.
    """

    # Set to False once a direct launch is refused by the installed Triton: every
    # launch of the process then goes through kernel[grid].
    direct_ok = True

    def __init__(self, kernel, *, tensors: int, fixed: int, constexprs: dict, num_warps: int,
                 num_stages: int | None = None):
        self.kernel = kernel
        self.tensors = tensors
        self.fixed = fixed
        self.meta = dict(constexprs, num_warps=num_warps)
        if num_stages is not None:
            self.meta["num_stages"] = num_stages
        names = list(getattr(kernel, "arg_names", ()))
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

    def __call__(self, grid: tuple, args: tuple) -> None:
        if not (self.direct and Launcher.direct_ok):
            self.kernel[grid](*args, **self.meta)
            return
        key = self.key(args)
        compiled = self._compiled.get(key)
        if compiled is None:
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
