"""Linux tests of the Windows branches of the runtime (0003) and build (0001) patches.

Each test takes the patched function out of a real, patched vLLM file (sdist + series) and
runs it with a fake ``sys`` whose platform is ``win32`` (and fake ``msvcrt``/missing ``fcntl``),
then with the real Linux ``sys`` to check that Linux behaviour is unchanged.
"""
from __future__ import annotations

import ast
import contextlib
import errno
import json
import os
import re
import socket
import struct
import sys
import tempfile
import types
from collections.abc import Callable, Generator
from pathlib import Path

import pytest
import torch

from .test_scanner_sdist import PATCHES, SDIST_SHA256, extract, git_apply

WIN = types.SimpleNamespace(platform="win32", argv=[])
RUNTIME_FILES = {
    "setup.py",
    "vllm/envs.py",
    "vllm/utils/network_utils.py",
    "vllm/utils/system_utils.py",
    "vllm/entrypoints/openai/api_server.py",
    "vllm/distributed/parallel_state.py",
    "vllm/model_executor/model_loader/weight_utils.py",
    "vllm/model_executor/layers/fused_moe/routed_experts_capturer.py",
    "vllm/distributed/kv_transfer/kv_connector/v1/example_hidden_states_connector.py",
}


@pytest.fixture(scope="module", params=sorted(SDIST_SHA256))
def patched(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(version, tree): the files patched by 0001/0003, with both patches applied."""
    version = request.param
    folder = PATCHES / f"vllm-{version}"
    touched = {
        line.split(" b/", 1)[1]
        for name in ("0001-build-system.patch", "0003-windows-runtime.patch")
        for line in (folder / name).read_text().splitlines()
        if line.startswith("diff --git ")
    }
    tree = extract(version, tmp_path_factory.mktemp(f"vllm-{version}"), touched.__contains__)
    for name in ("0001-build-system.patch", "0003-windows-runtime.patch"):
        git_apply(tree, folder / name)
    return version, tree


def load(path: Path, *names: str, **namespace: object) -> dict[str, object]:
    """Execute the top-level definitions ``names`` of ``path`` in ``namespace`` and return it."""
    module = ast.parse(path.read_text())
    nodes = [
        node
        for node in module.body
        if (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names)
        or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) in names for t in node.targets))
    ]
    assert {getattr(n, "name", None) or n.targets[0].id for n in nodes} == set(names)  # type: ignore[attr-defined]
    namespace.setdefault("__builtins__", __builtins__)
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def test_runtime_patch_touches_only_guarded_code(patched: tuple[str, Path]) -> None:
    """Every added line that changes behaviour sits under a win32 check (or a hasattr guard)."""
    version, _ = patched
    text = (PATCHES / f"vllm-{version}" / "0003-windows-runtime.patch").read_text()
    assert text.count('sys.platform == "win32"') >= 8
    assert set(re.findall(r"^\+\+\+ b/(\S+)", text, re.MULTILINE)) <= RUNTIME_FILES


def test_in_process_engine_is_the_windows_default(patched: tuple[str, Path]) -> None:
    _, tree = patched
    envs = ast.parse((tree / "vllm/envs.py").read_text())
    (table,) = [
        n.value
        for n in envs.body
        if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "environment_variables"
    ]
    assert isinstance(table, ast.Dict)
    (entry,) = [v for k, v in zip(table.keys, table.values) if getattr(k, "value", None) == "VLLM_ENABLE_V1_MULTIPROCESSING"]
    getter = compile(ast.Expression(entry), "envs.py", "eval")

    def value(platform: object, environ: dict[str, str]) -> bool:
        fake_os = types.SimpleNamespace(getenv=environ.get)
        return eval(getter, {"os": fake_os, "sys": platform})()  # noqa: S307 - vLLM's own lambda

    assert value(WIN, {}) is False
    assert value(sys, {}) is True
    assert value(WIN, {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}) is True


def test_zmq_ipc_path_is_tcp_on_windows(patched: tuple[str, Path]) -> None:
    _, tree = patched
    stubs = {"envs": types.SimpleNamespace(VLLM_RPC_BASE_PATH="/tmp/rpc"), "uuid4": lambda: "id", "get_open_port": lambda: 5555}
    windows = load(tree / "vllm/utils/network_utils.py", "get_open_zmq_ipc_path", sys=WIN, **stubs)
    assert windows["get_open_zmq_ipc_path"]() == "tcp://127.0.0.1:5555"  # type: ignore[operator]
    linux = load(tree / "vllm/utils/network_utils.py", "get_open_zmq_ipc_path", sys=sys, **stubs)
    assert linux["get_open_zmq_ipc_path"]() == "ipc:///tmp/rpc/id"  # type: ignore[operator]


def force_spawn(tree: Path, platform: object) -> dict[str, str]:
    """Run the patched _maybe_force_spawn on a fake os.environ; returns that environ."""
    environ: dict[str, str] = {}
    ns = load(
        tree / "vllm/utils/system_utils.py",
        "_maybe_force_spawn",
        sys=platform,
        os=types.SimpleNamespace(environ=environ),
        is_in_ray_actor=lambda: False,
        cuda_is_initialized=lambda: False,
        xpu_is_initialized=lambda: False,
        in_wsl=lambda: False,
        logger=types.SimpleNamespace(warning=lambda *a, **k: None),
    )
    ns["_maybe_force_spawn"]()  # type: ignore[operator]
    return environ


def test_spawn_is_forced_on_windows(patched: tuple[str, Path]) -> None:
    _, tree = patched
    assert force_spawn(tree, WIN) == {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    assert force_spawn(tree, sys) == {}


def test_server_socket_without_so_reuseport(patched: tuple[str, Path]) -> None:
    version, tree = patched
    kwargs = {} if version == "0.19.0" else {"reuse_port": True}
    windows_socket = types.SimpleNamespace(**{k: getattr(socket, k) for k in dir(socket) if k != "SO_REUSEPORT"})
    for module in (windows_socket, socket):
        ns = load(
            tree / "vllm/entrypoints/openai/api_server.py",
            "create_server_socket",
            socket=module,
            is_valid_ipv6_address=lambda addr: False,
        )
        sock = ns["create_server_socket"](("127.0.0.1", 0), **kwargs)  # type: ignore[operator]
        try:
            reuse_port = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            assert bool(reuse_port) is (module is socket)
        finally:
            sock.close()


def test_file_store_rendezvous(patched: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, tree = patched
    source = (tree / "vllm/distributed/parallel_state.py").read_text()
    calls = re.findall(r"(\n *if sys\.platform == \"win32\":\n[^\n]*_windows_file_init_method\(\n[^\n]*\n[^\n]*\n)?"
                       r" *torch\.distributed\.init_process_group\(\n *backend=\w+,\n *init_method=distributed_init_method",
                       source)
    assert calls and all(calls), "every init_process_group(init_method=...) call must convert on Windows"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ns = load(tree / "vllm/distributed/parallel_state.py", "_windows_file_init_method", os=os, tempfile=tempfile)
    convert = ns["_windows_file_init_method"]
    assert convert("env://") == "env://"
    url = convert("tcp://127.0.0.1:29512")  # type: ignore[operator]
    assert url == f"file://{tmp_path.as_posix()}/vllm-dist-127.0.0.1-29512"
    torch.distributed.init_process_group("gloo", init_method=url, rank=0, world_size=1)
    try:
        value = torch.ones(3)
        torch.distributed.all_reduce(value)
        assert value.tolist() == [1.0, 1.0, 1.0]
    finally:
        torch.distributed.destroy_process_group()


class FakeMsvcrt:
    """Records msvcrt.locking calls; the first LK_LOCK times out like the real one after ~10 s."""

    LK_LOCK, LK_UNLCK = 1, 0

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        self.calls.append((fd, mode, nbytes))
        if mode == self.LK_LOCK and len(self.calls) == 1:
            raise OSError(errno.EDEADLOCK, "Resource deadlock avoided")


def lock_module(version: str) -> str:
    if version == "0.19.0":
        return "vllm/model_executor/layers/fused_moe/routed_experts_capturer.py"
    return "vllm/distributed/kv_transfer/kv_connector/v1/example_hidden_states_connector.py"


def test_module_imports_without_fcntl_on_windows(patched: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    version, tree = patched
    module = ast.parse((tree / lock_module(version)).read_text())
    guards = [n for n in module.body if isinstance(n, ast.If) and "fcntl" in ast.unparse(n)]
    assert len(guards) == 1 and not any(
        isinstance(n, (ast.Import, ast.ImportFrom)) and "fcntl" in ast.unparse(n) for n in module.body
    )
    fake = FakeMsvcrt()
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` now raises ImportError
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    namespace: dict[str, object] = {"sys": WIN}
    exec(compile(ast.Module(body=guards, type_ignores=[]), "guard", "exec"), namespace)
    assert namespace["msvcrt"] is fake and "fcntl" not in namespace


def test_file_lock_uses_msvcrt_on_windows(patched: tuple[str, Path], tmp_path: Path) -> None:
    version, tree = patched
    fake = FakeMsvcrt()
    names = ("_lock_file", "_unlock_file", "_file_lock") if version == "0.19.0" else ("_lock_file",)
    ns = load(tree / lock_module(version), *names, sys=WIN, os=os, errno=errno, msvcrt=fake,
              contextmanager=contextlib.contextmanager, Generator=Generator)
    lock_file = tmp_path / "lock"
    lock_file.write_bytes(b"")
    if version == "0.19.0":
        with ns["_file_lock"](str(lock_file)):  # type: ignore[operator]
            pass
        assert [c[1:] for c in fake.calls] == [(1, 1), (1, 1), (0, 1)]  # timed out, retried, unlocked
    else:
        with lock_file.open() as handle:
            ns["_lock_file"](handle.fileno(), shared=True)  # type: ignore[operator]
        assert [c[1:] for c in fake.calls] == [(1, 1), (1, 1)]


def test_file_lock_still_uses_flock_on_linux(patched: tuple[str, Path], tmp_path: Path) -> None:
    import fcntl

    version, tree = patched
    names = ("_lock_file", "_unlock_file", "_file_lock") if version == "0.19.0" else ("_lock_file",)
    ns = load(tree / lock_module(version), *names, sys=sys, os=os, errno=errno, fcntl=fcntl,
              contextmanager=contextlib.contextmanager, Generator=Generator)
    lock_file = tmp_path / "lock"
    lock_file.write_bytes(b"")
    with lock_file.open() as other:
        if version == "0.19.0":
            with ns["_file_lock"](str(lock_file)):  # type: ignore[operator]
                with pytest.raises(BlockingIOError):
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            with lock_file.open() as handle:
                ns["_lock_file"](handle.fileno())  # type: ignore[operator]
                with pytest.raises(BlockingIOError):
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released again


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file written from the format spec (8-byte header size, JSON header, data)."""
    codes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
             torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3"}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, tensor in tensors.items():
        blob = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": codes[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_unmapped_safetensors_reader(patched: tuple[str, Path], tmp_path: Path) -> None:
    _, tree = patched
    weight_utils = tree / "vllm/model_executor/model_loader/weight_utils.py"
    assert 'elif sys.platform == "win32":\n            # safe_open maps' in weight_utils.read_text()
    ns = load(weight_utils, "_SAFETENSORS_DTYPES", "_read_safetensors_unmapped", torch=torch, json=json,
              struct=struct, Callable=Callable, Generator=Generator)
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "b.weight": torch.randn(3, 5, generator=gen),
        "a.bias": torch.randn(7, generator=gen).to(torch.bfloat16),
        "c.half": torch.randn(2, 2, 2, generator=gen).half(),
        "d.ids": torch.arange(-4, 4, dtype=torch.int64),
        "e.mask": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(2.5),
        "g.empty": torch.empty(0, 4),
        "h.fp8": torch.randn(4, generator=gen).to(torch.float8_e4m3fn),
        "i.i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
    }
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors)
    read = list(ns["_read_safetensors_unmapped"](str(path), lambda name: name.startswith("c.")))  # type: ignore[operator]
    assert [name for name, _ in read] == sorted(n for n in tensors if not n.startswith("c."))
    for name, tensor in read:
        expected = tensors[name]
        assert tensor.dtype == expected.dtype and tensor.shape == expected.shape
        assert torch.equal(tensor.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        list(ns["_read_safetensors_unmapped"](str(truncated), lambda name: False))  # type: ignore[operator]


def test_setup_paths_and_ninja_on_windows(patched: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sysconfig

    _, tree = patched
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    windows = load(tree / "setup.py", "cmake_path", "ninja_path", sys=WIN, os=os, which=lambda name: None)
    assert windows["cmake_path"]("C:\\venv\\Scripts\\python.exe") == "C:/venv/Scripts/python.exe"  # type: ignore[operator]
    assert windows["ninja_path"]() is None  # type: ignore[operator]
    (tmp_path / "ninja.exe").write_bytes(b"")
    assert windows["ninja_path"]() == os.path.join(str(tmp_path), "ninja.exe")  # type: ignore[operator]
    linux = load(tree / "setup.py", "cmake_path", "ninja_path", sys=sys, os=os, which=lambda name: None)
    assert linux["cmake_path"]("a\\b") == "a\\b"  # type: ignore[operator]
    assert linux["ninja_path"]() is None  # type: ignore[operator]
