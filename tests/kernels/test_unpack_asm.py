"""The PTX unpack programs, emulated bit-exactly on the CPU against the spec's code layout and codebooks."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from multi_turboquant.formats.codebooks import levels
from multi_turboquant.kernels.unpack_asm import GROUP, _prmt, emulate, program, to_ptx


def _codes(bits: int, words: list[int]) -> list[int]:
    """Codes of one group of 16 as docs/formats.md lays them out (bit planes, least significant first)."""
    if bits == 1:
        return [(words[0] >> j) & 1 for j in range(GROUP)]
    if bits == 2:
        return [(words[0] >> 2 * j) & 3 for j in range(GROUP)]
    if bits == 3:
        return [((words[0] >> 2 * j) & 3) | (((words[1] >> j) & 1) << 2) for j in range(GROUP)]
    return [(words[j // 8] >> 4 * (j % 8)) & 15 for j in range(GROUP)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,row", [(1, 0), (1, 1), (2, 2), (3, 3), (4, 4)])
def test_programs_give_every_code_its_level(bits: int, row: int, dtype: torch.dtype) -> None:
    table = torch.tensor([-1.0, 1.0]) if row == 0 else levels(bits)
    want_bits = table.to(dtype).view(torch.int16).numpy().astype(np.uint16)
    rng = np.random.default_rng(bits * 10 + row)
    width = 16 if bits in (1, 3) else 32
    cases = [[0, 0], [(1 << 32) - 1, (1 << width) - 1]] + [
        [int(rng.integers(0, 1 << 32)), int(rng.integers(0, 1 << width))] for _ in range(2000)]
    prog = program(bits, row, dtype)
    for words in cases:
        words = words[:1] if bits == 1 else words
        words[0] &= (1 << (16 if bits == 1 else 32)) - 1
        assert emulate(prog, words) == [int(want_bits[c]) for c in _codes(bits, words)], (bits, row, words)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_programs_are_short(bits: int) -> None:
    # the point of the programs: at most 2.3 integer instructions per code (a select tree takes 8-10)
    ops = [op for op in program(bits, bits) if op[0] != "out"]
    assert len(ops) <= 2.3 * GROUP


def test_prmt_emulation_follows_ptx() -> None:
    # PTX ISA, prmt default mode: byte i of d is byte c[4i+2:4i] of {b, a}; c[4i+3] replicates its sign bit
    assert _prmt(0x33221100, 0x77665544, 0x5140) == 0x55114400
    assert _prmt(0x00000080, 0, 0x8888) == 0xFFFFFFFF
    assert _prmt(0x00000070, 0, 0x8880) == 0x00000070


def test_ptx_names_every_output_once() -> None:
    for bits in (1, 2, 3, 4):
        ptx = to_ptx(program(bits, bits))
        outs = sorted(int(x) for x in re.findall(r"\$(\d+)", ptx) if int(x) < GROUP)
        assert outs == list(range(GROUP))
