"""What the NaN rule costs the kernels: each bench case timed through ``mf.maxsim`` with
the variant it routes to as shipped (maxima that propagate NaN) and with the same variant
rendered as before the rule (``tl.max`` / ``tl.maximum``), alternated in one process.

    python benchmarks/nan_rule_cost.py [--cases a,b] [--rounds 5] [--out nan-rule.json]

The "before" kernel is the shipped text with the rule undone the way the change made it:
``tl.reduce(x, axis, _max_nan)`` back to ``tl.max(x, axis=axis)`` and ``_max_nan(a, b)``
back to ``tl.maximum(a, b)``. Both outputs are checked against each other (the inputs hold
no NaN, so they must agree) before any timing. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics

import torch

_REDUCE = re.compile(r"tl\.reduce\(([A-Za-z_][A-Za-z_0-9]*), (\d), _max_nan\)")
_PAIR = re.compile(r"(?<!def )_max_nan\(")


def undo_nan_rule(source: str) -> str:
    """The kernel text of ``source`` with plain (NaN-dropping) maxima."""
    before = _PAIR.sub("tl.maximum(", _REDUCE.sub(r"tl.max(\1, axis=\2)", source))
    if "_max_nan(" in before.replace("def _max_nan(", ""):
        raise RuntimeError("a NaN-propagating max was left in the 'before' kernel")
    return before


def main() -> None:
    import os

    # Compile on the first call: a background compile would leave torch to answer the timings.
    os.environ["MAXSIM_FORGE_COMPILE"] = "blocking"
    import triton.testing

    from maxsim_forge.bench._cases import CASES, IMPLS, as_tensor, make_inputs
    from maxsim_forge.codegen import Variant, load_source, render
    from maxsim_forge.runtime import _api, reset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="all")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    names = [c.name for c in CASES] if args.cases == "all" else args.cases.split(",")
    cases = [c for c in CASES if c.name in names]

    which = {"rule": "after"}
    shipped_load = _api.load_variant

    def load(spec, cfg, *, smem_limit=None):
        variant = shipped_load(spec, cfg, smem_limit=smem_limit)
        if which["rule"] == "after":
            return variant
        source = undo_nan_rule(render(spec, cfg, smem_limit=smem_limit))
        return Variant(spec, cfg, load_source(source))

    _api.load_variant = load

    def bench(fn, rule: str) -> float:
        which["rule"] = rule
        reset()
        fn()  # new route for this rule: compile, load
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    rows = []
    for case in cases:
        x = make_inputs(case, "cuda")
        fn = IMPLS["maxsim-forge"](x)
        outs = {}
        for rule in ("after", "before"):
            which["rule"] = rule
            reset()
            outs[rule] = as_tensor(fn()).float()
        if not torch.allclose(outs["after"], outs["before"], rtol=1e-5, atol=1e-4):
            raise RuntimeError(f"{case.name}: the kernels before and after the rule disagree")
        times = {"before": [], "after": []}
        for i in range(args.rounds):
            for rule in (("before", "after") if i % 2 == 0 else ("after", "before")):
                times[rule].append(bench(fn, rule))
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        rows.append({"case": case.name, "before_ms": b, "after_ms": a, "after_over_before": a / b,
                     "before_all": times["before"], "after_all": times["after"]})
        print(f"{case.name:20s} before {b:.4f} ms  after {a:.4f} ms  after/before {a / b:.3f}", flush=True)
    gm = statistics.geometric_mean([r["after_over_before"] for r in rows])
    print(f"geometric mean after/before: {gm:.3f} over {len(rows)} cases ({torch.cuda.get_device_name()})")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rounds": args.rounds, "geomean_after_over_before": gm, "cases": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
