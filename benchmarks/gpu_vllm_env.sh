# Sourced by the GPU-host scripts: assembles ../shared/gpu-vllm's kit (parts in /tmp/stash, .carry/assemble.sh) into
# /tmp/gpuvllm and puts vLLM 0.26.0 and the plugin (its entry point as a dist-info, no pip) on PYTHONPATH.
export PYTHONUNBUFFERED=1
mkdir -p /tmp/logs
bash .carry/assemble.sh /tmp/stash /tmp/gpuvllm > /tmp/logs/assemble.log 2>&1 || { tail -20 /tmp/logs/assemble.log; exit 1; }
META=/tmp/mtqsite/multi_turboquant-0.1.0.dist-info
mkdir -p $META
printf 'Metadata-Version: 2.1\nName: multi-turboquant\nVersion: 0.1.0\n' > $META/METADATA
printf '[vllm.general_plugins]\nmulti_turboquant = multi_turboquant.vllm.plugin:register\n' > $META/entry_points.txt
export PYTHONPATH=$PWD:/tmp/mtqsite:/tmp/gpuvllm/site:/tmp/gpuvllm/vllm-parent VLLM_USE_FLASHINFER_SAMPLER=0 \
       VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
