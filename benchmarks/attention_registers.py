"""Registers, spills and byte-wide shared-memory accesses of the decode attention kernel, with no GPU.

Compiles `triton_decode.decode_kernel` for sm_90a (Triton's own compiler and bundled ptxas) for every
format at the given head sizes and tile configs, as paged_attention would launch it for a decode batch
(GQA group 8, block size 16, split-KV, float16 dots), and prints one line per kernel: ptxas's register
count, spill stores/loads and stack frame, and the number of `st.shared.b8`/`ld.shared.b8`-style accesses in
the PTX (byte-wide shared-memory traffic is what crashed the first IsoQuant build with "misaligned address").

    python benchmarks/attention_registers.py --head-dims 128 --tile 64 4 --tile 32 4
    python benchmarks/attention_registers.py --formats isoquant3 --sass     # the tile loop's SASS counts
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multi_turboquant.formats.registry import FORMATS  # noqa: E402
from multi_turboquant.kernels import triton_decode  # noqa: E402
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402
from multi_turboquant.kernels.triton_common import record_spec  # noqa: E402

POINTERS = {"q_ptr": "*fp32", "cache_ptr": "*u8", "bt_ptr": "*i32", "seq_lens_ptr": "*i32", "qsl_ptr": "*i32",
            "nk_ptr": "*fp32", "nv_ptr": "*fp32", "table": "*fp32", "out_ptr": "*fp32", "m_ptr": "*fp32",
            "l_ptr": "*fp32"}
BYTE_SHARED = re.compile(r"\b(?:st|ld)\.shared(?:::cta)?(?:\.v\d)?\.[bsu]8\b")


BINDIR = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def ptxas_report(ptx: str) -> tuple[str, bytes]:
    """ptxas -v's register/spill lines for sm_90a, from the first bundled ptxas that accepts the PTX version, and
    the cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        src.write_text(ptx)
        for exe in sorted(BINDIR.glob("ptxas*")):
            r = subprocess.run([str(exe), "-arch=sm_90a", "-v", str(src), "-o", str(cubin)], capture_output=True,
                               text=True)
            if r.returncode == 0:
                lines = [line.split("info    :")[-1].strip() for line in r.stderr.splitlines()
                         if "Used" in line or "spill" in line]
                return "; ".join(lines), cubin.read_bytes()
    raise RuntimeError(f"no ptxas in {BINDIR} accepted the PTX: {r.stderr.strip()[:300]}")


def disassemble(cubin: bytes) -> str:
    """The SASS of a cubin (the bundled cuobjdump)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(BINDIR / "cuobjdump"), "-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout


def main_loop(sass: str) -> list[str]:
    """The instructions of the SASS loop closed by the first backward branch (the decode kernel's tile loop)."""
    code = [(int(a, 16), text) for a, text in SASS_LINE.findall(sass)]
    for at, text in code:
        target = re.search(r"BRA\b.*?(0x[0-9a-f]+)", text)
        if target and int(target.group(1), 16) < at:
            return [t for a, t in code if int(target.group(1), 16) <= a <= at]
    return []


def opcode(instruction: str) -> str:
    """The mnemonic of a SASS instruction without its predicate (`@P0 LDG.E.U16 R4, ...` -> LDG.E.U16)."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0]


def compile_decode(fmt: str, head_dim: int, block_n: int, warps: int, group: int = 8, hkv: int = 4) -> str:
    """PTX of the decode kernel for `fmt` (keys and values) as a split-KV decode launch would compile it."""
    layout = KVCacheLayout(fmt, fmt, head_dim, hkv, 16)
    spec = record_spec(fmt, head_dim)
    triton_decode.TILE = (block_n, warps) if block_n else None
    cx = triton_decode.constexprs(layout, spec, spec, group, torch.float16, single=False, has_new=False)
    fn = triton_decode.decode_kernel
    sig = {n: POINTERS.get(n) or ("constexpr" if n in cx else "i32") for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in POINTERS}
    kernel = triton.compile(ASTSource(fn, sig, cx, attrs), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": triton_decode.tile(spec, spec)[1], "num_stages": 1})
    return kernel.asm["ptx"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--head-dims", type=int, nargs="+", default=[128])
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--tile", type=int, nargs=2, action="append", metavar=("BLOCK_N", "NUM_WARPS"))
    p.add_argument("--sass", action="store_true", help="also the tile loop's SASS: instructions per warp, per code "
                                                        "and lane, and the most frequent opcodes")
    args = p.parse_args(argv)
    for d in args.head_dims:
        for block_n, warps in args.tile or [(0, 0)]:  # 0: the per-format default
            for fmt in args.formats:
                ptx = compile_decode(fmt, d, block_n, warps)
                report, cubin = ptxas_report(ptx)
                tile = triton_decode.tile(*[record_spec(fmt, d)] * 2)
                print(f"{fmt} d={d} tile={tile}: {report}; byte-wide shared accesses: {len(BYTE_SHARED.findall(ptx))}",
                      flush=True)
                if args.sass:
                    loop = main_loop(disassemble(cubin))
                    codes_per_lane = tile[0] * 2 * d / (32 * tile[1])  # key and value codes of a tile, per lane
                    top = ", ".join(f"{op} {n}" for op, n in Counter(map(opcode, loop)).most_common(8))
                    print(f"  tile loop: {len(loop)} instructions per warp, {len(loop) / codes_per_lane:.2f} per code "
                          f"and lane; {top}", flush=True)


if __name__ == "__main__":
    main()
