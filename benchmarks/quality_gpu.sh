#!/usr/bin/env bash
# The full quality run of issue 3 on a GPU machine (docs/quality.md, BENCHMARKS.md, "Quality study"):
# `mtq calibrate` on the last 4096 tokens of the corpus, then `mtq eval quality` with its defaults (20000
# tokens in windows of 1024, 32 prompts x 64 greedy tokens), every format, peer and the K/V pair rows, three
# times: no policy; the first position of every sequence (the attention sink) stored exactly; layer 19 in bf16.
# Each policy applies to every row alike.
#
# usage: benchmarks/quality_gpu.sh MODEL_DIR [TEXT_FILE]
#   MODEL_DIR  a Hugging Face causal-LM folder (SmolLM2-135M-Instruct bf16)
#   TEXT_FILE  the corpus; default: Debian base-files' /usr/share/common-licenses (as `mtq eval quality`).
#              Where that folder is missing, write the same text on a Debian/Ubuntu machine with
#              PYTHONPATH=. python3 -c "from multi_turboquant.eval.corpus import load_text; print(load_text()[0], end='')" > licenses.txt
# env: OUT (output folder, default ./quality-gpu), DEVICE (default: cuda if available), JOBS (worker processes,
#      default 12), SMOKE=1 (tiny settings: checks the script on a CPU in a few minutes)
# Output (7 files): $OUT/{turboquant_kv.json,log.txt}, $OUT/all/quality.{json,csv,png}, $OUT/{sink,keep}/quality.json.
# Needs python3 with torch and transformers (matplotlib for the PNGs); no `mtq` on PATH, no network.
set -euo pipefail

model=$(realpath "${1:?usage: $0 MODEL_DIR [TEXT_FILE]}")
text_args=()
if [ -n "${2:-}" ]; then text_args=(--text "$(realpath "$2")"); fi
out=$(realpath -m "${OUT:-quality-gpu}")
device_args=()
if [ -n "${DEVICE:-}" ]; then device_args=(--device "$DEVICE"); fi
cd "$(dirname "$0")/.."
mkdir -p "$out"

KEEP_BF16=19     # the costliest layer of the study's scan on calibration text (BENCHMARKS.md, "Quality study")
PAIRS=turboquant35:turboquant25,isoquant4:isoquant3,isoquant4:turboquant25  # keys get the bits
if [ "${SMOKE:-0}" = 1 ]; then
    calib=(--tokens 256 --window 128)
    size=(--tokens 256 --window 128 --prompts 2 --prompt-tokens 8 --new-tokens 4 --formats isoquant3,turboquant25)
    jobs=${JOBS:-2}
else
    calib=(--tokens 4096)
    size=()
    jobs=${JOBS:-12}
fi

mtq() { PYTHONPATH=. python3 -m multi_turboquant.cli "$@"; }

{
    echo "== $(date -u '+%F %T UTC') $(hostname): python3 $(python3 -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())')"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
    time mtq calibrate "$model" "${text_args[@]}" "${calib[@]}" "${device_args[@]}" --out "$out/turboquant_kv.json"
    for policy in all sink keep; do
        case $policy in
            all) rule=() ;;
            sink) rule=(--exact-first 1) ;;
            keep) rule=(--keep-bf16 "$KEEP_BF16") ;;
        esac
        echo "== $(date -u '+%T UTC') eval quality, policy: ${rule[*]:-none}"
        time mtq eval quality --model "$model" "${text_args[@]}" "${size[@]}" "${device_args[@]}" "${rule[@]}" \
            --calibration "$out/turboquant_kv.json" --pairs "$PAIRS" --jobs "$jobs" --out "$out/$policy"
        if [ "$policy" != all ]; then rm -f "$out/$policy/quality.csv" "$out/$policy/quality.png"; fi  # 8 files at most
    done
    echo "== $(date -u '+%T UTC') done"
} 2>&1 | tee "$out/log.txt"
