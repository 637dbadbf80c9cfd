"""The dispatcher behind the scoring entry points (``_entry.py``).

A call is checked, bucketed and routed: the first call of a (spec, bucket) decides
its config through the lookup order and loads the generated variant; every later call
is a dictionary lookup plus the launch. Nothing here tunes, syncs with the device
(unless values are checked outside graph capture) or imports the tuner.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .._inputs import Prepared
from .._keys import BucketKey, gpu_info
from ..codegen import (
    DEFER, INTERPRETER_LOCK, MIN_CODE_K, CompileNeeded, KernelConfig, Variant, compiled_before, device_guard,
    kernels_disabled, kernels_run_on, load_variant, mark_compiled, variant_name,
)
from ..reference import reference_for
from ._eager import eager_scores
from ._explain import Decision
from ._keys import bucket_key
from ._limits import dim_error
from . import _record
from ._lookup import HEURISTIC, TORCH, Lookup

log = logging.getLogger("maxsim_forge")


@dataclass
class _Route:
    key: BucketKey
    config: KernelConfig | None
    source: str
    variant: str
    launch: object = None  # the variant's launch; None for the torch fallback
    precompile: object = None  # the variant's precompile
    kernel: Variant | None = None  # the variant (its compile marks)
    background: bool = False  # compile off the calling thread (MAXSIM_FORGE_COMPILE)
    warm: bool = False
    pending: Future | None = None  # the background compile, while it runs
    # Background compiles of specialisations a warm route meets later (another class of
    # doc count, say), by device and the call's specialisations (see _later_specialisation).
    later: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The lookup's generation where a database it reads was held by a writer when this
    # route was decided: decided again once that database is read. None: final.
    generation: int | None = None
    calls: int = 0  # calls served (MAXSIM_FORGE_RECORD writes them out; see _record)

    def decision(self) -> Decision:
        return Decision(self.key.layout, self.key.label(), self.variant,
                        self.config.to_dict() if self.config else None, self.source, self.key.gpu)


_lookup = Lookup()
_routes: dict[tuple, _Route] = {}
_routes_lock = threading.Lock()
_logged_misses: set[tuple] = set()


def reset(lookup: Lookup | None = None) -> None:
    """Forget loaded databases and routes (tests, or after writing a new database); the
    record (MAXSIM_FORGE_RECORD) is flushed and its variable read again."""
    global _lookup
    _record.stop()
    with _routes_lock:
        _lookup = lookup or Lookup()
        _routes.clear()
        _plans.clear()
        _checked_shapes.clear()
        _logged_misses.clear()


_disabled = kernels_disabled


_COMPILE_MODES = ("background", "blocking")


def _compile_mode() -> str:
    mode = os.environ.get("MAXSIM_FORGE_COMPILE", "background") or "background"
    if mode not in _COMPILE_MODES:
        raise ValueError(f"MAXSIM_FORGE_COMPILE={mode!r} is not supported; accepted: 'background', 'blocking'")
    return mode


def _route(prep: Prepared, key: BucketKey | None = None) -> _Route:
    """The memoised route of a call; ``key`` overrides the call's own bucket (warmup)."""
    device = prep.q.device
    gpu = gpu_info(device)
    key = key or bucket_key(prep, gpu)
    memo = (prep.spec, key, device.type)
    route = _routes.get(memo)
    if route is not None and (route.generation is None or not _lookup.changed_since(route.generation)):
        return route
    with _routes_lock:
        route = _routes.get(memo)
        if route is None or (route.generation is not None and _lookup.changed_since(route.generation)):
            route = _new_route(prep, key, gpu)
            _routes[memo] = route
    return route


def _new_route(prep: Prepared, key: BucketKey, gpu) -> _Route:
    # The environment is read here, once per route: reset() makes a change take effect.
    if prep.spec.dtype == "fp64" or not kernels_run_on(prep.q.device):
        why = ("float64 inputs" if prep.spec.dtype == "fp64" else "MAXSIM_FORGE_DISABLE is set" if _disabled()
               else "CPU tensors without TRITON_INTERPRET=1")
        log.info("maxsim-forge: torch for %s (%s)", key.label(), why)
        return _recorded(_Route(key, None, TORCH, f"torch ({why})"), prep)
    too_large = dim_error(prep.spec.dtype, prep.spec.dim, gpu.smem_limit)
    if prep.spec.query_codes and prep.spec.dim < MIN_CODE_K:
        too_large = f"a quantized query's dot takes a dim of at least {MIN_CODE_K}; this one is {prep.spec.dim}"
    if too_large:
        log.info("maxsim-forge: torch for %s (%s)", key.label(), too_large)
        return _recorded(_Route(key, None, TORCH, f"torch ({too_large})"), prep)
    cfg, source = _lookup.decide(prep.spec, key, gpu, prep.sizes)
    generation = _lookup.generation if _lookup.pending else None
    if source == HEURISTIC and (gpu.name, key) not in _logged_misses:
        _logged_misses.add((gpu.name, key))
        log.info("maxsim-forge: no tuned config for %s on %s; using the heuristic default", key.label(), gpu.name)
    variant = load_variant(prep.spec, cfg, smem_limit=gpu.smem_limit)
    background = _compile_mode() == "background" and prep.q.device.type == "cuda"
    return _recorded(_Route(key, cfg, source, variant_name(prep.spec, cfg), variant.launch, variant.precompile,
                            variant, background, generation=generation), prep)


def _recorded(route: _Route, prep: Prepared) -> _Route:
    """The route, registered with the record where MAXSIM_FORGE_RECORD names one."""
    rec = _record.recorder()
    if rec is not None:
        rec.add(route, prep.spec, prep.sizes)
    return route


# Interpreted launches from several threads take turns (codegen.INTERPRETER_LOCK);
# Triton launches on the current device (codegen.device_guard).
_interpreter_lock = INTERPRETER_LOCK
_device_guard = device_guard


def _run(prep: Prepared, key: BucketKey | None = None, *, blocking: bool = False) -> torch.Tensor:
    with _device_guard(prep.q):
        return _run_here(prep, key, blocking)


def _run_here(prep: Prepared, key: BucketKey | None, blocking: bool) -> torch.Tensor:
    route = _route(prep, key)
    if not blocking:  # warmup's calls (blocking) serve nobody
        route.calls += 1
    if route.launch is None:
        out = _torch_scores(prep)
    elif route.warm and prep.q.device.type != "cpu":
        out = _warm(route, prep, blocking)
    elif prep.q.device.type == "cpu":
        with _interpreter_lock:  # interpreted launches always take turns
            out = _warm(route, prep, blocking) if route.warm else _cold(route, prep, blocking)
    else:
        with route.lock:  # the first launch compiles, in one thread
            out = None if route.warm else _cold(route, prep, blocking)
        if out is None:  # warm by the time the lock came: as any warm call (which may take the lock)
            out = _warm(route, prep, blocking)
    return out[0] if prep.squeeze else out


def _warm(route: _Route, prep: Prepared, blocking: bool) -> torch.Tensor:
    """A call of a route whose kernel ran before; in background mode, one in a
    specialisation not compiled yet is handled as a first call (:func:`_later_specialisation`)."""
    if blocking:
        return route.launch(prep.q, prep.d, **prep.launch_kwargs)
    out = _launch_or_defer(route, prep.q, prep.d, **prep.launch_kwargs)
    return out if out is not None else _later_specialisation(route, prep)


def _torch_scores(prep: Prepared) -> torch.Tensor:
    """The torch path: tensor-core matmuls on a GPU, the float64 reference on the CPU (and
    for float64 inputs, whose scores stay float64)."""
    if prep.spec.dtype == "fp64":
        return reference_for(prep)
    return eager_scores(prep) if prep.q.is_cuda else reference_for(prep).to(torch.float32)


# One thread compiles kernels in the background, one variant after another.
_compiler: ThreadPoolExecutor | None = None


def _submit(route: _Route, prep: Prepared) -> Future:
    global _compiler
    if _compiler is None:
        _compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maxsim-forge-compile")
    q, d, kwargs = prep.q, prep.d, dict(prep.launch_kwargs)

    def compile_variant() -> None:
        with _device_guard(q):  # the compile thread starts on device 0
            route.precompile(q, d, **kwargs)

    return _compiler.submit(compile_variant)


def _cold(route: _Route, prep: Prepared, blocking: bool) -> torch.Tensor:
    """A call before the route's kernel is ready (under ``route.lock``).

    In background mode the first call starts the compile on the compile thread and is
    scored by torch; so is every call until the compile is done. A call under CUDA graph
    capture, or a blocking one (warmup), waits for the kernel instead; so does the first
    call of a variant that a process of this user compiled before for such a call (its
    compile mark): Triton's cache then holds it, to load rather than compile.
    """
    defer = route.background and not blocking and not _capturing(prep.q)
    if defer and route.pending is None and compiled_before(route.kernel, prep.q, prep.d, prep.launch_kwargs):
        log.info("maxsim-forge: %s was compiled here before; loading it from Triton's cache", route.variant)
        defer = False
    if defer:
        if route.pending is None:
            route.pending = _submit(route, prep)
            log.info("maxsim-forge: compiling %s in the background; torch scores the calls until then",
                     route.variant)
        if not route.pending.done():
            return eager_scores(prep)
    if route.pending is not None:
        pending, route.pending = route.pending, None
        try:
            pending.result()
        except Exception as exc:  # noqa: BLE001 - reported and handled like a failed launch
            return _failed(route, prep, exc)
    out = _first_launch(route, prep)
    if route.background and route.launch is not None and not _capturing(prep.q):  # launch None: it failed
        mark_compiled(route.kernel, prep.q, prep.d, prep.launch_kwargs)
    return out


def _launch_or_defer(route: _Route, *args, **kwargs) -> torch.Tensor | None:
    """A warm route's launch; None where, in background mode, it met a specialisation not
    compiled yet (its launchers raise instead of compiling on this thread: DEFER), so that
    the caller compiles it in the background: :func:`_warm`, or a fast path of
    ``_entry`` by taking the checked path."""
    if not route.background:
        return route.launch(*args, **kwargs)
    DEFER.on = True
    try:
        return route.launch(*args, **kwargs)
    except CompileNeeded:
        return None
    finally:
        DEFER.on = False


def _later_specialisation(route: _Route, prep: Prepared) -> torch.Tensor:
    """A warm route's call that its kernel has not been compiled for (Triton specialises
    on each integer's class: 1, a multiple of 16, or other; ``warmup`` compiles one): as a
    route's first call, it compiles on the compile thread and torch scores the calls
    until it is done; then the kernel runs (compiling here only if that compile failed,
    as without background mode). A route keeps one entry per specialisation so met."""
    with route.lock:
        which = (prep.q.get_device(), route.kernel.compiled_kernels(prep.q, prep.d, **prep.launch_kwargs)[0])
        pending = route.later.get(which)
        if pending is None:
            # Kept when done: its calls launch directly from then on, and should one still
            # miss (a compile that left nothing to launch directly), it launches in place.
            pending = route.later[which] = _submit(route, prep)
            q, d, kwargs = prep.q, prep.d, prep.launch_kwargs

            def done(f: Future) -> None:
                if f.exception() is None:
                    mark_compiled(route.kernel, q, d, kwargs)
                else:
                    log.warning("maxsim-forge: %s failed to compile for another specialisation (%s: %s); its "
                                "calls compile it in place", route.variant, type(f.exception()).__name__,
                                str(f.exception())[:300])

            pending.add_done_callback(done)
            log.info("maxsim-forge: compiling %s for another specialisation in the background; torch scores "
                     "those calls until then", route.variant)
        if not pending.done():
            return eager_scores(prep)
        if pending.exception() is None:
            route.later.pop(which, None)  # a failed one stays: its calls compile in place, as before
    return route.launch(prep.q, prep.d, **prep.launch_kwargs)


def _failed(route: _Route, prep: Prepared, exc: BaseException) -> torch.Tensor:
    log.warning("maxsim-forge: %s failed on %s (%s: %s); using torch for this bucket",
                route.variant, route.key.gpu, type(exc).__name__, str(exc)[:300])
    route.launch, route.source = None, TORCH
    route.variant = f"torch ({route.variant} failed)"
    route.warm = True
    return _torch_scores(prep)


def _first_launch(route: _Route, prep: Prepared) -> torch.Tensor:
    try:
        out = route.launch(prep.q, prep.d, **prep.launch_kwargs)
    except (ValueError, TypeError):
        raise
    except Exception as exc:  # a variant that does not compile or launch on this device
        return _failed(route, prep, exc)
    route.warm = True
    return out


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _check_values(validate: bool, *tensors) -> bool:
    """Value checks read data back; skip them when asked or while a CUDA graph is captured."""
    if not validate:
        return False
    cuda = next((t for t in tensors if isinstance(t, torch.Tensor) and t.is_cuda), None)
    return cuda is None or not _capturing(cuda)


# ---- the fast path: a call whose tensors have the shapes, dtypes and devices of an
# earlier, fully checked call skips the structural checks and reuses its route.
# Pairs from lists change shape on every call: their plans are keyed by ("pairs",
# precision, device, dtype, dim, lq, nb and ld buckets) instead.
_plans: dict[tuple, tuple[_Route, bool, dict]] = {}
_PLAN_LIMIT = 4096
# Calls with gradients keep the checked path's result only: (squeeze, sizes, spec) per
# signature. The checks are structural, so a call of the same signature passes them
# again; lengths are still checked where ``validate`` asks.
_checked_shapes: dict[tuple, tuple] = {}


def _plan_for(layout: str, precision: str, *tensors) -> tuple[tuple | None, tuple | None]:
    """(signature, plan) of a call; (None, None) when an argument is not even a tensor,
    so that the checked path raises its clear error."""
    try:
        sig = (layout, precision, *[None if t is None else (t.shape, t.dtype, t.device) for t in tensors])
        return sig, _plans.get(sig)
    except (AttributeError, TypeError):
        return None, None


def _remember(sig: tuple, prep: Prepared) -> None:
    if prep.q.device.type != "cuda":
        return  # the reference and the interpreter keep the checked path
    route = _route(prep)
    if route.launch is None or not route.warm or route.generation is not None:
        return  # a provisional route (see _Route.generation) keeps the checked path
    if len(_plans) >= _PLAN_LIMIT:
        _plans.clear()
    _plans[sig] = (route, prep.squeeze, prep.sizes)


def _note_checked(sig: tuple, prep: Prepared) -> None:
    """Remember that calls of signature ``sig`` pass the structural checks, as ``prep``."""
    if len(_checked_shapes) >= _PLAN_LIMIT:
        _checked_shapes.clear()
    _checked_shapes[sig] = (prep.squeeze, prep.sizes, prep.spec)


__all__ = ["Decision", "reset"]
