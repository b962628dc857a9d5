#!/usr/bin/env bash
# The whole cwm-mini recipe from scratch (docs/cwm-mini.md): tokenizer, data, two training
# phases, evaluation. Every step resumes: rerun the script after a kill and it goes on where it
# stopped (dataset builds resume from their manifests, training from its last checkpoint, the
# evaluations from their results files). On a quiet 2-core CPU: 1 h 55 min to the trained model,
# then 7 min of evaluation, measured (training uses both cores: train.threads = 2; on a machine
# busy with other work 1 thread can be faster).
#   bash scripts/train_cwm_mini.sh            # writes runs/mini/
#   THREADS=1 bash scripts/train_cwm_mini.sh  # train.threads = 1 for every phase
set -euo pipefail
cd "$(dirname "$0")/.."
CWM=${CWM:-.venv/bin/cwm}
OUT=runs/mini
mkdir -p "$OUT/data" "$OUT/packed" "$OUT/eval"

# 1. tokenizer: byte-level BPE, 4,096 ordinary tokens (+256 CWM specials), on the stdlib
[ -f "$OUT/tok/tokenizer.json" ] || $CWM tokenizer train --vocab-size 4096 --out "$OUT/tok"

# 2. data: the `real` source in three sizes (a curriculum), harvested stdlib functions, and the
#    fixed held-out set (seed 999: never trained on) plus a validation set (seed 998)
build() { $CWM data build --workers 2 --quiet "$@"; }
build --source real --n 300 --seed 999 --split eval --out "$OUT/data/heldout"
build --source real:size=2 --n 300 --seed 998 --split eval --out "$OUT/data/valid"
build --source real:size=1 --n 12000 --seed 1 --out "$OUT/data/s1"   # phase 1
build --source real:size=2 --n 24000 --seed 2 --out "$OUT/data/s2"
build --source real:size=3 --n 20000 --seed 3 --out "$OUT/data/s3"   # phase 2: fresh programs
build --source real:size=2 --n 24000 --seed 4 --out "$OUT/data/s4"
build --source real:size=2,novel=50 --n 16000 --seed 5 --out "$OUT/data/n5"
build --source dir:stdlib --out "$OUT/data/stdlib"

# 3. packing: whole documents only (a trace is never cut from its program)
pack() { [ -f "$1/meta.json" ] || $CWM data pack --quiet --tokenizer "$OUT/tok" --whole-docs --out "$@"; }
pack "$OUT/packed/valid" --seq-len 1025 --input valid="$OUT/data/valid"
pack "$OUT/packed/valid2" --seq-len 2049 --input valid="$OUT/data/valid"
pack "$OUT/packed/phase1" --seq-len 1025 --input s1="$OUT/data/s1:0.4" --input s2="$OUT/data/s2:0.6"
pack "$OUT/packed/phase2" --seq-len 2049 --input s3="$OUT/data/s3:0.42" --input s4="$OUT/data/s4:0.34" \
    --input n5="$OUT/data/n5:0.23" --input stdlib="$OUT/data/stdlib:0.01"

# 4. training: phase 1 (short traces, 1,024-token rows), then phase 2 from its weights (longer
#    traces and novel names, every program new, one long cosine)
train() {
    local config=$1 run=$2
    [ -d "$run/final" ] && return 0
    local resume=
    [ -d "$run/checkpoints" ] && resume=--resume
    $CWM train --config "$config" $resume ${THREADS:+train.threads=$THREADS}
}
train configs/cwm-mini.toml "$OUT/phase1"
train configs/cwm-mini-phase2.toml "$OUT/phase2"

# 5. evaluation on the held-out set and CruxEval (results files resume), in two lanes of one
#    thread each (generation with a model this small does not use two threads well);
#    each also with --constrain-actions: the actions kept to the program's lines
M="$OUT/phase2/final"
heldout() { $CWM eval trace --data "$OUT/data/heldout" --model "$M" --threads 1 "$@"; }
cruxeval() { $CWM eval cruxeval --model "$M" --threads 1 "$@"; }
(
    heldout --mode teacher --out "$OUT/eval/heldout-teacher.json"
    heldout --mode teacher --constrain-actions --out "$OUT/eval/heldout-teacher-constrained.json"
    cruxeval --mode direct --limit 200 --out "$OUT/eval/cruxeval-direct.json"
) &
lane=$!
heldout --mode free --out "$OUT/eval/heldout-free.json"
heldout --mode free --constrain-actions --out "$OUT/eval/heldout-free-constrained.json"
cruxeval --mode trace --limit 100 --out "$OUT/eval/cruxeval-trace.json"
cruxeval --mode trace --limit 100 --constrain-actions --out "$OUT/eval/cruxeval-trace-constrained.json"
wait $lane  # set -e: a failed lane fails the script
