"""A generated variant ready to run: its imported kernel module, its launchers and its plan."""

from __future__ import annotations

from types import ModuleType

from ._config import KernelConfig, KernelSpec
from ._launcher import Launcher
from ._plan import REDUCE_WARPS, check_call, fwd_constexprs, plan, reduce_constexprs
from ._render import variant_name


class Variant:
    """One spec and config with the kernels rendered for them.

    ``launch`` scores; ``precompile`` compiles and loads for a call's arguments without
    launching. Both take ``q, d`` and the sizes by name: ``nq``/``lq``, shared queries and
    their padded length (pairs: ``nq`` is 1 and ``lq`` the longest query, which sizes the
    grid); ``nb``/``ld``, docs and their padded (or, packed, longest) length; and the
    extents the layout takes (``q_cu``, ``d_cu``, ``q_lengths``, ``q_mask``,
    ``d_lengths``, ``d_mask``; quantized docs add ``d_scales`` and, where the query is
    quantized too, ``q_scales``). The result is float32 ``[nq, nb]`` (pairs: ``[nb]``),
    written into ``out`` when given.
    """

    def __init__(self, spec: KernelSpec, cfg: KernelConfig, module: ModuleType):
        self.spec, self.cfg, self.module = spec, cfg, module
        self.name = variant_name(spec, cfg)
        # q, d, out and part have dtypes the plan checks; the extents after them enter
        # the launchers' keys by dtype.
        self.fwd = Launcher(module._maxsim_fwd_kernel, fixed=4,
                            constexprs=fwd_constexprs(spec, cfg), num_warps=cfg.num_warps,
                            num_stages=cfg.num_stages, deferrable=True)
        self.reduce = None
        if cfg.split_d > 1:
            self.reduce = Launcher(module._maxsim_split_reduce_kernel, fixed=2,
                                   constexprs=reduce_constexprs(cfg), num_warps=REDUCE_WARPS, deferrable=True)

    def __repr__(self) -> str:
        return f"Variant({self.name})"

    def _steps(self, q, d, kwargs):
        check_call(self.spec, self.name, q, d)
        out, steps = plan(self.spec, self.cfg, q, d, **kwargs)
        return out, [(self.fwd if s.kernel == "fwd" else self.reduce, s.grid, s.args) for s in steps]

    def launch(self, q, d, **kwargs):
        """Score with this variant (see the class docstring for the arguments)."""
        out, steps = self._steps(q, d, kwargs)
        for launcher, grid, args in steps:
            launcher(grid, args)
        return out

    def compiled_kernels(self, q, d, **kwargs) -> tuple[tuple, list]:
        """For a call's launches: what each is specialised on (its launcher's key without
        the device's index: the part of Triton's cache key that the arguments decide), and
        the compiled kernel this process holds for it (None where it holds none)."""
        _, steps = self._steps(q, d, kwargs)
        keys, kernels = [], []
        for launcher, _, args in steps:
            key = launcher.key(args)
            keys.append((launcher is self.fwd, key[1:]))
            kernels.append(launcher.compiled_for(key))
        return tuple(keys), kernels

    def precompile(self, q, d, **kwargs) -> None:
        """Compile and load this variant for ``launch``'s arguments without launching it."""
        _, steps = self._steps(q, d, kwargs)
        for launcher, grid, args in steps:
            launcher.compile(grid, args)
