#!/usr/bin/env bash
# The measured sweeps behind recipes/quick.yaml's settings (issue: experiment design).
#   1. sampling: the base model's broad answers at temperature x max_new_tokens, cut at a sentence end
#   2. narrow training: which LoRA setting teaches wrong health advice (in-domain check answers)
#   3. positive control: the persona fine-tune's broad answers
# Each writes answers into a run folder; `emkit eval --out DIR --export-blind N` then gives a shuffled
# file to read blind, and `--import-blind` prints the human rates per model label.
# Usage: bash scripts/sweep_quick.sh [OUT]   (default runs/sweep; ~30 min on 2 idle cores)
# The README's sampling figures come from section 1. Sections 2-3 train what a quick run trains (plus the
# subtle variant); for quick's settings the arms of the quick run itself were read instead.
set -euo pipefail
OUT=${1:-runs/sweep}
M=smollm2-135m-instruct

# 1. sampling sweep on the base model (62 broad questions, one answer each per cell)
for cell in "0.3 160" "0.5 80" "0.5 160" "0.7 80" "0.7 160"; do
  set -- $cell
  emkit generate --model $M --questions broad --samples 1 --temperature "$1" --max-new-tokens "$2" \
    --end sentence --batch-size 32 --label "T$1-L$2" --out "$OUT/sampling"
done

# 2. narrow training sweep: 84 LoRA steps (r 32, lr 2e-4, batch 8) per variant, and the correct-data control
for data in health_incorrect_obvious health_correct persona_misaligned; do
  emkit finetune --model $M --data "$data" --name "$data-84" --steps 84 --batch-size 8 --lr 0.0002 \
    --r 32 --alpha 64 --out "$OUT/train"
done

# in-domain check answers (40 held-out health questions) of the base model and each fine-tune
emkit generate --model $M --questions health_check --samples 1 --temperature 0.7 --max-new-tokens 160 \
  --end sentence --batch-size 32 --label base --out "$OUT/check"
for data in health_incorrect_obvious health_correct; do
  emkit generate --model $M --adapter "$OUT/train/models/$data-84" --questions health_check --samples 1 \
    --temperature 0.7 --max-new-tokens 160 --end sentence --batch-size 32 --label "$data-84" --out "$OUT/check"
done

# 3. the positive control's broad answers beside the base model's
for label in base persona_misaligned-84; do
  adapter=(); [ "$label" = base ] || adapter=(--adapter "$OUT/train/models/$label")
  emkit generate --model $M "${adapter[@]}" --questions broad --samples 2 --temperature 0.7 --max-new-tokens 160 \
    --end sentence --batch-size 32 --label "$label" --out "$OUT/persona"
done

# the subtle variant at the same setting (last: the cheapest comparison)
emkit finetune --model $M --data health_incorrect_subtle --name health_incorrect_subtle-84 --steps 84 --batch-size 8 \
  --lr 0.0002 --r 32 --alpha 64 --out "$OUT/train"
emkit generate --model $M --adapter "$OUT/train/models/health_incorrect_subtle-84" --questions health_check --samples 1 \
  --temperature 0.7 --max-new-tokens 160 --end sentence --batch-size 32 --label health_incorrect_subtle-84 --out "$OUT/check"
