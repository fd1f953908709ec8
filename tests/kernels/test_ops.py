"""Device dispatch between the Triton kernels and the torch reference."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from multi_turboquant.kernels import naive, ops, triton_attention, triton_store  # noqa: E402
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402


def test_cpu_tensors_use_the_reference():
    layout = KVCacheLayout("isoquant3", "isoquant3", 64, 2, 16)
    assert ops.backend_for(torch.zeros(1, dtype=torch.uint8), "triton_attention", layout) is naive


@pytest.mark.parametrize("key, value, head_dim, ok", [
    ("turboquant35", "turboquant25", 128, True),
    ("isoquant3", "planarquant4", 64, True),
    ("isoquant3", "isoquant3", 128, True),
    ("turboquant35", "planarquant3", 256, True),
    ("turboquant35", "turboquant35", 96, False),  # no kernel for this head size
])
def test_attention_kernel_layouts(key, value, head_dim, ok):
    layout = KVCacheLayout(key, value, head_dim, 2, 16)
    if ok:
        triton_attention.check_layout(layout)
    else:
        with pytest.raises(ValueError, match=f"head_dim {head_dim}"):
            triton_attention.check_layout(layout)


def test_store_kernel_head_dims():
    triton_store.check_layout(KVCacheLayout("isoquant3", "isoquant3", 128, 2, 16))
    with pytest.raises(ValueError, match="96"):
        triton_store.check_layout(KVCacheLayout("isoquant3", "isoquant3", 96, 2, 16))
