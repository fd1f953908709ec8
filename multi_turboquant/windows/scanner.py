"""MSVC-hazard scanner for C++/CUDA/Python build sources (``mtq windows scan``).

Finds constructs that GCC/Clang accept but an MSVC-hosted nvcc build rejects, and
with ``--fix`` applies the mechanical rewrites the vLLM Windows patch series uses.
Comments and literals are never matched (see :mod:`multi_turboquant.windows.ctokens`).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import io
import json
import re
import sys
import tokenize
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from multi_turboquant._help import examples

from multi_turboquant.windows.ctokens import Token, TokenizedSource, line_starts, without_comments
from multi_turboquant.windows.ctokens import tokenize as ctokenize

C_SUFFIXES = frozenset({".c", ".cc", ".cpp", ".cxx", ".h", ".hh", ".hpp", ".hxx", ".inl", ".cu", ".cuh"})
CUDA_SUFFIXES = frozenset({".cu", ".cuh"})
PY_SUFFIXES = frozenset({".py"})

# vLLM sources that a CUDA build never compiles (ROCm / CPU backends); skipped unless --all-paths.
DEFAULT_EXCLUDES = (
    "csrc/rocm/*",
    "csrc/cpu/*",
    "csrc/quickreduce/*",
    "csrc/custom_quickreduce.cu",
    ".git/*",
    "build/*",
    "*/__pycache__/*",
)

RULES: dict[str, str] = {
    "alt-token": "alternative operator token (and/or/not...) needs /permissive- or <ciso646> on MSVC",
    "gcc-builtin": "GCC builtin unknown to MSVC",
    "gcc-attribute": "GCC __attribute__ syntax unknown to MSVC",
    "gcc-asm": "GCC __asm__/__volatile__ spelling unknown to MSVC-hosted nvcc",
    "gcc-int-type": "GCC/glibc integer type (__int128_t, __int64_t...) unknown to MSVC",
    "ssize-t": "ssize_t is POSIX, MSVC has no such type",
    "uint-type": "uint is a glibc typedef, MSVC has no such type",
    "designated-init": "designated initializers need C++20 (/std:c++20) on MSVC",
    "device-std-math": "std:: math classification in device code resolves to host-only MSVC functions",
    "device-var-template": "variable template in device code is not supported by nvcc with an MSVC host",
    "else-if-chain": "long else-if chain exceeds MSVC's block nesting limit (C1061)",
    "subprocess-rm": "subprocess call to 'rm' does not exist on Windows",
    "math-constant": "M_* math constant needs _USE_MATH_DEFINES before <cmath> on MSVC",
}

ALT_TOKENS = {
    "and": "&&",
    "or": "||",
    "not": "!",
    "not_eq": "!=",
    "bitand": "&",
    "bitor": "|",
    "xor": "^",
    "compl": "~",
    "and_eq": "&=",
    "or_eq": "|=",
    "xor_eq": "^=",
}

# GCC builtins nvcc implements itself in device code (CUDA C++ Programming Guide, compiler hints).
NVCC_DEVICE_BUILTINS = frozenset(
    {"__builtin_expect", "__builtin_assume", "__builtin_assume_aligned", "__builtin_unreachable"}
)
# Builtins MSVC implements natively.
MSVC_BUILTINS = frozenset({"__builtin_bit_cast", "__builtin_offsetof", "__builtin_addressof"})


@dataclass(frozen=True)
class PortableBuiltin:
    """A replacement helper for a GCC bit builtin: its name, argument type and portable body."""

    helper: str
    arg_type: str
    bits: int
    body: str


_CLZ_BODY = "int n = 0; for ({t} bit = static_cast<{t}>(1) << {top}; bit != 0 && (x & bit) == 0; bit >>= 1) ++n; return n;"
_CTZ_BODY = "int n = 0; for ({t} bit = 1; bit != 0 && (x & bit) == 0; bit <<= 1) ++n; return n;"
_POPCOUNT_BODY = "int n = 0; for (; x != 0; x &= x - 1) ++n; return n;"
PORTABLE_BUILTINS: dict[str, PortableBuiltin] = {
    "__builtin_clz": PortableBuiltin("mtq_clz", "unsigned int", 32, _CLZ_BODY),
    "__builtin_clzll": PortableBuiltin("mtq_clzll", "unsigned long long", 64, _CLZ_BODY),
    "__builtin_ctz": PortableBuiltin("mtq_ctz", "unsigned int", 32, _CTZ_BODY),
    "__builtin_ctzll": PortableBuiltin("mtq_ctzll", "unsigned long long", 64, _CTZ_BODY),
    "__builtin_popcount": PortableBuiltin("mtq_popcount", "unsigned int", 32, _POPCOUNT_BODY),
    "__builtin_popcountll": PortableBuiltin("mtq_popcountll", "unsigned long long", 64, _POPCOUNT_BODY),
}

GCC_INT_TYPES = {
    "__int64_t": "int64_t",
    "__uint64_t": "uint64_t",
    "__int32_t": "int32_t",
    "__uint32_t": "uint32_t",
    "__int16_t": "int16_t",
    "__uint16_t": "uint16_t",
    "__int8_t": "int8_t",
    "__uint8_t": "uint8_t",
}
# 128-bit integers are used as 16-byte load/store units in CUDA kernels; int4/uint4 have
# the same size and alignment there. Outside CUDA files there is no mechanical fix.
INT128_CUDA_TYPES = {"__int128_t": "int4", "__int128": "int4", "__uint128_t": "uint4"}

MATH_CONSTANTS = frozenset(
    {
        "M_E",
        "M_LOG2E",
        "M_LOG10E",
        "M_LN2",
        "M_LN10",
        "M_PI",
        "M_PI_2",
        "M_PI_4",
        "M_1_PI",
        "M_2_PI",
        "M_2_SQRTPI",
        "M_SQRT2",
        "M_SQRT1_2",
    }
)
DEVICE_STD_MATH = frozenset({"isinf", "isnan", "isfinite", "signbit"})
# Aggregates from CUDA headers whose field order is fixed (cuda_bf16.h, cuda_fp16.h).
KNOWN_AGGREGATES: dict[str, tuple[str, ...]] = {
    "__nv_bfloat16_raw": ("x",),
    "__half_raw": ("x",),
    "cudaLaunchConfig_t": ("gridDim", "blockDim", "dynamicSmemBytes", "stream", "attrs", "numAttrs"),
}
ELSE_IF_LIMIT = 127  # MSVC: "blocks nested too deeply" past 128 levels; each else-if nests one
SUBPROCESS_FUNCS = frozenset({"call", "run", "check_call", "check_output", "Popen"})

MATH_DEFINES_SHIM = (
    "#ifndef _USE_MATH_DEFINES\n"
    "  #define _USE_MATH_DEFINES  // mtq-windows: M_* constants on MSVC\n"
    "#endif\n"
)


@dataclass(frozen=True)
class Edit:
    """Replace ``text[start:end]`` with ``replacement``."""

    start: int
    end: int
    replacement: str


@dataclass
class Finding:
    """One hazard at a source position, with the edits that fix it (empty if manual)."""

    path: str
    line: int
    col: int
    rule: str
    message: str
    edits: tuple[Edit, ...] = ()
    shims: tuple[str, ...] = ()  # text blocks to insert once near the top of the file

    @property
    def fixable(self) -> bool:
        return bool(self.edits or self.shims)

    def format(self) -> str:
        suffix = " [fixable]" if self.fixable else ""
        return f"{self.path}:{self.line}:{self.col}: {self.rule}: {self.message}{suffix}"

    def to_json(self) -> dict[str, object]:
        data = {k: v for k, v in asdict(self).items() if k not in ("edits", "shims")}
        data["fixable"] = self.fixable
        return data


@dataclass
class ScanReport:
    """Findings of one scan, plus counts of scanned and fixed files."""

    findings: list[Finding] = field(default_factory=list)
    files_scanned: int = 0
    files_fixed: list[str] = field(default_factory=list)
    fixes_applied: int = 0

    def summary(self) -> dict[str, object]:
        return {
            "files_scanned": self.files_scanned,
            "findings": len(self.findings),
            "fixable": sum(f.fixable for f in self.findings),
            "by_rule": dict(sorted(Counter(f.rule for f in self.findings).items())),
            "files_fixed": len(self.files_fixed),
            "fixes_applied": self.fixes_applied,
        }


class ScanError(Exception):
    """Bad input: missing path, unreadable file, unknown rule."""


# ---------------------------------------------------------------- C/C++/CUDA rules


def _device_mask(tokens: Sequence[Token]) -> list[bool]:
    """For each token, whether it lies in the body of a __device__/__global__ function or lambda."""
    mask = [False] * len(tokens)
    stack: list[bool] = []
    head_start = 0
    for i, tok in enumerate(tokens):
        inside = bool(stack and stack[-1])
        if tok.text == "{":
            head = tokens[head_start:i]
            is_device = any(_is_device_marker(t.text) for t in head) and any(t.text == "(" for t in head)
            stack.append(inside or is_device)
            head_start = i + 1
        elif tok.text == "}":
            if stack:
                stack.pop()
            head_start = i + 1
        elif tok.text == ";":
            head_start = i + 1
        mask[i] = bool(stack and stack[-1])
    return mask


def _is_device_marker(word: str) -> bool:
    return word in ("__device__", "__global__") or bool(re.fullmatch(r"\w*_(?:HOST_)?DEVICE", word))


def _prev(tokens: Sequence[Token], i: int) -> str:
    return tokens[i - 1].text if i > 0 else ""


def _next(tokens: Sequence[Token], i: int) -> str:
    return tokens[i + 1].text if i + 1 < len(tokens) else ""


def _matching(tokens: Sequence[Token], i: int, open_: str, close: str) -> int:
    """Index of the token closing the bracket opened at ``tokens[i]`` (len(tokens) if none)."""
    depth = 0
    for j in range(i, len(tokens)):
        text = tokens[j].text
        if text == open_:
            depth += 1
        elif text == close or (close == ">" and text == ">>"):
            depth -= 2 if text == ">>" else 1
            if depth <= 0:
                return j
    return len(tokens)


_PYTHON_H = re.compile(r'^[ \t]*#[ \t]*include[ \t]*[<"]Python\.h[">]', re.MULTILINE)
_UINT_TYPEDEF = re.compile(r"typedef\s[^;]*\buint\s*;|using\s+uint\s*=")
_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)", re.MULTILINE)


class _Lazy:
    """A value computed on the first call and kept."""

    def __init__(self, make: Callable[[], str]) -> None:
        self._make, self._value = make, None

    def __call__(self) -> str:
        if self._value is None:
            self._value = self._make()
        return self._value


def _search(pattern: re.Pattern[str], text: str, code: _Lazy) -> bool:
    return bool(pattern.search(text) and pattern.search(code()))


class CFileScanner:
    """Applies the C-family rules to one tokenized file."""

    def __init__(self, path: str, text: str, cuda: bool) -> None:
        self.path = path
        self.src: TokenizedSource = ctokenize(text)
        self.tokens = self.src.tokens
        self.cuda = cuda
        self.findings: list[Finding] = []
        words = {t.text for t in self.tokens}
        # Regexes over the text, which a commented-out line must not satisfy: a hit is confirmed
        # on the text without comments (made only then: most files have no hit).
        code = _Lazy(lambda: without_comments(text))
        self.has_python_h = "Py_ssize_t" in words or ("Python.h" in text and bool(_PYTHON_H.search(code())))
        self.defines_uint = _search(_UINT_TYPEDEF, text, code)
        self._aggregates: dict[str, tuple[str, ...]] | None = None
        self.defined_macros = set(_DEFINE.findall(code())) if _DEFINE.search(text) else set()

    def add(self, tok: Token, rule: str, message: str, edits: Iterable[Edit] = (), shims: Iterable[str] = ()) -> None:
        self.findings.append(Finding(self.path, tok.line, tok.col, rule, message, tuple(edits), tuple(shims)))

    def replace(self, tok: Token, text: str) -> Edit:
        return Edit(tok.start, tok.end, text)

    def scan(self) -> list[Finding]:
        device = _device_mask(self.tokens) if self.cuda else [False] * len(self.tokens)
        for i, tok in enumerate(self.tokens):
            if tok.kind == "ident":
                self.check_ident(i, tok, device[i])
            elif tok.text == "." and _prev(self.tokens, i) in ("{", ","):
                self.check_designator(i, tok)
        self.check_var_templates()
        self.check_else_if_chains()
        return self.findings

    def check_ident(self, i: int, tok: Token, in_device: bool) -> None:
        word = tok.text
        prev = _prev(self.tokens, i)
        member = prev in (".", "->", "::")
        if word in ALT_TOKENS and not member and prev != "operator":
            end = tok.end
            if word in ("not", "compl"):  # `not x` -> `!x`
                end += len(re.match(r"[ \t]*", self.src.text[end:]).group())  # type: ignore[union-attr]
            self.add(tok, "alt-token", f"'{word}' -> '{ALT_TOKENS[word]}'", [Edit(tok.start, end, ALT_TOKENS[word])])
        elif word.startswith("__builtin_"):
            self.check_builtin(tok)
        elif word in ("__attribute__", "__attribute"):
            self.check_attribute(i, tok)
        elif word in ("__asm__", "__volatile__"):
            self.add(tok, "gcc-asm", f"'{word}' -> '{word.strip('_')}'", [self.replace(tok, word.strip("_"))])
        elif word in GCC_INT_TYPES:
            self.add(tok, "gcc-int-type", f"'{word}' -> '{GCC_INT_TYPES[word]}'", [self.replace(tok, GCC_INT_TYPES[word])])
        elif word in INT128_CUDA_TYPES:
            if self.cuda:
                fix = INT128_CUDA_TYPES[word]
                self.add(tok, "gcc-int-type", f"'{word}' -> '{fix}' (16-byte storage unit)", [self.replace(tok, fix)])
            else:
                self.add(tok, "gcc-int-type", f"'{word}' has no MSVC equivalent (fix by hand)")
        elif word == "ssize_t" and not member:
            fix = "Py_ssize_t" if self.has_python_h else "int64_t"
            self.add(tok, "ssize-t", f"'ssize_t' -> '{fix}'", [self.replace(tok, fix)])
        elif word == "uint" and not member and not self.defines_uint and _next(self.tokens, i) != "(":
            self.add(tok, "uint-type", "'uint' -> 'unsigned'", [self.replace(tok, "unsigned")])
        elif word in MATH_CONSTANTS and "_USE_MATH_DEFINES" not in self.defined_macros:
            if word not in self.defined_macros:
                self.add(tok, "math-constant", f"'{word}' needs _USE_MATH_DEFINES", shims=[MATH_DEFINES_SHIM])
        elif word in DEVICE_STD_MATH and in_device and prev == "::" and self._is_global_std(i - 2):
            std_tok = self.tokens[i - 2]
            self.add(
                tok,
                "device-std-math",
                f"'std::{word}' in device code -> CUDA '{word}'",
                [Edit(std_tok.start, tok.start, "")],
            )

    def _is_global_std(self, i: int) -> bool:
        """Whether ``tokens[i]`` is ``std`` naming ::std (not e.g. ``cuda::std``)."""
        if i < 0 or self.tokens[i].text != "std":
            return False
        return i < 2 or self.tokens[i - 1].text != "::" or self.tokens[i - 2].kind != "ident"

    def check_builtin(self, tok: Token) -> None:
        word = tok.text
        in_condition = tok.directive in ("if", "elif")  # e.g. `#if __has_builtin(__builtin_x)`
        if word in MSVC_BUILTINS or (self.cuda and word in NVCC_DEVICE_BUILTINS) or in_condition:
            return
        portable = PORTABLE_BUILTINS.get(word)
        if portable is None:
            self.add(tok, "gcc-builtin", f"'{word}' has no MSVC equivalent (fix by hand)")
            return
        self.add(
            tok,
            "gcc-builtin",
            f"'{word}' -> portable '{portable.helper}'",
            [self.replace(tok, portable.helper)],
            [builtin_shim(word)],
        )

    def check_attribute(self, i: int, tok: Token) -> None:
        tokens = self.tokens
        if _next(tokens, i) != "(":
            self.add(tok, "gcc-attribute", f"'{tok.text}' without arguments")
            return
        close = _matching(tokens, i + 1, "(", ")")
        inner = [t.text for t in tokens[i + 1 : close + 1]]
        aligned = inner[:4] == ["(", "(", "aligned", "("] and inner[-2:] == [")", ")"] and len(inner) >= 7
        if aligned and self.cuda and close < len(tokens):
            amount = self.src.text[tokens[i + 4].end : tokens[close - 2].start].strip()
            fix = f"__align__({amount})"
            self.add(tok, "gcc-attribute", f"'{tok.text}((aligned))' -> '{fix}'", [Edit(tok.start, tokens[close].end, fix)])
            return
        name = inner[2] if len(inner) > 2 else "?"
        if name == "always_inline" and inner[3:] == [")", ")"] and self.cuda:
            start = tokens[i - 1].start if _prev(tokens, i) == "inline" else tok.start
            fix = Edit(start, tokens[close].end, "__forceinline__")
            self.add(tok, "gcc-attribute", f"'{tok.text}((always_inline))' -> '__forceinline__'", [fix])
            return
        self.add(tok, "gcc-attribute", f"'{tok.text}(({name}))' (fix by hand)")

    def check_designator(self, i: int, tok: Token) -> None:
        tokens = self.tokens
        if i + 3 < len(tokens) and tokens[i + 1].kind == "ident" and tokens[i + 2].text == "=":
            name = tokens[i + 1].text
            if self._designators_in_order(i):
                edit = Edit(tok.start, tokens[i + 3].start, "")
                self.add(tok, "designated-init", f"designator '.{name} =' -> positional", [edit])
            else:
                self.add(tok, "designated-init", f"designator '.{name} =' (use positional init; fix by hand)")

    def _designators_in_order(self, i: int) -> bool:
        """Whether the braced list holding the designator at ``tokens[i]`` names a known
        aggregate's fields as an in-order prefix, so dropping the designators keeps its meaning."""
        tokens = self.tokens
        depth, j = 0, i
        while j > 0:
            j -= 1
            depth += {"}": 1, ")": 1, "]": 1, "{": -1, "(": -1, "[": -1}.get(tokens[j].text, 0)
            if depth < 0:
                break
        if tokens[j].text != "{" or j < 2:
            return False
        # `T{...}`, `T name{...}` or `T name = {...}`
        candidates = [tokens[j - 1].text, tokens[j - 2].text, tokens[j - 3].text if j >= 3 else ""]
        if candidates[0] == "=":
            candidates = candidates[2:]
        fields = next((self.aggregates[c] for c in candidates[:2] if c in self.aggregates), None)
        if fields is None:
            return False
        close = _matching(tokens, j, "{", "}")
        names = [
            tokens[k + 1].text
            for k in range(j + 1, close)
            if tokens[k].text == "." and tokens[k - 1].text in ("{", ",") and _next(tokens, k + 1) == "="
        ]
        return list(fields[: len(names)]) == names

    @property
    def aggregates(self) -> dict[str, tuple[str, ...]]:
        """Field names, in order, of structs defined in this file plus known CUDA aggregates."""
        if self._aggregates is None:
            self._aggregates = dict(KNOWN_AGGREGATES)
            tokens = self.tokens
            for i, tok in enumerate(tokens[:-2]):
                if tok.text not in ("struct", "class"):
                    continue
                k = i + 1
                if tokens[k].text == "alignas" and _next(tokens, k) == "(":
                    k = _matching(tokens, k + 1, "(", ")") + 1
                if k + 1 < len(tokens) and tokens[k].kind == "ident" and tokens[k + 1].text == "{":
                    self._aggregates[tokens[k].text] = self._fields(k + 1)
        return self._aggregates

    def _fields(self, open_brace: int) -> tuple[str, ...]:
        """Data member names of the struct body starting at ``tokens[open_brace]``."""
        tokens = self.tokens
        close = _matching(tokens, open_brace, "{", "}")
        fields: list[str] = []
        decl: list[Token] = []
        depth = 0
        for tok in tokens[open_brace + 1 : close]:
            depth += (tok.text in "({[") - (tok.text in ")}]") if len(tok.text) == 1 else 0
            if depth == 0 and tok.text == ";":
                fields.extend(_declarator_names(decl))
                decl = []
            elif depth == 0 and tok.text in ("public", "private", "protected", ":"):
                decl = []
            else:
                decl.append(tok)
        return tuple(fields)

    def check_var_templates(self) -> None:
        """Flag ``template <...> [__device__] constexpr T name = ...;`` declared for device use."""
        tokens = self.tokens
        for i, tok in enumerate(tokens):
            if tok.text != "template" or _next(tokens, i) != "<":
                continue
            close = _matching(tokens, i + 1, "<", ">")
            head: list[Token] = []
            for t in tokens[close + 1 :]:
                if t.text in ("=", ";", "{", "("):
                    break
                head.append(t)
            else:
                continue
            stop = tokens[close + 1 + len(head)].text
            words = {t.text for t in head}
            if stop != "=" or words & {"struct", "class", "union", "using", "template", "operator"} or len(head) < 2:
                continue
            if any(_is_device_marker(w) or w == "__constant__" for w in words):
                name = head[-1]
                self.add(name, "device-var-template", f"variable template '{name.text}' used in device code (fix by hand)")

    def check_else_if_chains(self) -> None:
        depth = 0
        chains: dict[int, int] = {}
        for i, tok in enumerate(self.tokens):
            if tok.text == "{":
                depth += 1
            elif tok.text == "}":
                chains.pop(depth, None)
                depth -= 1
            elif tok.text == "if":
                if _prev(self.tokens, i) == "else":
                    chains[depth] = chains.get(depth, 0) + 1
                    if chains[depth] == ELSE_IF_LIMIT + 1:
                        self.add(tok, "else-if-chain", f"more than {ELSE_IF_LIMIT} chained 'else if' (C1061)")
                else:
                    chains[depth] = 0


def _declarator_names(decl: Sequence[Token]) -> list[str]:
    """Names declared by a data-member declaration such as ``uint32_t a, b = 0, c[4]``."""
    texts = [t.text for t in decl]
    if not decl or "(" in texts or {"using", "static", "typedef", "friend"} & set(texts):
        return []
    names: list[str] = []
    current: str | None = None
    in_init = False
    for tok in decl:
        if tok.text == ",":
            names += [current] if current else []
            current, in_init = None, False
        elif tok.text in ("=", "[", "{", ":"):
            in_init = True
        elif tok.kind == "ident" and not in_init:
            current = tok.text
    return names + ([current] if current else [])


def builtin_shim(builtin: str) -> str:
    """A self-contained constexpr helper replacing ``builtin``: the builtin itself off MSVC."""
    p = PORTABLE_BUILTINS[builtin]
    guard = f"{p.helper.upper()}_DEFINED"
    body = p.body.format(t=p.arg_type, top=p.bits - 1)
    return (
        f"#ifndef {guard}\n"
        f"  #define {guard}  // mtq-windows: {builtin} is a GCC builtin, MSVC lacks it\n"
        f"  #if defined(_MSC_VER) && !defined(__clang__)\n"
        f"static constexpr int {p.helper}({p.arg_type} x) {{ {body} }}\n"
        f"  #else\n"
        f"static constexpr int {p.helper}({p.arg_type} x) {{ return {builtin}(x); }}\n"
        f"  #endif\n"
        f"#endif\n"
    )


def shim_offset(text: str) -> int:
    """Offset where shims go: after leading comments, blank lines and ``#pragma once``."""
    pos = 0
    pattern = re.compile(r"[ \t]*(?://[^\n]*|/\*.*?\*/[ \t]*|#[ \t]*pragma[ \t]+once[^\n]*)?\n", re.DOTALL)
    while (m := pattern.match(text, pos)) is not None and m.end() > pos:
        pos = m.end()
    return pos


# ---------------------------------------------------------------- Python rules


_PY_PREFILTER = re.compile(r"""else if|['"]rm\b""")
_PY_SKIP = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING})


def scan_python(path: str, text: str) -> list[Finding]:
    """Python rules: subprocess 'rm' calls, generators emitting else-if chains."""
    if not _PY_PREFILTER.search(text):  # tokenizing is slow; most files cannot match
        return []
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type not in _PY_SKIP]
    except (tokenize.TokenError, SyntaxError) as exc:
        raise ScanError(f"{path}: cannot tokenize Python source: {exc}") from exc
    offsets = line_starts(text)
    findings: list[Finding] = []
    for i, tok in enumerate(toks):
        if tok.type == tokenize.STRING and re.search(r"\belse if\s*\(", tok.string):
            message = "generated code chains 'else if' per kernel; emit flat guarded 'if' blocks (fix by hand)"
            findings.append(Finding(path, tok.start[0], tok.start[1] + 1, "else-if-chain", message))
        elif tok.type == tokenize.NAME and tok.string in ("subprocess", "os"):
            finding = _subprocess_rm(path, text, toks, i, offsets)
            if finding is not None:
                findings.append(finding)
    return findings


def _literal(tok: tokenize.TokenInfo) -> str | None:
    """The value of a plain string literal token, else None (f-strings, other tokens)."""
    if tok.type != tokenize.STRING or re.match(r"\w*[fF]", tok.string):
        return None
    try:
        value = ast.literal_eval(tok.string)
    except (SyntaxError, ValueError):
        return None
    return value if isinstance(value, str) else None


def _subprocess_rm(
    path: str, text: str, toks: Sequence[tokenize.TokenInfo], i: int, offsets: Sequence[int]
) -> Finding | None:
    """Match ``subprocess.X(["rm", ...])``, ``subprocess.X("rm ...", shell=True)`` and ``os.system("rm ...")``."""
    seq = [t.string for t in toks[i : i + 5]]
    if len(seq) < 5 or seq[1] != "." or seq[3] != "(":
        return None
    if seq[2] not in (("system",) if seq[0] == "os" else SUBPROCESS_FUNCS):
        return None
    first = toks[i + 4]
    if first.string in ("[", "("):
        items, close = _flat_items(toks, i + 5, "]" if first.string == "[" else ")")
        if not items or _literal(items[0][0]) != "rm":
            return None
    elif (command := _literal(first)) is not None and re.match(r"rm\s", command):
        items, close = [], -1
    else:
        return None
    message = f"{seq[0]}.{seq[2]} runs 'rm', which Windows lacks: use pathlib/shutil"
    edits, shims = _rm_rewrite(text, toks, i, items, close, offsets)
    return Finding(path, toks[i].start[0], toks[i].start[1] + 1, "subprocess-rm", message, edits, shims)


def _flat_items(
    toks: Sequence[tokenize.TokenInfo], j: int, closer: str
) -> tuple[list[list[tokenize.TokenInfo]], int]:
    """Comma-separated items from ``toks[j]`` up to ``closer``; returns (items, index after closer)."""
    items: list[list[tokenize.TokenInfo]] = [[]]
    depth = 0
    while j < len(toks):
        text = toks[j].string
        if depth == 0 and text == closer:
            return [item for item in items if item], j + 1
        if depth == 0 and text == ",":
            items.append([])
        else:
            depth += (text in "([{") - (text in ")]}") if len(text) == 1 else 0
            items[-1].append(toks[j])
        j += 1
    return [], -1


def _rm_rewrite(
    text: str,
    toks: Sequence[tokenize.TokenInfo],
    i: int,
    items: list[list[tokenize.TokenInfo]],
    close: int,
    offsets: Sequence[int],
) -> tuple[tuple[Edit, ...], tuple[str, ...]]:
    """Edits turning a statement ``subprocess.X(["rm", flags..., target])`` into pathlib/shutil."""
    if len(items) < 2 or close < 0 or close >= len(toks) or toks[close].string != ")":
        return (), ()
    flags = [_literal(item[0]) if len(item) == 1 else None for item in items[1:-1]]
    if not set(flags) <= {"-f", "-r", "-rf", "-fr"}:
        return (), ()
    at_statement_start = i == 0 or toks[i - 1].type == tokenize.NEWLINE  # INDENT/DEDENT are filtered out
    ends_statement = close + 1 >= len(toks) or toks[close + 1].type in (tokenize.NEWLINE, tokenize.ENDMARKER)
    if not (at_statement_start and ends_statement):
        return (), ()
    target = items[-1]
    operand = text[_offset(offsets, target[0].start) : _offset(offsets, target[-1].end)]
    if any("r" in (flag or "") for flag in flags):
        call, module = f"shutil.rmtree({operand}, ignore_errors=True)", "shutil"
    else:
        call, module = f"pathlib.Path({operand}).unlink(missing_ok=True)", "pathlib"
    edit = Edit(_offset(offsets, toks[i].start), _offset(offsets, toks[close].end), call)
    return (edit,), (f"import {module}\n",)


def _offset(offsets: Sequence[int], pos: tuple[int, int]) -> int:
    return offsets[pos[0] - 1] + pos[1]


# ---------------------------------------------------------------- driver


def scan_text(path: str, text: str) -> list[Finding]:
    """Findings for one file's text; the rule set is chosen by the file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in PY_SUFFIXES:
        return scan_python(path, text)
    return CFileScanner(path, text, cuda=suffix in CUDA_SUFFIXES).scan()


def apply_fixes(path: str, text: str, findings: Sequence[Finding]) -> str:
    """Text with every fixable finding rewritten and required shims inserted once."""
    edits = {edit for finding in findings for edit in finding.edits}
    shims = [s for s in dict.fromkeys(sh for finding in findings for sh in finding.shims) if s not in text]
    if Path(path).suffix.lower() in PY_SUFFIXES:
        edits.update(Edit(offset, offset, shim) for shim in shims for offset in [_python_import_offset(text, shim)])
    elif shims:
        offset = shim_offset(text)
        edits.add(Edit(offset, offset, "".join(shims) + "\n"))
    # Back to front; insertions at one offset end up in sorted order.
    for edit in sorted(edits, key=lambda e: (e.start, e.end, e.replacement), reverse=True):
        text = text[: edit.start] + edit.replacement + text[edit.end :]
    if any(f.rule == "subprocess-rm" and f.edits for f in findings) and not re.search(r"\bsubprocess\.", text):
        text = re.sub(r"^import subprocess\n", "", text, count=1, flags=re.MULTILINE)  # now unused
    return text


def _python_import_offset(text: str, import_line: str) -> int:
    """Where ``import_line`` keeps the leading block of plain ``import x`` lines sorted."""
    block = list(re.finditer(r"^import (\w+)[^\n]*\n", text, re.MULTILINE))
    for match in block:
        if match.group(0) > import_line:
            return match.start()
    return block[-1].end() if block else shim_offset(text)


def iter_sources(root: Path, excludes: Sequence[str]) -> Iterator[Path]:
    """Scannable files under ``root`` (or ``root`` itself), skipping ``excludes`` globs."""
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in C_SUFFIXES | PY_SUFFIXES or not path.is_file():
            continue
        rel, absolute = path.relative_to(root).as_posix(), path.resolve().as_posix()
        # a pattern matches the path below root, or a tail of the absolute path (so that
        # csrc/rocm/* also applies when scanning the csrc folder itself)
        if not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(absolute, "*/" + p) for p in excludes):
            yield path


def _read(path: Path) -> str:
    try:
        with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return handle.read()
    except OSError as exc:
        raise ScanError(f"cannot read {path}: {exc.strerror or exc}") from exc


def scan_path(
    root: Path,
    *,
    fix: bool = False,
    rules: Sequence[str] | None = None,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
) -> ScanReport:
    """Scan a file or tree; with ``fix`` rewrite files in place and report what remains."""
    if not root.exists():
        raise ScanError(f"no such file or directory: {root}")
    unknown = sorted(set(rules or ()) - RULES.keys())
    if unknown:
        raise ScanError(f"unknown rule(s): {', '.join(unknown)} (known: {', '.join(RULES)})")
    report = ScanReport()
    for path in iter_sources(root, excludes):
        text = _read(path)
        findings = [f for f in scan_text(str(path), text) if rules is None or f.rule in rules]
        report.files_scanned += 1
        fixable = [f for f in findings if f.fixable]
        if fix and fixable:
            fixed = apply_fixes(str(path), text, fixable)
            try:
                with path.open("w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
                    handle.write(fixed)
            except OSError as exc:
                raise ScanError(f"cannot write {path}: {exc.strerror or exc}") from exc
            report.files_fixed.append(str(path))
            report.fixes_applied += len(fixable)
            findings = [f for f in scan_text(str(path), fixed) if rules is None or f.rule in rules]
        report.findings.extend(findings)
    return report


def run_scan(args: argparse.Namespace) -> int:
    """Entry point of ``scan``: 0 clean, 1 hazards remain, 2 bad input."""
    rules = [r.strip() for r in args.rules.split(",") if r.strip()] if args.rules else None
    excludes = [*(() if args.all_paths else DEFAULT_EXCLUDES), *args.exclude]
    try:
        report = scan_path(Path(args.path), fix=args.fix, rules=rules, excludes=excludes)
    except ScanError as exc:
        print(f"mtq windows scan: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        payload = {"findings": [f.to_json() for f in report.findings], "summary": report.summary()}
        print(json.dumps(payload, indent=2))
    else:
        for finding in report.findings:
            print(finding.format())
        summary = report.summary()
        by_rule = ", ".join(f"{rule}={count}" for rule, count in summary["by_rule"].items()) or "none"
        print(
            f"{summary['findings']} hazard(s) in {summary['files_scanned']} file(s) "
            f"({summary['fixable']} fixable; by rule: {by_rule})"
            + (f"; fixed {report.fixes_applied} in {len(report.files_fixed)} file(s)" if args.fix else "")
        )
    return 1 if report.findings else 0


def add_scan_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``scan`` sub-command to ``subparsers``; its ``func`` returns the exit code."""
    parser = subparsers.add_parser(
        "scan",
        help="scan C++/CUDA/Python build sources for MSVC hazards",
        description="Report MSVC hazards as 'path:line:col: rule: message'; exit 0 clean, 1 hazards, 2 bad input.",
        **examples("mtq windows scan vllm-0.27.1/csrc --rules alt-token,uint-type",
                   "mtq windows scan vllm-0.27.1 --fix"),
    )
    parser.add_argument("path", metavar="PATH", help="file or source tree (e.g. an unpacked vLLM sdist)")
    parser.add_argument("--fix", action="store_true", help="apply the mechanical rewrites in place")
    parser.add_argument("--json", action="store_true", help="print findings and summary as JSON")
    parser.add_argument("--rules", metavar="R1,R2", help=f"only these rules: {', '.join(RULES)}")
    parser.add_argument("--exclude", metavar="GLOB", action="append", default=[], help="skip matching relative paths")
    parser.add_argument(
        "--all-paths", action="store_true", help="also scan ROCm/CPU-only sources skipped by default"
    )
    parser.set_defaults(func=run_scan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m multi_turboquant.windows.scanner PATH ...``."""
    parser = argparse.ArgumentParser(prog="mtq-windows")
    add_scan_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["scan", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
