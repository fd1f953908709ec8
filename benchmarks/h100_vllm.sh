#!/usr/bin/env bash
# The H100 session behind BENCHMARKS.md's kernel and vLLM 0.26.0 numbers. Runs on the GPU host from the repo root after
# the five kit parts of ../shared/gpu-vllm (prepare.sh) were copied to /tmp/stash; .carry/ holds assemble.sh and
# anchor_bench.py from that kit. Writes to $OUT. Two steps, each one device call (10-minute limit):
#   bash benchmarks/h100_vllm.sh sweep          # assemble, warm Triton's cache, the decode attention sweep
#   bash benchmarks/h100_vllm.sh e2e DTYPES     # kernel checks, then vLLM 0.26.0 end to end (anchor_bench, graphs)
set -u
STEP=${1:-sweep}
export PYTHONUNBUFFERED=1
mkdir -p /tmp/logs
bash .carry/assemble.sh /tmp/stash /tmp/gpuvllm > /tmp/logs/assemble.log 2>&1 || { tail -20 /tmp/logs/assemble.log; exit 1; }
# the plugin's entry point without pip: a dist-info next to the source tree on PYTHONPATH
META=/tmp/mtqsite/multi_turboquant-0.1.0.dist-info
mkdir -p $META
printf 'Metadata-Version: 2.1\nName: multi-turboquant\nVersion: 0.1.0\n' > $META/METADATA
printf '[vllm.general_plugins]\nmulti_turboquant = multi_turboquant.vllm.plugin:register\n' > $META/entry_points.txt
export PYTHONPATH=$PWD:/tmp/mtqsite:/tmp/gpuvllm/site:/tmp/gpuvllm/vllm-parent VLLM_USE_FLASHINFER_SAMPLER=0 \
       VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
FORMATS="isoquant3 isoquant4 planarquant3 planarquant4 turboquant25 turboquant35"
HEAD_DIMS=${HEAD_DIMS:-64 128}  # both take longer than one call: run HEAD_DIMS=64, then HEAD_DIMS=128
if [ "$STEP" = sweep ]; then
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
  pids=(); rc=0
  for f in $FORMATS; do
    timeout 200 python3 benchmarks/attention.py --check --check-only --formats $f > $OUT/check_$f.txt 2>&1 & pids+=($!)
  done; for p in "${pids[@]}"; do wait $p || rc=1; done; grep -h "FAIL\|passed" $OUT/check_*.txt; echo "check rc=$rc"
  timeout 420 python3 .carry/anchor_bench.py --model /tmp/gpuvllm/smollm2-135m-hf --text-dir /tmp/gpuvllm/bundle/texts \
      --out /tmp/anchor --mode graphs --quick --dtypes "${2:-auto,isoquant3}" --timeout-per 200 2>&1 | tail -40 > "$OUT/anchor.md"
  cat "$OUT/anchor.md"; cp -r /tmp/anchor /tmp/logs/ 2>/dev/null; tar -czf "$OUT/logs.tgz" -C /tmp/logs .
fi
