#!/usr/bin/env bash
# Everything a release needs measured on one GPU, in one go, resumable:
#
#     bash benchmarks/gpu_release.sh [TIME_BUDGET_S]
#
# writes into benchmarks/results/<gpu>-<date>/ (e.g. h100-2026-11-27; created if missing;
# OUT=folder to choose another, or to resume a run begun on an earlier day):
# 1. the test suite, compiled on this GPU;
# 2. `tune --preset default --refresh` into $OUT/tuned.db (kept out of git), which starts
#    as a copy of the database shipped for this GPU: only buckets that are missing, stale or found in an
#    older search space are tuned (a cut-short run resumes; with a time budget, later
#    buckets wait for the next run), then `db ship` into the package;
# 3. the side-by-side benchmark under its protocol (a process per implementation and case,
#    outputs checked, 5 interleaved repetitions) with 30 held-out shapes (bench.* and
#    heldout.*), the runtime and vLLM benchmarks (runtime.json, vllm.json);
# 4. quantized docs checked and timed against our fp16 and the peers (quant.json), the NaN
#    rule's cost (nan-rule.json);
# 5. exhaustive tables of three buckets and the tuner's replay on them (exhaustive-*.json,
#    replay-tuner-*.json).
# Step 3 uses the databases shipped in step 2. Needs `pip install -e '.[test,bench]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(python3 -c "from maxsim_forge.bench import release_folder; print(release_folder())")}
BUDGET=${1:-}
mkdir -p "$OUT"
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
echo "== $gpu: tests"
python3 -m pytest -q -n "$(( $(nproc) > 14 ? 14 : $(nproc) ))" -p no:cacheprovider tests/ 2>&1 | tail -3 | tee "$OUT/tests.log"
echo "== tune --preset default"
shipped="maxsim_forge/tuned_db/data/$gpu.db"
if [ ! -f "$OUT/tuned.db" ] && [ -f "$shipped" ]; then cp "$shipped" "$OUT/tuned.db"; fi
python3 -m maxsim_forge tune --preset default --db "$OUT/tuned.db" --refresh --quiet \
    ${BUDGET:+--time-budget "$BUDGET"} 2>&1 | tee "$OUT/tune.log" | tail -60
python3 -m maxsim_forge db ship "$OUT/tuned.db" --out "maxsim_forge/tuned_db/data/$gpu.db"
echo "== bench"
python3 -m maxsim_forge bench --heldout 30 --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -40
python3 benchmarks/bench_runtime.py --out "$OUT/runtime.json" | tail -40
python3 benchmarks/bench_vllm.py --out "$OUT/vllm.json"
echo "== quantized docs against our fp16 and the peers' int8 and fp8; the NaN rule's cost"
python3 benchmarks/quant_check.py --peers --out "$OUT/quant.json" | grep -v '^maxsim-forge:' | tail -40
python3 benchmarks/nan_rule_cost.py --out "$OUT/nan-rule.json" | grep -v '^maxsim-forge:' | tail -14
echo "== exhaustive tables and the tuner's replay"
python3 benchmarks/collect_exhaustive.py --out "$OUT" ${BUDGET:+--time-budget "$BUDGET"} | tail -5
python3 benchmarks/replay_tuner.py "$OUT" | tail -40
