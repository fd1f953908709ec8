#!/usr/bin/env bash
# The full quality run of issue 3 on a GPU machine (docs/quality.md, BENCHMARKS.md, "Quality study"):
# `mtq calibrate` on the last 4096 tokens of the corpus, key statistics for positions 0-1023 (the eval's windows;
# with the key centroid of format version 2, and again without it), then `mtq eval quality` with its defaults (20000 tokens in windows of 1024, 32 prompts x 64 greedy
# tokens): every format, peer and K/V pair row (`all`); the calibrated formats with the version-1 calibration
# (`nocentroid`); the calibrated formats with the first position of every sequence (the attention sink) stored
# exactly (`sink`, a policy the plugin does not carry: the bound the centroid approaches). On CUDA the formats
# encode with the Triton store kernel (the same bytes as the reference encoder, far fewer launches).
#
# usage: benchmarks/quality_gpu.sh MODEL_DIR [TEXT_FILE]
#   MODEL_DIR  a Hugging Face causal-LM folder (SmolLM2-135M-Instruct bf16)
#   TEXT_FILE  the corpus; default: Debian base-files' /usr/share/common-licenses (as `mtq eval quality`).
#              Where that folder is missing, write the same text on a Debian/Ubuntu machine with
#              PYTHONPATH=. python3 -c "from multi_turboquant.eval.corpus import load_text; print(load_text()[0], end='')" > licenses.txt
# env: OUT (output folder, default ./quality-gpu), DEVICE (default: cuda if available), JOBS (worker processes,
#      default 12), SMOKE=1 (tiny settings: checks the script on a CPU in a few minutes)
# Output (7 files): $OUT/{turboquant_kv.json,log.txt}, $OUT/all/quality.{json,csv,png}, $OUT/{nocentroid,sink}/quality.json.
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

PAIRS=turboquant35:turboquant25,isoquant4:isoquant3,isoquant4:turboquant25  # keys get the bits
if [ "${SMOKE:-0}" = 1 ]; then
    calib=(--tokens 256 --window 128 --horizon 128)
    size=(--tokens 256 --window 128 --prompts 2 --prompt-tokens 8 --new-tokens 4 --formats isoquant3,turboquant25)
    jobs=${JOBS:-2}
else
    calib=(--tokens 4096 --horizon 1024)  # key statistics for the positions of the eval's 1024-token windows
    size=()
    jobs=${JOBS:-12}
fi

mtq() { PYTHONPATH=. python3 -m multi_turboquant.cli "$@"; }

{
    echo "== $(date -u '+%F %T UTC') $(hostname): python3 $(python3 -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())')"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
    time mtq calibrate "$model" "${text_args[@]}" "${calib[@]}" "${device_args[@]}" --out "$out/turboquant_kv.json"
    time mtq calibrate "$model" "${text_args[@]}" "${calib[@]}" "${device_args[@]}" --no-centroid \
        --out /tmp/turboquant_kv_nocentroid.json
    for run in all nocentroid sink; do
        case $run in
            all) rule=(--calibration "$out/turboquant_kv.json" --pairs "$PAIRS") ;;
            nocentroid) rule=(--calibration /tmp/turboquant_kv_nocentroid.json --calibrated-only --no-peers) ;;
            sink) rule=(--calibration "$out/turboquant_kv.json" --calibrated-only --no-peers --exact-first 1) ;;
        esac
        echo "== $(date -u '+%T UTC') eval quality, $run: ${rule[*]}"
        time mtq eval quality --model "$model" "${text_args[@]}" "${size[@]}" "${device_args[@]}" "${rule[@]}" \
            --jobs "$jobs" --out "$out/$run"
        if [ "$run" != all ]; then rm -f "$out/$run/quality.csv" "$out/$run/quality.png"; fi  # 8 files at most
    done
    echo "== $(date -u '+%T UTC') done"
} 2>&1 | tee "$out/log.txt"
