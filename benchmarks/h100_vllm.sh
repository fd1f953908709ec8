#!/usr/bin/env bash
# The H100 session behind BENCHMARKS.md's kernel and vLLM 0.26.0 numbers. Runs on the GPU host from the repo root after
# the five kit parts of ../shared/gpu-vllm (prepare.sh) were copied to /tmp/stash; .carry/ holds assemble.sh and
# anchor_bench.py from that kit. Writes to $OUT. Usage: bash benchmarks/h100_vllm.sh [ANCHOR_DTYPES]
set -u
DTYPES=${1:-auto,isoquant3,turboquant35}
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
python3 -c "import vllm, torch, triton; from multi_turboquant.vllm import plugin; plugin.register(); \
print('vllm', vllm.__version__, 'torch', torch.__version__, 'triton', triton.__version__, plugin.registered_kv_cache_dtypes())"
# kernel correctness, one process per format (compile-bound), then the decode timing sweep
pids=(); rc=0
for f in isoquant3 isoquant4 planarquant3 planarquant4 turboquant25 turboquant35; do
  timeout 200 python3 benchmarks/attention.py --check --check-only --formats $f > /tmp/logs/check_$f.txt 2>&1 & pids+=($!)
done; for p in "${pids[@]}"; do wait $p || rc=1; done; tail -n 3 /tmp/logs/check_*.txt; echo "check rc=$rc"
timeout 150 python3 benchmarks/attention.py --head-dims 128 --gqa 8 --contexts 2048 16384 65536 --batches 8 32 \
  --reps 10 --no-store --json "$OUT/attention.json" 2>&1 | tee "$OUT/attention.md"; echo "sweep rc=$?"
# end to end: vLLM 0.26.0 with the plugin (Triton kernels), CUDA graphs, vs auto
timeout 270 python3 .carry/anchor_bench.py --model /tmp/gpuvllm/smollm2-135m-hf --text-dir /tmp/gpuvllm/bundle/texts \
    --out /tmp/anchor --mode graphs --quick --dtypes "$DTYPES" --timeout-per 110 2>&1 | tail -40 > "$OUT/anchor.md"
cat "$OUT/anchor.md"; cp -r /tmp/anchor /tmp/logs/ 2>/dev/null; tar -czf "$OUT/logs.tgz" -C /tmp/logs .
