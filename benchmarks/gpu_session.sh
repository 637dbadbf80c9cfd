#!/usr/bin/env bash
# One call on a lent GPU (the `device` tool's machine): steps chosen by name, each
# bounded in time, every log and result gathered into $OUT/results.tgz plus a short
# log $OUT/session.log. Run from the project's root with .whl carried (see
# ../shared/device-wheels.sh):
#
#     STEPS="tests verify nan bench" CASES=colbert-1k-fp16,... bash benchmarks/gpu_session.sh
#
# Steps: tests (pytest -m gpu, compiled), qtests (the quantized-docs tests, compiled),
# quant (benchmarks/quant_check.py $QUANT_ARGS), verify (db verify of this GPU's shipped
# database), nan (benchmarks/nan_rule_cost.py), bench (maxsim-forge bench on $CASES with
# $IMPLS, $REPEAT repetitions, $HELDOUT held-out shapes), tune (tune --preset $PRESET
# --refresh into a copy of the shipped database, $BUDGET seconds, then db ship), exhaustive
# (benchmarks/collect_exhaustive.py and the replay), gtests (the gradient, custom-op and
# PyLate tests, compiled), tbench (benchmarks/bench_training.py: a training step against
# the peers), profile (benchmarks/profile_backward.py), host (the same, --host: each step's
# Python under cProfile), train (benchmarks/train_run.py: a short training run, loss curves and chart),
# install (the database the tune step shipped replaces this GPU's shipped one for the steps after it),
# runtime (benchmarks/bench_runtime.py: host cost per call and first calls).
# tune takes $ONLY (label filters, comma-separated: "backward,padded/fp16/dim128/int8 nq1 lq1024") and $TRIALS; bench takes
# CASES="" for the held-out shapes alone.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
RES=/tmp/res
mkdir -p "$RES" "$OUT"
LOG="$OUT/session.log"
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
shipped="maxsim_forge/tuned_db/data/$gpu.db"
say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
pack() { tar czf "$OUT/results.tgz" -C "$RES" . 2>/dev/null; }
trap pack EXIT
say "$gpu; $(python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)')"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader | tee -a "$LOG"
for step in ${STEPS:-tests verify nan bench}; do
  case $step in
    tests)
      say "pytest -m gpu"
      timeout "${TESTS_S:-200}" python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/ >"$RES/tests.log" 2>&1
      echo "exit $?" >>"$RES/tests.log"; tail -4 "$RES/tests.log" | tee -a "$LOG" ;;
    verify)
      say "db verify $shipped"
      timeout "${VERIFY_S:-120}" python3 -m maxsim_forge db verify --db "$shipped" >"$RES/verify.log" 2>&1
      echo "exit $?" >>"$RES/verify.log"; tail -6 "$RES/verify.log" | tee -a "$LOG" ;;
    nan)
      say "NaN rule cost"
      timeout "${NAN_S:-150}" python3 benchmarks/nan_rule_cost.py --rounds "${NAN_ROUNDS:-3}" \
          --out "$RES/nan-rule.json" 2>&1 | tee "$RES/nan-rule.log" | tee -a "$LOG" ;;
    bench)
      say "bench ${CASES-all} heldout ${HELDOUT:-0}"
      impls=(); for i in ${IMPLS:-maxsim-forge flash-maxsim late-interaction-kernels}; do impls+=(--impl "$i"); done
      timeout "${BENCH_S:-300}" python3 -m maxsim_forge bench --cases "${CASES-all}" "${impls[@]}" \
          --repeat "${REPEAT:-5}" --heldout "${HELDOUT:-0}" --out "$RES/bench" >"$RES/bench.log" 2>&1
      echo "exit $?" >>"$RES/bench.log"; tail -40 "$RES/bench.log" | tee -a "$LOG" ;;
    tune)
      say "tune --preset ${PRESET:-default}"
      [ -f "$RES/tuned.db" ] || cp "$shipped" "$RES/tuned.db"
      only=(); IFS=',' read -ra parts <<<"${ONLY:-}"; for o in "${parts[@]}"; do [ -n "$o" ] && only+=(--only "$o"); done
      timeout "${TUNE_S:-300}" python3 -m maxsim_forge tune --preset "${PRESET:-default}" --db "$RES/tuned.db" \
          "${only[@]}" --trials "${TRIALS:-24}" --refresh --quiet --time-budget "${BUDGET:-240}" >>"$RES/tune.log" 2>&1
      echo "exit $?" >>"$RES/tune.log"; tail -20 "$RES/tune.log" | tee -a "$LOG"
      python3 -m maxsim_forge db ship "$RES/tuned.db" --out "$RES/$gpu.db" 2>&1 | tail -3 | tee -a "$LOG" ;;
    exhaustive)
      say "exhaustive tables and replay"
      timeout "${EXH_S:-300}" python3 benchmarks/collect_exhaustive.py --out "$RES/exhaustive" \
          --time-budget "${BUDGET:-240}" 2>&1 | tail -5 | tee -a "$LOG"
      python3 benchmarks/replay_tuner.py "$RES/exhaustive" 2>&1 | tee "$RES/replay.log" | tail -30 | tee -a "$LOG" ;;
    install)
      if [ -f "$RES/$gpu.db" ]; then cp "$RES/$gpu.db" "$shipped" && say "installed the tuned $gpu.db"
      else say "install: no tuned $gpu.db (run tune first)"; fi ;;
    runtime)
      say "host cost per call and first calls"
      timeout "${RUNTIME_S:-150}" python3 benchmarks/bench_runtime.py --out "$RES/runtime.json" >"$RES/runtime.log" 2>&1
      echo "exit $?" >>"$RES/runtime.log"; grep -E "_us\"|first_call_s|source|mode|exit" "$RES/runtime.log" | tee -a "$LOG" ;;
    qtests)
      say "pytest quantized docs, compiled"
      timeout "${QTESTS_S:-150}" python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_quant.py \
          tests/test_fidelity.py >"$RES/qtests.log" 2>&1
      echo "exit $?" >>"$RES/qtests.log"; tail -4 "$RES/qtests.log" | tee -a "$LOG" ;;
    quant)
      say "quantized docs: checked and timed (${QUANT_ARGS:-})"
      timeout "${QUANT_S:-200}" python3 benchmarks/quant_check.py --out "$RES/quant.json" ${QUANT_ARGS:-} 2>&1 \
          | tee "$RES/quant.log" | grep -v "^maxsim-forge:" | tee -a "$LOG" ;;
    gtests)
      say "pytest gradients, custom ops, PyLate, compiled"
      timeout "${GTESTS_S:-200}" python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_grad.py tests/test_ops.py \
          tests/test_pylate.py tests/test_backward_tuning.py >"$RES/gtests.log" 2>&1
      echo "exit $?" >>"$RES/gtests.log"; grep -E "FAILED|ERROR" "$RES/gtests.log" | head -20 | tee -a "$LOG"
      tail -4 "$RES/gtests.log" | tee -a "$LOG" ;;
    profile)
      say "where a training step's time goes"
      timeout "${PROFILE_S:-120}" python3 benchmarks/profile_backward.py >"$RES/profile.log" 2>&1
      echo "exit $?" >>"$RES/profile.log"; grep -E "^==|^  |exit" "$RES/profile.log" | tee -a "$LOG" ;;
    host)
      say "host time of a training step, cProfile (${TCASES:-colbert,colpali})"
      timeout "${HOST_S:-90}" python3 benchmarks/profile_backward.py --host --cases "${TCASES:-colbert,colpali}" \
          >"$RES/host.log" 2>&1
      echo "exit $?" >>"$RES/host.log"; grep -E "^==|exit" "$RES/host.log" | tee -a "$LOG" ;;
    tbench)
      say "training step against the peers (${TCASES:-colbert,colpali})"
      timeout "${TBENCH_S:-240}" python3 benchmarks/bench_training.py --cases "${TCASES:-colbert,colpali}" \
          --repeat "${REPEAT:-5}" --out "$RES/training.json" >"$RES/training.log" 2>&1
      echo "exit $?" >>"$RES/training.log"; tail -30 "$RES/training.log" | tee -a "$LOG" ;;
    train)
      say "training run, maxsim-forge and torch (${TRAIN_STEPS:-300} steps)"
      timeout "${TRAIN_S:-180}" python3 benchmarks/train_run.py --steps "${TRAIN_STEPS:-300}" --out "$RES/train-run.json" \
          --chart "$RES/training-loss.png" >"$RES/train-run.log" 2>&1
      echo "exit $?" >>"$RES/train-run.log"; tail -12 "$RES/train-run.log" | tee -a "$LOG"
      cp "$RES/training-loss.png" "$OUT/" 2>/dev/null ;;
    *) say "unknown step $step" ;;
  esac
done
say done
