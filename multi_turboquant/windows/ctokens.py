"""Small C/C++/CUDA tokenizer for the MSVC-hazard scanner.

It skips comments, string, character and raw-string literals, marks preprocessor
directive lines, and tracks ``#if`` regions whose condition is known to be false
for an MSVC-hosted CUDA build (``USE_ROCM``, ``#ifndef _MSC_VER``, ...), so code
in those regions is not reported.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

# Macros whose definedness is known when nvcc compiles a CUDA build with MSVC as host.
DEFINED_ON_MSVC_CUDA = frozenset({"_MSC_VER", "_WIN32", "_WIN64", "__CUDACC__", "__NVCC__"})
UNDEFINED_ON_MSVC_CUDA = frozenset(
    {
        "USE_ROCM",
        "__HIP_PLATFORM_AMD__",
        "__HIP_PLATFORM_HCC__",
        "__HIPCC__",
        "__HIP__",
        "__linux__",
        "__unix__",
        "__APPLE__",
        "__GNUC__",
        "__clang__",
        "__x86_64__",
        "__i386__",
        "__aarch64__",
    }
)

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\f\v\r]+|\\\r?\n)
  | (?P<nl>\n)
  | (?P<line_comment>//[^\n]*)
  | (?P<block_comment>/\*.*?(?:\*/|\Z))
  | (?P<raw>(?:u8|u|U|L)?R"(?P<delim>[^()\\\s]{0,16})\(.*?\)(?P=delim)")
  | (?P<string>(?:u8|u|U|L)?"(?:\\.|[^"\\\n])*"?)
  | (?P<char>(?:u8|u|U|L)?'(?:\\.|[^'\\\n])*'?)
  | (?P<number>\.?\d(?:[eEpP][+-]|'(?=\w)|[\w.])*)
  | (?P<ident>[A-Za-z_$][\w$]*)
  | (?P<punct>::|->|&&|\|\||<<|>>|[=!<>]=|.)
    """,
    re.VERBOSE | re.DOTALL,
)

# Directives whose operands are not code (header names, diagnostics, pragmas).
_NON_CODE_DIRECTIVES = frozenset({"include", "include_next", "import", "pragma", "error", "warning", "line"})


class Token(NamedTuple):
    """One code token: kind is ``ident``, ``number`` or ``punct``."""

    kind: str
    text: str
    start: int
    end: int
    line: int
    col: int
    directive: str | None  # name of the preprocessor directive this token belongs to, else None


@dataclass
class TokenizedSource:
    """Tokens of a C-family file; ``tokens`` excludes inactive ``#if`` regions."""

    text: str
    tokens: list[Token]
    line_starts: list[int]

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        index = bisect.bisect_right(self.line_starts, offset) - 1
        return index + 1, offset - self.line_starts[index] + 1


def line_starts(text: str) -> list[int]:
    """Offsets at which the lines of ``text`` start."""
    return [0] + [m.end() for m in re.finditer(r"\n", text)]


def without_comments(text: str) -> str:
    """``text`` with each comment blanked to spaces (newlines kept, so offsets and lines stay)."""

    def blank(match: re.Match[str]) -> str:
        word = match.group()
        return re.sub(r"[^\n]", " ", word) if match.lastgroup in ("line_comment", "block_comment") else word

    return _TOKEN_RE.sub(blank, text)


class _CondEval:
    """Three-valued evaluator of ``#if`` expressions: True, False or None (unknown)."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.pos = 0

    def peek(self) -> str | None:
        return self.words[self.pos] if self.pos < len(self.words) else None

    def take(self) -> str | None:
        word = self.peek()
        self.pos += 1
        return word

    def parse_or(self) -> bool | None:
        return self._fold(("||", "or"), self.parse_and, dominant=True)

    def parse_and(self) -> bool | None:
        return self._fold(("&&", "and"), self.parse_unary, dominant=False)

    def _fold(self, ops: tuple[str, str], operand: Callable[[], bool | None], dominant: bool) -> bool | None:
        """``operand (op operand)*``; ``dominant`` decides alone (True for ``||``, False for ``&&``)."""
        value = operand()
        while self.peek() in ops:
            self.take()
            right = operand()
            value = dominant if dominant in (value, right) else (None if None in (value, right) else not dominant)
        return value

    def parse_unary(self) -> bool | None:
        word = self.take()
        if word in ("!", "not"):
            inner = self.parse_unary()
            return None if inner is None else not inner
        if word == "(":
            value = self.parse_or()
            if self.take() != ")":
                raise ValueError("unbalanced parenthesis")
            return value
        if word == "defined":
            parens = self.peek() == "("
            if parens:
                self.take()
            name = self.take() or ""
            if parens and self.take() != ")":
                raise ValueError("bad defined()")
            return macro_known(name)
        if word is not None and re.fullmatch(r"[A-Za-z_]\w*", word):
            return False if word in UNDEFINED_ON_MSVC_CUDA else None
        raise ValueError(f"unsupported token {word!r}")


def macro_known(name: str) -> bool | None:
    """Whether ``name`` is defined in an MSVC-hosted CUDA build, None if unknown."""
    if name in DEFINED_ON_MSVC_CUDA:
        return True
    if name in UNDEFINED_ON_MSVC_CUDA:
        return False
    return None


def evaluate_condition(directive: str, words: list[str]) -> bool | None:
    """Truth of an ``#if``/``#ifdef``/``#ifndef``/``#elif`` operand on MSVC+CUDA, None if unknown."""
    if directive in ("ifdef", "ifndef"):
        known = macro_known(words[0]) if words else None
        return None if known is None else known == (directive == "ifdef")
    try:
        evaluator = _CondEval(words)
        value = evaluator.parse_or()
    except ValueError:
        return None
    return value if evaluator.peek() is None else None


@dataclass
class _Branch:
    """State of one open ``#if`` group."""

    parent_active: bool
    taken: bool | None  # True: some branch certainly taken; None: maybe; False: none yet
    active: bool


def _open_branch(stack: list[_Branch], value: bool | None) -> None:
    parent = stack[-1].active if stack else True
    stack.append(_Branch(parent, value, parent and value is not False))


def _next_branch(stack: list[_Branch], value: bool | None) -> None:
    """Handle ``#elif``/``#else`` (value True for ``#else``)."""
    if not stack:
        return
    branch = stack[-1]
    if branch.taken is True:
        branch.active = False
        return
    branch.active = branch.parent_active and value is not False
    if value is True and branch.taken is False:
        branch.taken = True
    elif value is not False:
        branch.taken = None


def tokenize(text: str) -> TokenizedSource:
    """Tokenize C/C++/CUDA source, dropping comments, literals and inactive ``#if`` regions."""
    source = TokenizedSource(text, [], line_starts(text))
    stack: list[_Branch] = []
    directive: str | None = None
    directive_words: list[str] = []
    at_line_start = True
    expect_directive_name = False
    pending: list[Token] = []

    def finish_directive() -> None:
        nonlocal directive
        enclosing_active = stack[-1].parent_active if directive in ("elif", "else", "endif") and stack else (
            not stack or stack[-1].active
        )
        if enclosing_active and directive not in _NON_CODE_DIRECTIVES:
            source.tokens.extend(pending)
        if directive in ("if", "ifdef", "ifndef"):
            _open_branch(stack, evaluate_condition(directive, directive_words))
        elif directive == "elif":
            _next_branch(stack, evaluate_condition("if", directive_words))
        elif directive == "else":
            _next_branch(stack, True)
        elif directive == "endif" and stack:
            stack.pop()
        directive = None

    for match in _TOKEN_RE.finditer(text):
        kind = match.lastgroup  # the outermost group: "raw", never its inner "delim"
        if kind == "nl":
            if directive is not None:
                finish_directive()
            at_line_start = True
            expect_directive_name = False
            continue
        if kind in ("ws", "line_comment", "block_comment"):
            continue
        if kind in ("raw", "string", "char"):
            at_line_start = False
            continue
        line, col = source.position(match.start())
        word = match.group()
        if at_line_start and word == "#":
            directive, directive_words, pending = "", [], []
            expect_directive_name = True
            at_line_start = False
            continue
        at_line_start = False
        if expect_directive_name:
            directive = word if kind == "ident" else ""
            expect_directive_name = False
            continue
        token = Token(kind or "punct", word, match.start(), match.end(), line, col, directive)
        if directive is not None:
            directive_words.append(word)
            pending.append(token)
        elif not stack or stack[-1].active:
            source.tokens.append(token)
    if directive is not None:
        finish_directive()
    return source
