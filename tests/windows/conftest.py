"""Fixtures for the Windows build kit tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from multi_turboquant.windows.gittools import init_and_commit

from .helpers import FIRST, PRISTINE, SECOND, FakeIndex, make_series, write_files


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A pristine vLLM 0.19.0 look-alike, committed as a git work tree like `mtq windows fetch` leaves it."""
    root = tmp_path / "vllm"
    write_files(root, PRISTINE)
    init_and_commit(root, "pristine")
    return root


@pytest.fixture()
def series_root(tree: Path, tmp_path: Path) -> Path:
    """A patch root holding a two-patch series for vLLM 0.19.0 (the second has two hunks and a new file)."""
    root = tmp_path / "patches"
    make_series(tree, root / "vllm-0.19.0", {"0001-setup.patch": FIRST, "0002-ops.patch": SECOND})
    return root


@pytest.fixture()
def fake_index(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIndex]:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    index = FakeIndex()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            index.requests.append(self.path)
            index.authorizations.append(self.headers["Authorization"])
            if self.path == "/simple/vllm/":
                assert "application/vnd.pypi.simple.v1+json" in self.headers["Accept"]
                content_type, body = index.page()
            elif self.path.startswith("/files/") and self.path[7:] in index.files:
                content_type, body = "application/octet-stream", index.files[self.path[7:]]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    index.url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    yield index
    server.shutdown()
    server.server_close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "network: downloads real vLLM sdists from the package index")
