"""The side-by-side benchmark of BENCHMARKS.md; the same as ``maxsim-forge bench``, but
writing into the release folder ``benchmarks/results/<gpu>-<date>/`` unless ``--out`` says.

    python benchmarks/bench_maxsim_fwd.py --first-call
"""

import sys

from maxsim_forge.bench import release_folder
from maxsim_forge.cli import bench

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(release_folder())]
    bench(args)
