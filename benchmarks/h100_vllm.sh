#!/usr/bin/env bash
# The H100 session behind BENCHMARKS.md's kernel and vLLM 0.26.0 numbers. Runs on the GPU host from the repo root after
# the five kit parts of ../shared/gpu-vllm (prepare.sh) were copied to /tmp/stash; .carry/ holds assemble.sh and
# anchor_bench.py from that kit. Writes to $OUT. Two steps, each one device call (10-minute limit):
#   bash benchmarks/h100_vllm.sh sweep          # assemble, warm Triton's cache, the decode attention sweep
#   bash benchmarks/h100_vllm.sh e2e DTYPES     # kernel checks, then vLLM 0.26.0 end to end (anchor_bench, graphs)
#   bash benchmarks/h100_vllm.sh v2             # kernel checks (with key centroids), the loader against vLLM's,
#                                                # decode with and without a key centroid at the target shape
#   bash benchmarks/h100_vllm.sh quality        # benchmarks/quality_gpu.sh on the SmolLM2 model (.carry/licenses.txt)
#   bash benchmarks/h100_vllm.sh calib DTYPES   # vLLM end to end with the 20k run's calibration file (key centroids;
#                                                # anchor_bench passes $ANCHOR_ADDITIONAL_CONFIG to LLM)
set -u
STEP=${1:-sweep}
source benchmarks/gpu_vllm_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
FORMATS="isoquant3 isoquant4 planarquant3 planarquant4 turboquant25 turboquant35"
HEAD_DIMS=${HEAD_DIMS:-64 128}  # both take longer than one call: run HEAD_DIMS=64, then HEAD_DIMS=128
checks() {  # every format's correctness check, one process per format, in parallel
  local pids=() rc=0
  for f in $FORMATS; do
    timeout 300 python3 benchmarks/attention.py --check --check-only --formats $f > /tmp/logs/check_$f.txt 2>&1 &
    pids+=($!)
  done; for p in "${pids[@]}"; do wait $p || rc=1; done
  cat /tmp/logs/check_*.txt > "$OUT/checks.md"; grep -h "FAIL\|passed" /tmp/logs/check_*.txt; echo "check rc=$rc"
}
if [ "$STEP" = v2 ]; then
  checks
  python3 benchmarks/loader.py --make-synthetic /tmp/mtq-bench --size-gib 4 > /dev/null
  for ckpt in /tmp/mtq-bench /tmp/gpuvllm/smollm2-135m-hf; do
    timeout 200 python3 benchmarks/loader.py $ckpt --device cuda --repeats 5 --json "$OUT/loader_$(basename $ckpt).json" \
      2>&1 | tail -20 | tee -a "$OUT/loader.md"
  done
  for cen in "" --key-centroid; do
    timeout 150 python3 benchmarks/attention.py --head-dims 128 --gqa 8 --contexts 16384 --batches 8 --reps 20 \
      --formats isoquant3 isoquant4 turboquant25 turboquant35 $cen 2>&1 | grep -v "^#" | tee -a "$OUT/centroid_timing.md"
  done
elif [ "$STEP" = calib ]; then
  export ANCHOR_ADDITIONAL_CONFIG="{\"multi_turboquant\": {\"calibration\": \"$PWD/benchmarks/results/quality-20k-h100/turboquant_kv.json\"}}"
  timeout 560 python3 .carry/anchor_bench.py --model /tmp/gpuvllm/smollm2-135m-hf --text-dir /tmp/gpuvllm/bundle/texts \
      --out /tmp/anchor_cal --mode graphs --quick --dtypes "${2:-isoquant4,isoquant3}" --timeout-per 240 2>&1 | tail -30 \
      > "$OUT/anchor_calib.md"
  cat "$OUT/anchor_calib.md"; cp /tmp/anchor_cal/res_*.json "$OUT/" 2>/dev/null
  # the kit's anchor_bench.py passes no additional_config; the copy in .carry reads $ANCHOR_ADDITIONAL_CONFIG into
  # LLM(additional_config=...) and records it in each result
  grep -q '"additional_config"' /tmp/anchor_cal/res_*.json \
    || echo "WARNING: anchor_bench.py ignored ANCHOR_ADDITIONAL_CONFIG: these runs are NOT calibrated"
elif [ "$STEP" = quality ]; then
  OUT="$OUT/q" JOBS=${JOBS:-12} timeout 570 bash benchmarks/quality_gpu.sh /tmp/gpuvllm/smollm2-135m-hf .carry/licenses.txt \
    | grep -v "Loading weights" | tail -60
elif [ "$STEP" = sweep ]; then
  # compile every decode configuration of the sweep in parallel (one process per format), then time sequentially
  pids=()
  for f in $FORMATS; do
    timeout 240 python3 benchmarks/attention.py --formats $f --head-dims $HEAD_DIMS --gqa 4 8 --contexts 1024 \
      --batches 1 --reps 1 --no-store > /tmp/logs/warm_$f.txt 2>&1 & pids+=($!)
  done; for p in "${pids[@]}"; do wait $p; done
  timeout 420 python3 benchmarks/attention.py --head-dims $HEAD_DIMS --gqa 4 8 --contexts 1024 4096 16384 65536 \
    --batches 1 8 32 --reps 10 --json "$OUT/attention.json" 2>&1 | tee "$OUT/attention.md" | grep -v "^#"
  echo "sweep rc=${PIPESTATUS[0]}"
else
  checks
  timeout 420 python3 .carry/anchor_bench.py --model /tmp/gpuvllm/smollm2-135m-hf --text-dir /tmp/gpuvllm/bundle/texts \
      --out /tmp/anchor --mode graphs --quick --dtypes "${2:-auto,isoquant3}" --timeout-per 200 2>&1 | tail -40 > "$OUT/anchor.md"
  cat "$OUT/anchor.md"; cp -r /tmp/anchor /tmp/logs/ 2>/dev/null; tar -czf "$OUT/logs.tgz" -C /tmp/logs .
fi
