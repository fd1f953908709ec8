"""Helpers for the Windows build kit tests: a tiny vLLM-like tree, patch series, sdists, a fake index."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

PRISTINE = {
    "PKG-INFO": "Metadata-Version: 2.4\nName: vllm\nVersion: 0.19.0\n",
    "setup.py": "import os\n\nVERSION = '0.19.0'\n\n\ndef build():\n    return os.name\n",
    "csrc/ops.cu": "".join(f"int op{i}() {{ return {i}; }}\n" for i in range(40)),
    "vllm/__init__.py": "from vllm._version import __version__\n",
    ".gitignore": "vllm/_version.py\nbuild/\n",
    "vllm/_version.py": "__version__ = version = '0.19.0'\n",
}


def write_files(root: Path, files: dict[str, str | None]) -> None:
    """Write (or, for None, delete) files under root."""
    for name, content in files.items():
        path = root / name
        if content is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode())


def sh(cwd: Path, *args: str) -> str:
    """Run a command; its output is decoded without newline translation (diffs may hold CRLF)."""
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True).stdout.decode()


def make_series(tree: Path, folder: Path, patches: dict[str, dict[str, str | None]]) -> Path:
    """Build a series folder whose patches make the given file changes, each on top of the previous."""
    scratch = folder.parent / f".scratch-{folder.name}"
    subprocess.run(["git", "clone", "-q", str(tree), str(scratch)], check=True)
    folder.mkdir(parents=True)
    for name, changes in patches.items():
        write_files(scratch, changes)
        sh(scratch, "git", "add", "-A", "-f")
        diff = sh(scratch, "git", "diff", "--cached", "--no-renames", "--src-prefix=a/", "--dst-prefix=b/")
        (folder / name).write_bytes(f"Description of {name}\n\n{diff}".encode())
        sh(scratch, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", name)
    (folder / "series").write_text("# Windows series\n" + "\n".join(patches) + "\n")
    (folder / "README.md").write_text("# patches\n" + "".join(f"- {name}\n" for name in patches))
    return folder


FIRST = {"setup.py": PRISTINE["setup.py"].replace("os.name", "'nt' if os.name == 'nt' else os.name")}
SECOND = {
    "csrc/ops.cu": PRISTINE["csrc/ops.cu"].replace("op3()", "op3_msvc()").replace("op30()", "op30_msvc()"),
    "csrc/win.h": "#pragma once\n",
}


def make_sdist(version: str, files: dict[str, str], root: str | None = None) -> bytes:
    """A .tar.gz whose members lie under `root/` (default vllm-VERSION/)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(f"{root or f'vllm-{version}'}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class FakeIndex:
    """A package index on localhost serving vLLM sdists through the JSON (or HTML) simple API."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # overrides the real sha256
    json_api: bool = True
    requests: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    def add(self, version: str, data: bytes) -> str:
        self.files[f"vllm-{version}.tar.gz"] = data
        return hashlib.sha256(data).hexdigest()

    def page(self) -> tuple[str, bytes]:
        digests = {name: self.hashes.get(name, hashlib.sha256(data).hexdigest()) for name, data in self.files.items()}
        if self.json_api:
            files = [{"filename": n, "url": f"../../files/{n}", "hashes": {"sha256": h}} for n, h in digests.items()]
            return "application/vnd.pypi.simple.v1+json", json.dumps({"name": "vllm", "files": files}).encode()
        links = "".join(f'<a href="/files/{n}#sha256={h}">{n}</a><br>' for n, h in digests.items())
        return "text/html", f"<html><body>{links}</body></html>".encode()
