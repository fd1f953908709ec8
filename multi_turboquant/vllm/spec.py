"""vLLM 0.26/0.27's KV-cache specs for packed records (later releases size pages by `state_content_bytes`)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec


@dataclass(frozen=True, kw_only=True)
class _PackedPage:
    """A page of block_size x num_kv_heads x slot_bytes (uint8)."""

    slot_bytes: int = 0

    @property
    def real_page_size_bytes(self) -> int:
        return self.block_size * self.num_kv_heads * self.slot_bytes


@dataclass(frozen=True, kw_only=True)
class PackedSlidingWindowSpec(_PackedPage, SlidingWindowSpec):
    """vLLM's SlidingWindowSpec (its manager frees the blocks outside the window) with a packed page."""


@dataclass(frozen=True, kw_only=True)
class PackedKVSpec(_PackedPage, FullAttentionSpec):
    """FullAttentionSpec with a packed page."""

    @classmethod
    def merge(cls, specs: list["PackedKVSpec"]) -> "PackedKVSpec":
        if len({s.slot_bytes for s in specs}) != 1:
            raise ValueError("layers of one KV-cache group must share one packed slot size")
        return replace(super().merge(specs), slot_bytes=specs[0].slot_bytes)
