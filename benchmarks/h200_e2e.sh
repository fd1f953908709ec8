#!/usr/bin/env bash
# benchmarks/e2e_vllm.py on the GPU host (vLLM 0.26.0 from ../shared/gpu-vllm): run from the repo root after the five
# kit parts were copied to /tmp/stash; .carry/assemble.sh is the kit's. Writes to $OUT. One device call per step:
#   DTYPES=auto,isoquant3 bash benchmarks/h200_e2e.sh c        # capacity-bound: SmolLM2, 512 x (1,024 + 1,024 tokens)
#   DTYPES=auto,isoquant3 bash benchmarks/h200_e2e.sh b        # Llama-3-8B shape, random weights, 16 x 32K
#   DTYPES=isoquant3 bash benchmarks/h200_e2e.sh checks        # 256 concurrent, prefix hits, graphs vs eager
#   DTYPES=auto,isoquant3 bash benchmarks/h200_e2e.sh a        # the anchor workload, with perplexity
#   bash benchmarks/h200_e2e.sh prefill                         # prefill-path kernel tests, prefill.py, host_overhead.py
#   DTYPES=auto,isoquant3 bash benchmarks/h200_e2e.sh profile   # benchmarks/profile_step.py per dtype
set -u
STEP=${1:?step: a, b, c, checks, prefill or profile}
source benchmarks/gpu_vllm_env.sh
M=/tmp/gpuvllm/smollm2-135m-hf
TEXTS=/tmp/gpuvllm/bundle/texts
cat $TEXTS/GPL-3 $TEXTS/LGPL-2.1 $TEXTS/MPL-2.0 $TEXTS/Apache-2.0 > /tmp/pool.txt
E="python3 benchmarks/e2e_vllm.py --text /tmp/pool.txt --out /tmp/e2e --dtypes ${DTYPES:-auto,isoquant3}"
case $STEP in
  a) $E --workload a --model $M --ppl-text $TEXTS/GPL-3 --timeout-per ${TIMEOUT:-240} ;;
  b) python3 benchmarks/e2e_vllm.py --make-8b $M --model /tmp/llama3-8b-shape > /dev/null
     $E --workload b --model /tmp/llama3-8b-shape --gpu-mem 0.9 --n ${N:-16} --max-seqs 32 --contexts 32768 \
        --out-len 128 --max-model-len 32768 --max-batched 8192 --timeout-per ${TIMEOUT:-280} ;;
  c) $E --workload c --model $M --gpu-mem ${GPU_MEM:-0.07} --n 512 --max-seqs 512 --contexts 2048 --out-len 1024 \
        --max-model-len 2048 --timeout-per ${TIMEOUT:-200} ;;
  prefill) python3 -m pytest -q -p no:cacheprovider tests/kernels/test_prefill.py 2>&1 | tail -3
     mkdir -p /tmp/e2e && python3 benchmarks/prefill.py | tee /tmp/e2e/prefill.md
     python3 benchmarks/prefill.py --sweep isoquant3 turboquant35 | tee /tmp/e2e/prefill_sweep.md
     python3 benchmarks/host_overhead.py | tee /tmp/e2e/host_overhead.md ;;
  profile) mkdir -p /tmp/e2e
     for d in ${DTYPES//,/ }; do
       python3 benchmarks/profile_step.py --model $M --text /tmp/pool.txt --dtype $d --n 16 > /tmp/e2e/prof_$d.md 2>&1
       grep -A3 "^### " /tmp/e2e/prof_$d.md
     done ;;
  checks) $E --workload checks --model $M --n 256 --max-seqs 256 --max-model-len 4096 --max-batched 512 \
        --timeout-per ${TIMEOUT:-200} ;;
esac
tar -czf "$OUT/e2e_$STEP.tgz" -C /tmp/e2e .
