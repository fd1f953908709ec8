"""vLLM plugin: the six formats as `kv_cache_dtype` values (entry point `vllm.general_plugins`)."""
