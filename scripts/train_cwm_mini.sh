#!/usr/bin/env bash
# The whole cwm-mini recipe from scratch (docs/cwm-mini.md): tokenizer, data, four training
# phases, evaluation. Every step resumes: rerun the script after a kill and it goes on where it
# stopped (dataset builds resume from their manifests, training from its last checkpoint, the
# evaluations from their results files). ~2 h 10 min on a quiet 2-core CPU (training uses both
# cores: train.threads = 2; on a machine busy with other work 1 thread can be faster).
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
build --source real:size=1 --n 12000 --seed 1 --out "$OUT/data/s1"
build --source real:size=2 --n 24000 --seed 2 --out "$OUT/data/s2"
build --source real:size=3 --n 12000 --seed 3 --out "$OUT/data/s3"
build --source dir:stdlib --out "$OUT/data/stdlib"
build --source real:size=2 --n 16000 --seed 4 --out "$OUT/data/s4"   # fresh programs for phase 4
build --source real:size=3 --n 8000 --seed 5 --out "$OUT/data/s5"

# 3. packing: whole documents only (a trace is never cut from its program)
pack() { [ -f "$1/meta.json" ] || $CWM data pack --quiet --tokenizer "$OUT/tok" --whole-docs --out "$@"; }
pack "$OUT/packed/valid" --seq-len 1025 --input valid="$OUT/data/valid"
pack "$OUT/packed/valid2" --seq-len 2049 --input valid="$OUT/data/valid"
pack "$OUT/packed/phase1" --seq-len 1025 --input s1="$OUT/data/s1:0.4" --input s2="$OUT/data/s2:0.6"
pack "$OUT/packed/phase2" --seq-len 2049 --input s3="$OUT/data/s3:0.5" --input s2="$OUT/data/s2:0.35" \
    --input s1="$OUT/data/s1:0.13" --input stdlib="$OUT/data/stdlib:0.02"
pack "$OUT/packed/phase4" --seq-len 2049 --input s4="$OUT/data/s4:0.55" --input s5="$OUT/data/s5:0.43" \
    --input stdlib="$OUT/data/stdlib:0.02"

# 4. training: phase 1 (short traces, 1,024-token rows), phase 2 from its weights (longer traces),
#    phase 3 from phase 2's (more of phase 2's data, in a new order), phase 4 from phase 3's (fresh programs)
train() {
    local config=$1 run=$2
    [ -d "$run/final" ] && return 0
    local resume=
    [ -d "$run/checkpoints" ] && resume=--resume
    $CWM train --config "$config" $resume ${THREADS:+train.threads=$THREADS}
}
train configs/cwm-mini.toml "$OUT/phase1"
train configs/cwm-mini-phase2.toml "$OUT/phase2"
train configs/cwm-mini-phase3.toml "$OUT/phase3"
train configs/cwm-mini-phase4.toml "$OUT/phase4"

# 5. evaluation on the held-out set and CruxEval (results files resume)
#    (each also with --constrain-actions: the actions kept to the program's lines)
M="$OUT/phase4/final"
for mode in teacher free; do
    $CWM eval trace --data "$OUT/data/heldout" --mode $mode --model "$M" --out "$OUT/eval/heldout-$mode.json"
    $CWM eval trace --data "$OUT/data/heldout" --mode $mode --model "$M" --constrain-actions \
        --out "$OUT/eval/heldout-$mode-constrained.json"
done
$CWM eval cruxeval --mode trace --model "$M" --limit 100 --out "$OUT/eval/cruxeval-trace.json"
$CWM eval cruxeval --mode trace --model "$M" --limit 100 --constrain-actions --out "$OUT/eval/cruxeval-trace-constrained.json"
$CWM eval cruxeval --mode direct --model "$M" --limit 200 --out "$OUT/eval/cruxeval-direct.json"
