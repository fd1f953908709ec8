"""The `mtq_mmap` vLLM load format: registration, options, and the same weights as vLLM's own iterator."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
st = pytest.importorskip("safetensors.torch")

from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader import get_model_loader
from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator

from multi_turboquant.loader.vllm_loader import LOAD_FORMAT, MtqMmapModelLoader, register

SMOLLM2 = Path(os.environ.get("MTQ_SMOLLM2_DIR", "~/.cache/multi-turboquant/models/smollm2-135m-bf16")).expanduser()


def test_register_is_idempotent_and_selects_our_loader() -> None:
    assert register() is register() is MtqMmapModelLoader
    loader = get_model_loader(LoadConfig(load_format=LOAD_FORMAT, model_loader_extra_config={"chunk_mib": 8}))
    assert isinstance(loader, MtqMmapModelLoader)
    assert loader.chunk_bytes == 8 << 20 and loader.load_config.load_format == "safetensors"


@pytest.mark.parametrize(
    "extra", [{"chunk_mib": 0}, {"num_buffers": "2"}, {"device": 3}, {"chunk_mib": True}, {"device": "nonsense"}]
)
def test_bad_options(extra: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=LOAD_FORMAT):
        MtqMmapModelLoader(LoadConfig(load_format=LOAD_FORMAT, model_loader_extra_config=extra))


def test_unknown_option_still_rejected_by_vllm() -> None:
    with pytest.raises(ValueError, match="Unexpected extra config keys"):
        MtqMmapModelLoader(LoadConfig(load_format=LOAD_FORMAT, model_loader_extra_config={"chunk": 1}))


def test_weights_match_vllm_iterator(tmp_path: Path) -> None:
    for i in range(2):
        st.save_file({f"l{i}.w": torch.randn(16, 8).bfloat16(), f"l{i}.b": torch.randn(8)}, str(tmp_path / f"m{i}.safetensors"))
    loader = MtqMmapModelLoader(LoadConfig(load_format=LOAD_FORMAT))
    source = MtqMmapModelLoader.Source(str(tmp_path), None, prefix="p.")
    ours = dict(loader._get_weights_iterator(source))
    theirs = dict(safetensors_weights_iterator(sorted(str(p) for p in tmp_path.glob("*.safetensors")), False))
    assert ours.keys() == {"p." + k for k in theirs}
    assert all(torch.equal(ours["p." + k], v) for k, v in theirs.items())


@pytest.mark.skipif(not (SMOLLM2 / "model.safetensors").is_file() or os.environ.get("MTQ_VLLM_GENERATE") != "1",
                    reason="slow (2 vLLM engines): set MTQ_VLLM_GENERATE=1 and convert SmolLM2 (docs/loader.md)")
def test_same_greedy_text_as_default_loader() -> None:
    def generate(fmt: str) -> list[str]:
        cmd = [sys.executable, "-m", "multi_turboquant.loader.vllm_check", str(SMOLLM2), "--load-format", fmt]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
        return json.loads(out.strip().splitlines()[-1])["texts"]

    assert generate(LOAD_FORMAT) == generate("safetensors")
