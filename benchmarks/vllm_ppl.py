"""Perplexity of a text's first N tokens through vLLM (prompt logprobs of one prompt), with our plugin's formats.

    VLLM_CPU_KVCACHE_SPACE=1 python benchmarks/vllm_ppl.py MODEL KV_CACHE_DTYPE [CALIBRATION|-] [N] [TEXT]

Prints the perplexity over all tokens and over the second half (later positions). CALIBRATION is a
`turboquant_kv.json` handed to the plugin (`additional_config={"multi_turboquant": {"calibration": ...}}`), `auto`
(the plugin's automatic calibration) or `-` (none, the default).
"""
from __future__ import annotations

import math
import sys


def main() -> None:
    from vllm import LLM

    from multi_turboquant.vllm.engine import token_nll

    model, dtype = sys.argv[1], sys.argv[2]
    calibration = sys.argv[3] if len(sys.argv) > 3 else "-"
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 4000
    text = sys.argv[5] if len(sys.argv) > 5 else "/usr/share/common-licenses/GPL-3"
    plugin = {"calibration": "none" if calibration == "-" else calibration}
    llm = LLM(model=model, kv_cache_dtype=dtype, max_model_len=max(n + 16, 2048), max_num_batched_tokens=512,
              enable_prefix_caching=False, additional_config={"multi_turboquant": plugin})
    ids = llm.get_tokenizer().encode(open(text, encoding="utf-8").read(), add_special_tokens=False)[:n]
    nll = token_nll(llm, [ids])[0]
    half = len(nll) // 2
    print(f"{dtype} calibration={calibration}: {len(ids)} tokens, PPL {math.exp(sum(nll) / len(nll)):.4f}, "
          f"2nd half {math.exp(sum(nll[half:]) / len(nll[half:])):.4f}")


if __name__ == "__main__":  # vLLM's engine runs in a spawned process
    main()
