"""Byte layout of one paged KV-cache layer holding packed K and V records."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..formats.registry import get_format


@dataclass(frozen=True)
class KVCacheLayout:
    """One layer's cache: uint8 tensor (num_blocks, num_kv_heads, block_size, slot_bytes).

    A slot holds the key record (`key_bytes`, format `key_format`) followed by the value record
    (`value_bytes`, format `value_format`), each laid out as docs/formats.md specifies. Blocks are
    head-major so one (block, KV head) pair is a contiguous run of block_size slots.
    """

    key_format: str
    value_format: str
    head_dim: int
    num_kv_heads: int
    block_size: int

    def __post_init__(self) -> None:
        for name in (self.key_format, self.value_format):
            get_format(name).check_head_dim(self.head_dim)
        if self.num_kv_heads < 1 or self.block_size < 1:
            raise ValueError(f"num_kv_heads and block_size must be positive, got {self.num_kv_heads}, {self.block_size}")

    @cached_property
    def key_bytes(self) -> int:
        return get_format(self.key_format).bytes_per_vector(self.head_dim)

    @cached_property
    def value_bytes(self) -> int:
        return get_format(self.value_format).bytes_per_vector(self.head_dim)

    @property
    def slot_bytes(self) -> int:
        return self.key_bytes + self.value_bytes

    @property
    def page_bytes(self) -> int:
        """Bytes of one block across all KV heads."""
        return self.num_kv_heads * self.block_size * self.slot_bytes

    def shape(self, num_blocks: int) -> tuple[int, int, int, int]:
        return (num_blocks, self.num_kv_heads, self.block_size, self.slot_bytes)
