"""The side-by-side benchmark of BENCHMARKS.md; the same as ``maxsim-forge bench``.

    python benchmarks/bench_maxsim_fwd.py --out $OUT --first-call
"""

from maxsim_forge.cli import bench

if __name__ == "__main__":
    bench()
