#!/usr/bin/env bash
# Cross-validated figures of failure-pattern learning on the development trajectories.
# Usage: bench/learning/evaluate_dev_data.sh DATA_DIR [OUT_DIR]
#   DATA_DIR holds tau_bench_airline_gpt4o/, swebench_verified_minisweagent_gemini3pro/ and
#   who_and_when_algorithm_generated/ (see docs/learning.md). OUT_DIR defaults to docs/results.
set -euo pipefail
DATA=${1:?usage: $0 DATA_DIR [OUT_DIR]}
OUT=${2:-docs/results}
IMMUNITY=${IMMUNITY:-immunity}
mkdir -p "$OUT"
TAU="$DATA/tau_bench_airline_gpt4o/gpt-4o-airline.json.gz"
SWE="$DATA/swebench_verified_minisweagent_gemini3pro/trajs.jsonl.gz"
WW="$DATA/who_and_when_algorithm_generated/traces.jsonl.gz"

# tau-bench airline: 5 folds split by task_id
$IMMUNITY eval --cv --format tau-bench "$TAU" --split task --out "$OUT/tau-bench.json" | tee "$OUT/tau-bench.txt"
# SWE-bench Verified: 5 folds split by instance, then by repository
$IMMUNITY eval --cv --format mini-swe-agent "$SWE" --split task --out "$OUT/swebench-by-task.json" \
  | tee "$OUT/swebench-by-task.txt"
$IMMUNITY eval --cv --format mini-swe-agent "$SWE" --split repo --out "$OUT/swebench-by-repo.json" \
  | tee "$OUT/swebench-by-repo.txt"
# Who&When (failures only): a pack learned on tau-bench + SWE-bench, scored on another domain;
# only "alarm at or before the decisive step" and explain accuracy are meaningful here.
PACK="${TMPDIR:-/tmp}/immunity-dev-tau-swe.json"  # derived from the data: not kept in the repository
$IMMUNITY learn "$TAU" "$SWE" --all-domains --out "$PACK" --name dev-tau-swe | tee "$OUT/dev-pack.txt"
$IMMUNITY eval --pack "$PACK" --format who-and-when "$WW" --out "$OUT/who-and-when.json" \
  | tee "$OUT/who-and-when.txt"

# Issue 15: content signals and models (logistic, trees), leave-one-source-out, explain baselines.
$IMMUNITY eval --cv --format tau-bench "$TAU" --split task --model logistic --out "$OUT/tau-bench-content-logistic.json" \
  | tee "$OUT/tau-bench-content-logistic.txt"
$IMMUNITY eval --cv --format mini-swe-agent "$SWE" --split task --model auto \
  --out "$OUT/swebench-by-task-content-auto.json" | tee "$OUT/swebench-by-task-content-auto.txt"
$IMMUNITY eval --cv "$TAU" "$SWE" --split source --out "$OUT/leave-one-source-out.json" \
  | tee "$OUT/leave-one-source-out.txt"
${PYTHON:-python} "$(dirname "$0")/explain_baselines.py" --format who-and-when "$WW" \
  | tee "$OUT/who-and-when-explain-signals.txt"

# Issue 15, second round: learn throughput (one line; CPU time carries over, wall time depends on the load)
uv run python bench/learning/learn_throughput.py "$TAU" "$SWE" | tee "$OUT/learn-throughput.txt"

# Issue 15, third round: sequence distance to runs of similar tasks (on by default; --sequence-k 0 is the
# ablation) and the packaged static encoder (immunity-static, --embedder static)
$IMMUNITY eval --cv --format tau-bench "$TAU" --split task --out "$OUT/tau-bench-sequence.json" \
  | tee "$OUT/tau-bench-sequence.txt"
$IMMUNITY eval --cv --format tau-bench "$TAU" --split task --sequence-k 0 --out "$OUT/tau-bench-no-sequence.json" \
  | tee "$OUT/tau-bench-no-sequence.txt"
$IMMUNITY eval --cv --format tau-bench "$TAU" --split task --model trees --out "$OUT/tau-bench-sequence-trees.json" \
  | tee "$OUT/tau-bench-sequence-trees.txt"
$IMMUNITY eval --cv --format tau-bench "$TAU" --split task --embedder static --out "$OUT/tau-bench-static.json" \
  | tee "$OUT/tau-bench-static.txt"
$IMMUNITY eval --cv --format mini-swe-agent "$SWE" --split task --out "$OUT/swebench-by-task-sequence.json" \
  | tee "$OUT/swebench-by-task-sequence.txt"
$IMMUNITY eval --cv --format mini-swe-agent "$SWE" --split task --sequence-k 0 \
  --out "$OUT/swebench-by-task-no-sequence.json" | tee "$OUT/swebench-by-task-no-sequence.txt"
$IMMUNITY eval --cv --format mini-swe-agent "$SWE" --split task --embedder static \
  --out "$OUT/swebench-by-task-static.json" | tee "$OUT/swebench-by-task-static.txt"
$IMMUNITY eval --cv --format mini-swe-agent "$SWE" --split repo --out "$OUT/swebench-by-repo-sequence.json" \
  | tee "$OUT/swebench-by-repo-sequence.txt"
uv run python bench/learning/step_cost.py | tee "$OUT/step-cost-sequence.txt"
$IMMUNITY eval --cv --format mini-swe-agent "$SWE" --split repo --embedder static \
  --out "$OUT/swebench-by-repo-static.json" | tee "$OUT/swebench-by-repo-static.txt"

# Issue 15, fifth round: step-text nearest neighbours (A), population-relative counters (B) and AUROC at
# steps 5/10/20/30 (C), a prototype next to the current pack's held-out scores (same folds). Not in learning.
SC="${TMPDIR:-/tmp}/immunity-step-text"; mkdir -p "$SC"
$IMMUNITY eval --cv --format tau-bench "$TAU" --split task --scores-out "$SC/tau.jsonl" > /dev/null
$IMMUNITY eval --cv --format mini-swe-agent "$SWE" --split task --scores-out "$SC/swe.jsonl" > /dev/null
$IMMUNITY eval --cv "$TAU" "$SWE" --split source --calibrate unlabelled --scores-out "$SC/loso.jsonl" > /dev/null
OPENBLAS_NUM_THREADS=1 uv run python bench/learning/step_text_neighbours.py "$TAU" "$SWE" --scores-tau "$SC/tau.jsonl" \
  --scores-swe "$SC/swe.jsonl" --scores-loso "$SC/loso.jsonl" --cache "$SC/emb" --out "$OUT/step-text-neighbours"
OPENBLAS_NUM_THREADS=1 uv run python bench/learning/step_text_cost.py "$TAU" "$SWE" | tee "$OUT/step-text-cost.txt"
