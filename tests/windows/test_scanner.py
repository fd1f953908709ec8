"""Unit tests of the MSVC-hazard scanner (`mtq windows scan`) on synthetic sources."""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from multi_turboquant.windows import scanner
from multi_turboquant.windows.ctokens import tokenize
from multi_turboquant.windows.scanner import PORTABLE_BUILTINS, ScanError, builtin_shim, scan_path, scan_text

GXX = shutil.which("g++")
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ is not installed")


def rules_of(path: str, text: str) -> list[str]:
    return [f.rule for f in scan_text(path, text)]


def fixed(tmp_path: Path, name: str, text: str) -> str:
    """The text of ``name`` after ``scan --fix``."""
    path = tmp_path / name
    path.write_text(text)
    scan_path(path, fix=True)
    return path.read_text()


def gxx_syntax_check(path: Path, *extra: str) -> None:
    assert GXX is not None
    proc = subprocess.run(
        [GXX, "-std=c++17", "-fsyntax-only", "-x", "c++", *extra, str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_drops_comments_and_literals() -> None:
    src = textwrap.dedent(
        r"""
        // and or not
        /* __builtin_clz
           and */ int a = 1; const char* s = "or not"; char c = 'n';
        auto r = R"x(and )" or)x"; auto n = 1'000'000;
        """
    ).lstrip("\n")
    words = [t.text for t in tokenize(src).tokens]
    assert "and" not in words and "or" not in words and "not" not in words
    assert "__builtin_clz" not in words
    assert words.count("=") == 5 and "1'000'000" in words


@pytest.mark.parametrize(
    ("cond", "if_active", "else_active"),
    [
        ("#ifdef USE_ROCM", False, True),
        ("#if defined(USE_ROCM)", False, True),
        ("#ifndef USE_ROCM", True, False),
        ("#ifndef _MSC_VER", False, True),
        ("#if !defined(_MSC_VER)", False, True),
        ("#if defined(USE_ROCM) && defined(FOO)", False, True),
        ("#if defined(USE_ROCM) || defined(FOO)", True, True),  # unknown: both branches are scanned
        ("#if FOO > 3", True, True),
        ("#if defined(__x86_64__)", False, True),
    ],
)
def test_inactive_preprocessor_regions_are_skipped(cond: str, if_active: bool, else_active: bool) -> None:
    src = f"{cond}\nint x = a and b;\n#else\nint y = c or d;\n#endif\nint z = e xor f;\n"
    words = {t.text for t in tokenize(src).tokens}
    assert ("and" in words, "or" in words, "xor" in words) == (if_active, else_active, True)


def test_else_of_a_known_true_branch_is_skipped() -> None:
    src = "#ifdef _MSC_VER\nint x = 1;\n#elif defined(FOO)\nint y = a or b;\n#else\nint z = a and b;\n#endif\n"
    words = {t.text for t in tokenize(src).tokens}
    assert "or" not in words and "and" not in words


# ------------------------------------------------------------------------------------------ C++ rules


@pytest.mark.parametrize(
    ("name", "code", "rule"),
    [
        ("a.cu", "bool f(int a, int b) { return a and not b; }", "alt-token"),
        ("a.cpp", "int f(unsigned x) { return __builtin_clz(x); }", "gcc-builtin"),
        ("a.cu", "__shared__ float __attribute__((aligned(16))) s[4];", "gcc-attribute"),
        ("a.cu", "__device__ void f() { __asm__ __volatile__(\"nop\"); }", "gcc-asm"),
        ("a.cu", "__int128_t* p;", "gcc-int-type"),
        ("a.cpp", "__int64_t v;", "gcc-int-type"),
        ("a.cpp", "void f(ssize_t n);", "ssize-t"),
        ("a.cu", "template <const uint N> void f();", "uint-type"),
        ("a.cu", "struct P { int a; int b; }; P p{.a = 1, .b = 2};", "designated-init"),
        ("a.cu", "__device__ bool f(float x) { return std::isinf(x); }", "device-std-math"),
        ("a.cuh", "template <typename T>\n__device__ static constexpr T max_v = T(1);", "device-var-template"),
        ("a.cu", "float f() { return M_PI; }", "math-constant"),
    ],
)
def test_each_rule_fires(name: str, code: str, rule: str) -> None:
    assert rule in rules_of(name, code)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("a.cu", "// a and b\nint x; /* or */ const char* s = \"not\";"),
        ("a.cu", "__device__ bool f(float x) { return cuda::std::isinf(x); }"),  # not ::std
        ("a.cu", "bool f(float x) { return std::isinf(x); }"),  # host code
        ("a.cu", "__device__ void f() { __builtin_unreachable(); }"),  # nvcc implements it
        ("a.cpp", "int f() { return __builtin_bit_cast(int, 1.0f); }"),  # MSVC implements it
        ("a.cpp", "typedef unsigned int uint;\nuint x;"),
        ("a.cpp", "auto t = ScalarType::uint(4); static ScalarType uint(int b);"),
        ("a.cpp", "#define _USE_MATH_DEFINES\n#include <cmath>\ndouble p = M_PI;"),
        ("a.cpp", "#ifdef USE_ROCM\nint x = a and b;\n#endif"),
        ("a.cpp", "Py_ssize_t n; bool eq = a == b;"),
        ("a.cpp", "x.and_then(); y->or_else();"),
        ("a.cu", "template <typename T> constexpr T host_v = T(1);"),  # no device annotation
    ],
)
def test_no_false_positive(name: str, code: str) -> None:
    assert rules_of(name, code) == []


@pytest.mark.parametrize(
    ("code", "rule"),
    [
        ("/*\n#define _USE_MATH_DEFINES\n*/\nfloat f() { return M_PI; }\n", "math-constant"),
        ("/* #define M_PI 3.14 */\nfloat f() { return M_PI; }\n", "math-constant"),
        ("/* typedef unsigned uint; */\nuint x;\n", "uint-type"),
        ("// using uint = unsigned;\nuint x;\n", "uint-type"),
    ],
)
def test_commented_out_definitions_do_not_hide_hazards(code: str, rule: str) -> None:
    assert rules_of("a.cu", code) == [rule]


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        ('#include <Python.h>\nssize_t n;\n', "Py_ssize_t"),
        ('/* c */ #include "Python.h"\nssize_t n;\n', "Py_ssize_t"),
        ('// #include <Python.h>\nssize_t n;\n', "int64_t"),  # not included: Py_ssize_t would not compile
        ('const char* s = "#include <Python.h>";\nssize_t n;\n', "int64_t"),
    ],
)
def test_ssize_t_fix_depends_on_a_real_python_h_include(code: str, fix: str) -> None:
    (finding,) = scan_text("a.cpp", code)
    assert finding.message == f"'ssize_t' -> '{fix}'"


def test_finding_position_and_format() -> None:
    (finding,) = scan_text("dir/k.cu", "int a;\n  bool b = x and y;\n")
    assert (finding.line, finding.col) == (2, 14)
    assert finding.format() == "dir/k.cu:2:14: alt-token: 'and' -> '&&' [fixable]"


def test_else_if_chain_in_cpp_counts_per_depth() -> None:
    limit = scanner.ELSE_IF_LIMIT
    chain = "if (x == 0) y = 0;\n" + "".join(f"else if (x == {i}) y = {i};\n" for i in range(1, limit + 2))
    assert rules_of("k.cpp", f"void f(int x, int y) {{\n{chain}}}") == ["else-if-chain"]
    short = "if (x == 0) y = 0;\n" + "".join(f"else if (x == {i}) y = {i};\n" for i in range(1, limit))
    assert rules_of("k.cpp", f"void f(int x, int y) {{\n{short}{short}}}") == []


# ------------------------------------------------------------------------------------------ Python rules


@pytest.mark.parametrize(
    "code",
    [
        'subprocess.call(["rm", "-f", name])\n',
        "subprocess.run(['rm', '-rf', d], check=True)\n",
        'subprocess.check_call("rm -rf build", shell=True)\n',
        'os.system("rm -f x")\n',
        'x = subprocess.call(["rm", name])\n',
    ],
)
def test_subprocess_rm_is_found(code: str) -> None:
    assert rules_of("gen.py", "import os\nimport subprocess\n" + code) == ["subprocess-rm"]


def test_python_rules_ignore_comments_and_other_commands() -> None:
    code = 'import subprocess\n# subprocess.call(["rm", "-f", x])\nsubprocess.call(["ls", "rm"])\ns = "rm -rf"\n'
    assert rules_of("gen.py", code) == []


def test_python_generator_emitting_else_if() -> None:
    code = 'out = ""\nfor c in conds:\n    out += f"else if ({c})\\n  k = 1;"\n'
    assert rules_of("generate_kernels.py", code) == ["else-if-chain"]


def test_subprocess_rm_fix_runs(tmp_path: Path) -> None:
    code = (
        "import glob\nimport os\nimport subprocess\n\n\n"
        "def clean(d):\n"
        '    for f in glob.glob(os.path.join(d, "*.cu")):\n'
        '        subprocess.call(["rm", "-f", f])\n'
        '    subprocess.call(["rm", "-rf", os.path.join(d, "sub")])\n'
        '    subprocess.call(["rm", "-f", os.path.join(d, "missing.h")])\n'
    )
    new = fixed(tmp_path, "gen.py", code)
    assert "rm" not in [t for line in new.splitlines() for t in line.split('"')]
    assert new.startswith("import glob\nimport os\nimport pathlib\nimport shutil\n\n")  # subprocess now unused
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "a.cu").write_text("x")
    (work / "keep.h").write_text("x")
    namespace: dict[str, object] = {}
    exec(compile(new, "gen.py", "exec"), namespace)
    namespace["clean"](str(work))  # type: ignore[operator]
    assert sorted(p.name for p in work.iterdir()) == ["keep.h"]


def test_subprocess_import_kept_while_used(tmp_path: Path) -> None:
    code = 'import subprocess\nsubprocess.call(["rm", "-f", "x"])\nsubprocess.call(["ls"])\n'
    new = fixed(tmp_path, "gen.py", code)
    assert new == 'import pathlib\nimport subprocess\npathlib.Path("x").unlink(missing_ok=True)\nsubprocess.call(["ls"])\n'


def test_subprocess_rm_in_an_expression_is_not_rewritten(tmp_path: Path) -> None:
    code = 'import subprocess\nrc = subprocess.call(["rm", "-f", "x"])\n'
    assert fixed(tmp_path, "gen.py", code) == code


# ------------------------------------------------------------------------------------------ fixes


@pytest.mark.parametrize(
    ("name", "before", "after"),
    [
        ("a.cu", "bool f(int a, int b) { return a and not b or a; }", "bool f(int a, int b) { return a && !b || a; }"),
        ("a.cu", "__shared__ float __attribute((aligned(128))) s[4];", "__shared__ float __align__(128) s[4];"),
        ("a.cu", "#define F inline __attribute__((always_inline)) __device__\n", "#define F __forceinline__ __device__\n"),
        ("a.cu", "__asm__ __volatile__(\"nop\");", 'asm volatile("nop");'),
        ("a.cu", "__int128_t* p; __int64_t q;", "int4* p; int64_t q;"),
        ("a.cpp", "#include <Python.h>\nvoid f(ssize_t n);", "#include <Python.h>\nvoid f(Py_ssize_t n);"),
        ("a.cpp", "void f(ssize_t n);", "void f(int64_t n);"),
        ("a.cu", "const uint n = 3;", "const unsigned n = 3;"),
        ("a.cu", "__device__ bool f(float x) { return std::isinf(x); }", "__device__ bool f(float x) { return isinf(x); }"),
        (
            "a.cu",
            "struct P { int a, b; float c; };\nP f() { return P{.a = 1, .b = 2, .c = 3}; }",
            "struct P { int a, b; float c; };\nP f() { return P{1, 2, 3}; }",
        ),
        (
            "a.cu",
            "auto v = __nv_bfloat16(__nv_bfloat16_raw{.x = 17376});",
            "auto v = __nv_bfloat16(__nv_bfloat16_raw{17376});",
        ),
    ],
)
def test_mechanical_fixes(tmp_path: Path, name: str, before: str, after: str) -> None:
    assert fixed(tmp_path, name, before) == after


def test_out_of_order_designators_are_not_rewritten(tmp_path: Path) -> None:
    code = "struct P { int a; int b; };\nP p{.b = 1, .a = 2};\n"
    assert fixed(tmp_path, "a.cu", code) == code
    assert rules_of("a.cu", code) == ["designated-init", "designated-init"]


def test_math_constant_fix_defines_before_includes(tmp_path: Path) -> None:
    code = "// header comment\n#pragma once\n\n#include <cmath>\ndouble f() { return M_PI * M_SQRT2; }\n"
    new = fixed(tmp_path, "m.h", code)
    assert new.count("#define _USE_MATH_DEFINES") == 1
    assert new.index("#pragma once") < new.index("_USE_MATH_DEFINES") < new.index("#include <cmath>")
    assert rules_of("m.h", new) == []


def test_fix_is_idempotent(tmp_path: Path) -> None:
    code = "#include <cmath>\nint f(unsigned x) { return __builtin_clz(x) + (x and 1) + int(M_E); }\n"
    once = fixed(tmp_path, "a.cpp", code)
    assert fixed(tmp_path, "a.cpp", once) == once
    assert once.count("MTQ_CLZ_DEFINED") == 2  # #ifndef and #define of one shim


SAMPLE_CPP = """\
#include <cstdint>
#include <cstdio>
#include <cmath>
#include <sys/types.h>

struct Params {
  const float* input;
  int64_t stride;
};

constexpr uint32_t next_pow_2(uint32_t num) {
  return num <= 1 ? num : 1u << (32 - __builtin_clz(num - 1));
}

static_assert(next_pow_2(5) == 8, "next_pow_2");

template <typename T, const uint N>
bool check(T a, T b, ssize_t n, __int64_t m) {
  double angle = M_PI / N;
  return (a < b and not (n > 0)) or (m == 0 and angle > 0) or __builtin_popcount(a) == 1;
}

Params make(const float* p) { return Params{.input = p, .stride = 4}; }
"""


@needs_gxx
def test_fixed_cpp_still_compiles(tmp_path: Path) -> None:
    original = tmp_path / "orig.cpp"
    original.write_text(SAMPLE_CPP)
    gxx_syntax_check(original)
    new = fixed(tmp_path, "sample.cpp", SAMPLE_CPP)
    assert [f.rule for f in scan_text("sample.cpp", new)] == []
    gxx_syntax_check(tmp_path / "sample.cpp", "-pedantic-errors")  # no designated initializers left


SAMPLE_CU = """\
#include <cmath>
#include <limits>
template <typename scalar_t, const uint NUM_THREADS>
__global__ void merge(float* out, const float* lse, const uint n) {
  extern __shared__ __align__(16) __int128_t smem[];
  __shared__ float __attribute((aligned(128))) scores[NUM_THREADS];
  float v = lse[0];
  v = std::isinf(v) ? -std::numeric_limits<float>::infinity() : v;
  if (n > 0 and not std::isnan(v)) out[0] = v * M_LOG2E;
  __asm__ __volatile__("" ::: "memory");
  __int64_t* p = reinterpret_cast<__int64_t*>(smem);
  (void)p; (void)scores;
}
"""

# Enough of CUDA's Linux definitions to syntax-check .cu files with g++.
CUDA_STUBS = """\
#include <cstdint>
#include <math.h>
#define __global__
#define __device__
#define __host__
#define __shared__
#define __forceinline__ inline __attribute__((always_inline))
#define __align__(n) __attribute__((aligned(n)))
struct int4 { int x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
typedef unsigned int uint;
"""


@needs_gxx
def test_fixed_cuda_sample_compiles_as_cpp(tmp_path: Path) -> None:
    stubs = tmp_path / "cuda_stubs.h"
    stubs.write_text(CUDA_STUBS)
    new = fixed(tmp_path, "sample.cu", SAMPLE_CU)
    assert "__int128_t" not in new and " and " not in new and "std::isinf" not in new
    assert [f.rule for f in scan_text("sample.cu", new)] == []
    # the stubs typedef uint only for the unfixed original: the fixed file must not need it
    gxx_syntax_check(tmp_path / "sample.cu", "-include", str(stubs), "-Duint=uint_is_not_defined_on_msvc")


@needs_gxx
@pytest.mark.parametrize("builtin", sorted(PORTABLE_BUILTINS))
def test_portable_builtin_matches_gcc(tmp_path: Path, builtin: str) -> None:
    """The MSVC branch of each shim computes what the GCC builtin does (for non-zero inputs)."""
    portable = PORTABLE_BUILTINS[builtin]
    shim = builtin_shim(builtin).replace("#if defined(_MSC_VER) && !defined(__clang__)", "#if 1")
    rng = random.Random(builtin)
    values = [1, 2, 3, (1 << (portable.bits - 1)), (1 << portable.bits) - 1]
    values += [rng.randrange(1, 1 << portable.bits) for _ in range(200)]
    checks = "\n".join(
        f"  if ({portable.helper}({v}ull) != {builtin}({v}ull)) return 1;" for v in values
    )
    program = tmp_path / "check.cpp"
    program.write_text(
        f"{shim}\nstatic_assert({portable.helper}(1u) == {builtin}(1u), \"constexpr\");\n"
        f"int main() {{\n{checks}\n  return 0;\n}}\n"
    )
    exe = tmp_path / "check"
    assert GXX is not None
    build = subprocess.run([GXX, "-std=c++17", "-o", str(exe), str(program)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert subprocess.run([str(exe)]).returncode == 0


# ------------------------------------------------------------------------------------------ command line


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = scanner.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "clean.cpp").write_text("int main() { return 0; }\n")
    assert run_cli(capsys, str(tmp_path))[0] == 0
    (tmp_path / "bad.cu").write_text("bool f(int a) { return a and a; }\n")
    code, out, _ = run_cli(capsys, str(tmp_path))
    assert code == 1
    assert f"{tmp_path / 'bad.cu'}:1:26: alt-token: 'and' -> '&&' [fixable]" in out
    assert "1 hazard(s) in 2 file(s)" in out.splitlines()[-1]


def test_cli_fix_then_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.cu").write_text("bool f(int a) { return a and a; }\n")
    code, out, _ = run_cli(capsys, str(tmp_path), "--fix")
    assert code == 0 and "fixed 1 in 1 file(s)" in out
    assert (tmp_path / "bad.cu").read_text() == "bool f(int a) { return a && a; }\n"


def test_cli_json_and_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "k.cu").write_text("bool f(ssize_t a) { return a and a; }\n")
    code, out, _ = run_cli(capsys, str(tmp_path), "--json", "--rules", "ssize-t")
    data = json.loads(out)
    assert code == 1
    assert [f["rule"] for f in data["findings"]] == ["ssize-t"]
    assert data["summary"]["by_rule"] == {"ssize-t": 1} and data["findings"][0]["fixable"] is True


def test_cli_default_excludes_and_all_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "csrc" / "rocm").mkdir(parents=True)
    (tmp_path / "csrc" / "rocm" / "k.cu").write_text("bool f(int a) { return a and a; }\n")
    assert run_cli(capsys, str(tmp_path))[0] == 0
    assert run_cli(capsys, str(tmp_path), "--all-paths")[0] == 1
    assert run_cli(capsys, str(tmp_path), "--all-paths", "--exclude", "csrc/*")[0] == 0


@pytest.mark.parametrize("argv", [["/nonexistent/vllm"], ["--rules", "no-such-rule", "."]])
def test_cli_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert "error:" in err


def test_unreadable_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "k.cu"
    target.write_text("int x;\n")

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    code, _, err = run_cli(capsys, str(target))
    assert code == 2
    assert f"cannot read {target}: Permission denied" in err
    with pytest.raises(ScanError):
        scan_path(target)


def test_add_scan_command_mounts_a_subcommand(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="mtq windows")
    scanner.add_scan_command(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["scan", str(tmp_path), "--json"])
    assert args.func(args) == 0


def test_module_entry_point(tmp_path: Path) -> None:
    (tmp_path / "k.cpp").write_text("ssize_t n;\n")
    proc = subprocess.run(
        [sys.executable, "-m", "multi_turboquant.windows.scanner", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "ssize-t" in proc.stdout
