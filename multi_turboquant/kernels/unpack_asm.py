"""Bit-plane codes -> float16 codebook levels in a few integer instructions per code, as PTX programs.

The decode kernel spent most of its instructions turning packed codes into levels. These programs do it
with byte permutes (`prmt`: an 8-entry byte table lookup for four codes at once) and 3-input logic
(`lop3`), 1-2.3 instructions per code, where compare-and-select trees take 8-10. Each program maps one
group of 16 codes of one record part to 16 float16 (or bfloat16) levels, in record order:

* 1 bit  (input: the 16-bit plane unit)         sign-bit trick: ``±level``, two codes per `lop3`
* 2 bits (input: the 32-bit plane word)         one `prmt` looks up lo and hi byte of two codes
* 3 bits (inputs: 2-bit plane word, 1-bit unit) bits interleaved into nibbles, 8-entry byte lookups
* 4 bits (inputs: two 32-bit plane words)       symmetric codebook: 8-entry lookup of |level|, sign by `lop3`

A program is data (a list of operations) so the same program is emulated bit-exactly on the CPU in the
tests (`emulate`) and emitted as PTX for `tl.inline_asm_elementwise` (`to_ptx`).
"""
from __future__ import annotations

from functools import cache

import torch

from ..formats.codebooks import levels

GROUP = 16  # codes per program invocation
MASK32 = 0xFFFFFFFF
Operand = str | int  # a register name, an input ("in0", "in1") or a 32-bit constant
Program = list[tuple]

# lop3 truth tables for F(a = 0xF0, b = 0xCC, c = 0xAA)
OR_AND = 0xA8     # (a | b) & c
SELECT = 0xE4     # (a & c) | (b & ~c)
XOR_AND = 0x28    # (a ^ b) & c
NOTA_AND = 0x0C   # ~a & b
NOTA_ANDB_OR = 0xAE  # (~a & b) | c
XOR_NOTB_AND = 0xD2  # a ^ (~b & c)


def half_bits(x: float, dtype: torch.dtype = torch.float16) -> int:
    """The 16-bit pattern of float32 x rounded to `dtype` (float16 or bfloat16, nearest-even)."""
    return int(torch.tensor(x, dtype=torch.float32).to(dtype).view(torch.int16)) & 0xFFFF


def _byte_table(values: list[float], dtype: torch.dtype) -> tuple[int, int]:
    """(lo, hi): the low and the high bytes of up to four 16-bit float values, byte i = value i."""
    bits = [half_bits(v, dtype) for v in values]
    return (sum((b & 0xFF) << (8 * i) for i, b in enumerate(bits)),
            sum((b >> 8) << (8 * i) for i, b in enumerate(bits)))


def _unpack1(level: float, dtype: torch.dtype) -> Program:
    """Codes are bits: 1 -> +level, 0 -> -level. Pair (k, k+8): bits k and 16+k of the spread unit to 15 and 31."""
    both = half_bits(level, dtype) * 0x10001
    prog: Program = [("prmt", "d", "in0", 0, 0x4140)]  # bytes [b0, 0, b1, 0]
    for k in range(8):
        prog += [("shl", "t", "d", 15 - k), ("lop3", "q", "t", 0x80008000, both, NOTA_ANDB_OR), ("out", k, k + 8, "q")]
    return prog


def _unpack2(lv: list[float], dtype: torch.dtype) -> Program:
    """x_k bytes = codes (k, k+4, k+8, k+12); selector nibbles (c, c+4) pick lo and hi byte of level c."""
    lo, hi = _byte_table(lv, dtype)
    prog: Program = []
    for k in range(4):
        prog += [("shr", "x", "in0", 2 * k), ("and", "x", "x", 0x03030303), ("mad", "y", "x", 0x11, 0x40404040),
                 ("prmt", "q", lo, hi, "y"), ("out", k, k + 4, "q"),
                 ("shr", "y", "y", 16), ("prmt", "q", lo, hi, "y"), ("out", k + 8, k + 12, "q")]
    return prog


def _lookup4(prog: Program, sel: str, tlo: tuple[int, int], thi: tuple[int, int], outs: tuple[int, ...],
             flags: str | None = None) -> None:
    """Levels of the 4 codes in nibbles 0-3 of `sel` from 8-entry byte tables; outs = their output indices.

    flags: bit 7 of byte j set when code j is positive (the table then holds |level|; others get the sign)."""
    prog += [("prmt", "lo", tlo[0], tlo[1], sel), ("prmt", "hi", thi[0], thi[1], sel)]
    if flags is not None:
        prog.append(("lop3", "hi", "hi", flags, 0x80808080, XOR_NOTB_AND))
    prog += [("prmt", "q", "lo", "hi", 0x5140), ("out", outs[0], outs[1], "q"),
             ("prmt", "q", "lo", "hi", 0x7362), ("out", outs[2], outs[3], "q")]


def _unpack3(lv: list[float], dtype: torch.dtype) -> Program:
    """Interleave the 1-bit plane's bits (bit i -> 2i) beside the 2-bit codes: even codes in the nibbles of
    `se`, odd codes in those of `so`, each nibble a 3-bit code, then 8-entry lookups."""
    (l0, h0), (l1, h1) = _byte_table(lv[:4], dtype), _byte_table(lv[4:], dtype)
    prog: Program = [("prmt", "d", "in1", 0, 0x4140)]
    for shift, mask in ((4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
        prog += [("shl", "t", "d", shift), ("lop3", "d", "d", "t", mask, OR_AND)]
    prog += [("shl", "t", "d", 2), ("lop3", "se", "in0", "t", 0x33333333, SELECT),
             ("shr", "t", "in0", 2), ("lop3", "so", "t", "d", 0x33333333, SELECT)]
    for sel, first in (("se", 0), ("so", 1)):
        _lookup4(prog, sel, (l0, l1), (h0, h1), tuple(range(first, first + 8, 2)))
        prog.append(("shr", "s", sel, 16))
        _lookup4(prog, "s", (l0, l1), (h0, h1), tuple(range(first + 8, first + 16, 2)))
    return prog


def _unpack4(lv: list[float], dtype: torch.dtype) -> Program:
    """m = |level| index (code - 8, or 7 - code), looked up in the positive half; the sign from bit 3."""
    (l0, h0), (l1, h1) = _byte_table(lv[8:12], dtype), _byte_table(lv[12:], dtype)
    prog: Program = []
    for word, base in (("in0", 0), ("in1", 8)):
        prog += [("shr", "t", word, 3), ("lop3", "t", "t", 0x11111111, 0, NOTA_AND), ("mad", "f", "t", 7, 0),
                 ("lop3", "m", word, "f", 0x77777777, XOR_AND), ("shl", "se", word, 4),
                 ("prmt", "fl", "se", word, 0x5140), ("prmt", "fh", "se", word, 0x7362)]
        _lookup4(prog, "m", (l0, l1), (h0, h1), tuple(range(base, base + 4)), "fl")
        prog.append(("shr", "m", "m", 16))
        _lookup4(prog, "m", (l0, l1), (h0, h1), tuple(range(base + 4, base + 8)), "fh")
    return prog


@cache
def program(bits: int, row: int, dtype: torch.dtype = torch.float16) -> Program:
    """The program for `bits`-bit codes of codebook row `row` (row 0 = the QJL signs -1, +1), giving `dtype`
    (float16 or bfloat16: any 16-bit float with its sign in bit 15) bit patterns."""
    if bits == 1:
        return _unpack1(1.0 if row == 0 else float(levels(1)[1]), dtype)
    lv = levels(bits).tolist()
    return {2: _unpack2, 3: _unpack3, 4: _unpack4}[bits](lv, dtype)


# ---- CPU emulation (tests) -------------------------------------------------------------------------------

def _prmt(a: int, b: int, c: int) -> int:
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for i in range(4):
        sel = (c >> (4 * i)) & 0xF
        byte = src[sel & 7]
        if sel & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for bit in range(32):
        idx = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
        out |= ((lut >> idx) & 1) << bit
    return out


def emulate(prog: Program, inputs: list[int]) -> list[int]:
    """Run `prog` on 32-bit inputs; the 16 outputs' bit patterns."""
    regs: dict[str, int] = {f"in{i}": v & MASK32 for i, v in enumerate(inputs)}
    val = lambda x: x & MASK32 if isinstance(x, int) else regs[x]  # noqa: E731
    out = [None] * GROUP
    for op, dst, *src in prog:
        a = [val(x) for x in src] if op != "out" else None
        if op == "prmt":
            regs[dst] = _prmt(*a)
        elif op == "lop3":
            regs[dst] = _lop3(a[0], a[1], a[2], src[3])
        elif op == "shl":
            regs[dst] = (a[0] << src[1]) & MASK32
        elif op == "shr":
            regs[dst] = a[0] >> src[1]
        elif op == "and":
            regs[dst] = a[0] & a[1]
        elif op == "mad":
            regs[dst] = (a[0] * a[1] + a[2]) & MASK32
        elif op == "out":
            word = regs[src[1]]
            out[dst], out[src[0]] = word & 0xFFFF, word >> 16
        else:
            raise ValueError(f"unknown operation {op!r}")
    return out


# ---- PTX -------------------------------------------------------------------------------------------------

def to_ptx(prog: Program) -> str:
    """PTX for inline_asm_elementwise: outputs $0..$15 (16-bit), inputs $16, $17 (32-bit)."""
    regs: list[str] = []
    consts: dict[int, str] = {}
    body: list[str] = []

    def reg(x: Operand) -> str:
        if isinstance(x, int):
            if x not in consts:
                consts[x] = f"c{len(consts)}"
                body.insert(0, f"mov.b32 {consts[x]}, {x & MASK32:#x};")
            return consts[x]
        if x.startswith("in"):
            return f"${GROUP + int(x[2:])}"
        if x not in regs:
            regs.append(x)
        return x

    for op, dst, *src in prog:
        if op == "out":
            body.append(f"mov.b32 {{${dst}, ${src[0]}}}, {reg(src[1])};")
            continue
        if op == "prmt":
            body.append(f"prmt.b32 {reg(dst)}, {reg(src[0])}, {reg(src[1])}, {src[2] if isinstance(src[2], int) and src[2] < 0x10000 else reg(src[2])};")
        elif op == "lop3":
            body.append(f"lop3.b32 {reg(dst)}, {reg(src[0])}, {reg(src[1])}, {reg(src[2])}, {src[3]:#x};")
        elif op in ("shl", "shr"):
            body.append(f"{op}.{'b32' if op == 'shl' else 'u32'} {reg(dst)}, {reg(src[0])}, {src[1]};")
        elif op == "and":
            body.append(f"and.b32 {reg(dst)}, {reg(src[0])}, {reg(src[1])};")
        elif op == "mad":
            body.append(f"mad.lo.u32 {reg(dst)}, {reg(src[0])}, {reg(src[1])}, {reg(src[2])};")
        else:
            raise ValueError(f"unknown operation {op!r}")
    decl = ", ".join(regs + list(consts.values()))
    return "{\n.reg .b32 " + decl + ";\n" + "\n".join(body) + "\n}"
