"""`mtq windows wheel`: a built tree packaged, read back and validated; damaged wheels are refused."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

from multi_turboquant.cli import main
from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.native import native_modules
from multi_turboquant.windows.wheel import build_wheel, wheel_problems

NATIVE = {
    "vllm/cumem_allocator.pyd": b"MZ cumem",
    "vllm/_C_stable_libtorch.pyd": b"MZ stable",
    "vllm/_moe_C_stable_libtorch.pyd": b"MZ moe",
    "vllm/vllm_flash_attn/_vllm_fa2_C.pyd": b"MZ fa2",
}
PYPROJECT = """[project]
name = "vllm"
requires-python = ">=3.10,<3.15"
dynamic = [ "version", "dependencies"]

[project.scripts]
vllm = "vllm.entrypoints.cli.main:main"

[project.entry-points."vllm.general_plugins"]
lora_filesystem_resolver = "vllm.plugins.lora_resolvers.filesystem_resolver:register_filesystem_resolver"
"""
SOURCES = {
    "PKG-INFO": "Metadata-Version: 2.4\nName: vllm\nVersion: 0.27.1\n",
    "pyproject.toml": PYPROJECT,
    "requirements/common.txt": "regex\nnumpy >= 1.26 # arrays\n",
    "requirements/cuda.txt": "# CUDA\n-r common.txt\n--extra-index-url https://flashinfer.ai/whl/\n"
    "torch==2.13.0\nflashinfer-python==0.6.16.post3\n"
    'nvidia-cutlass-dsl[cu13]==4.6.0; sys_platform != "win32"\ntokenspeed-mla==0.1.8; platform_system == "Linux"\n',
    "vllm/__init__.py": "from vllm._version import __version__\n",
    "vllm/_version.py": "__version__ = version = '0.27.1'\n",
    "vllm/vllm_flash_attn/__init__.py": "",
    "vllm/model_executor/layers/fused_moe/configs/E=8.json": "{}\n",
    "vllm/__pycache__/__init__.cpython-311.pyc": "compiled",
    "vllm/_C.exp": "linker leftover",
}


@pytest.fixture()
def built_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "vllm-src"
    for name, content in {**SOURCES, **NATIVE}.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return tree


def digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_wheel_holds_the_package_the_native_modules_and_a_matching_record(built_tree: Path, tmp_path: Path) -> None:
    path = build_wheel(built_tree, tmp_path / "dist", platform="win-amd64")
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert path.name == f"vllm-0.27.1-{python}-{python}-win_amd64.whl"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        files = {name: archive.read(name) for name in names}
    assert {name: files[name] for name in NATIVE} == NATIVE
    assert "vllm/model_executor/layers/fused_moe/configs/E=8.json" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".exp")]
    info = "vllm-0.27.1.dist-info"
    assert f"Tag: {python}-{python}-win_amd64" in files[f"{info}/WHEEL"].decode().splitlines()
    metadata = files[f"{info}/METADATA"].decode().splitlines()
    assert metadata[:4] == ["Metadata-Version: 2.1", "Name: vllm", "Version: 0.27.1", "Requires-Python: >=3.10,<3.15"]
    assert [line[len("Requires-Dist: ") :] for line in metadata[4:]] == [
        "regex",
        "numpy >= 1.26",
        "torch==2.13.0",
        'flashinfer-python==0.6.16.post3; sys_platform != "win32"',  # added: no Windows wheels
        'nvidia-cutlass-dsl[cu13]==4.6.0; sys_platform != "win32"',  # kept as patched
        'tokenspeed-mla==0.1.8; platform_system == "Linux"',
    ]
    entry_points = files[f"{info}/entry_points.txt"].decode()
    assert "[console_scripts]\nvllm = vllm.entrypoints.cli.main:main\n" in entry_points
    assert "[vllm.general_plugins]\nlora_filesystem_resolver = " in entry_points
    rows = list(csv.reader(io.StringIO(files[f"{info}/RECORD"].decode())))
    assert sorted(row[0] for row in rows) == sorted(names)
    for name, hashed, size in rows:
        if name != f"{info}/RECORD":
            assert (hashed, size) == (digest(files[name]), str(len(files[name])))
    assert build_wheel(built_tree, tmp_path / "again", platform="win-amd64").read_bytes() == path.read_bytes()


def test_pip_installs_the_wheel(built_tree: Path, tmp_path: Path) -> None:
    path = build_wheel(built_tree, tmp_path / "dist")  # this platform's tag, so pip accepts it here
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(path)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (target / "vllm" / "vllm_flash_attn" / "_vllm_fa2_C.pyd").read_bytes() == b"MZ fa2"
    assert (target / "vllm-0.27.1.dist-info" / "RECORD").is_file()


def test_a_missing_native_module_is_an_error_and_leaves_no_wheel(built_tree: Path, tmp_path: Path) -> None:
    (built_tree / "vllm" / "_moe_C_stable_libtorch.pyd").unlink()
    with pytest.raises(KitError, match="native module vllm._moe_C_stable_libtorch is missing"):
        build_wheel(built_tree, tmp_path / "dist")
    assert list((tmp_path / "dist").iterdir()) == []


def test_bad_trees(tmp_path: Path, built_tree: Path) -> None:
    with pytest.raises(KitError, match="not a vLLM source tree"):
        build_wheel(tmp_path / "nothing", tmp_path / "dist")
    (built_tree / "PKG-INFO").write_text("Metadata-Version: 2.4\nName: vllm\nVersion: 0.5.0\n")
    with pytest.raises(KitError, match=r"no list of native modules for vLLM 0.5.0 \(cuda\)"):
        build_wheel(built_tree, tmp_path / "dist")


def rewrite(path: Path, change) -> Path:
    """A copy of the wheel with its members passed through change(name, data) -> [(name, data), ...]."""
    damaged = path.with_name("damaged-" + path.name)
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(damaged, "w") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        for name in source.namelist():
            for new_name, data in change(name, source.read(name)):
                out.writestr(new_name, data)
    return damaged


@pytest.fixture()
def wheel(built_tree: Path, tmp_path: Path) -> Path:
    return build_wheel(built_tree, tmp_path / "dist", platform="win-amd64")


def problems(path: Path, name: str) -> list[str]:
    return wheel_problems(path, native_modules("0.27.1", "cuda"), name)


def test_damaged_wheels_are_refused(wheel: Path) -> None:
    name = wheel.name
    assert problems(wheel, name) == []
    changed = rewrite(wheel, lambda n, d: [(n, d + b" " if n == "vllm/__init__.py" else d)])
    assert problems(changed, name) == ["vllm/__init__.py: hash or size differs from RECORD"]
    doubled = rewrite(wheel, lambda n, d: [(n, d), (n.upper(), d)] if n == "vllm/_version.py" else [(n, d)])
    assert problems(doubled, name) == [
        "vllm/_version.py: stored 2 times (case-insensitively)",
        "VLLM/_VERSION.PY: not in RECORD",
    ]
    extra = rewrite(wheel, lambda n, d: [(n, d), ("vllm/extra.py", b"")] if n == "vllm/_version.py" else [(n, d)])
    assert problems(extra, name) == ["vllm/extra.py: not in RECORD"]
    dropped = rewrite(wheel, lambda n, d: [] if n == "vllm/_C_stable_libtorch.pyd" else [(n, d)])
    assert problems(dropped, name) == [
        "vllm/_C_stable_libtorch.pyd: in RECORD but not in the wheel",
        "native module vllm._C_stable_libtorch is missing",
    ]
    assert problems(wheel, name.replace("win_amd64", "linux_x86_64")) == [
        "WHEEL has no 'Tag: "
        + name.split("-", 2)[2].replace("win_amd64", "linux_x86_64")[: -len(".whl")]
        + "' (the file name's tag)"
    ]
    assert problems(wheel, "vllm.whl") == ["vllm.whl: not a wheel file name (NAME-VERSION-PY-ABI-PLATFORM.whl)"]


def test_a_corrupt_member_fails_the_crc(wheel: Path) -> None:
    stored = rewrite(wheel, lambda n, d: [(n, d)])  # uncompressed, so the bytes can be found
    data = bytearray(stored.read_bytes())
    at = data.index(b"MZ fa2")
    data[at : at + 6] = b"MZ fa3"
    stored.write_bytes(bytes(data))
    assert problems(stored, wheel.name) == [
        "vllm/vllm_flash_attn/_vllm_fa2_C.pyd: corrupt (Bad CRC-32 for file 'vllm/vllm_flash_attn/_vllm_fa2_C.pyd')"
    ]


def test_wheel_command(built_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["windows", "wheel", "--tree", str(built_tree), "--out", str(tmp_path / "dist")]) == 0
    assert "validated" in capsys.readouterr().out
    assert main(["windows", "wheel", "--tree", str(built_tree), "--out", str(tmp_path / "d2"), "--device", "cpu"]) == 1
    assert "native module vllm._C is missing" in capsys.readouterr().err
