"""`mtq windows fetch` against a package index on localhost and a local git repository."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

from multi_turboquant.cli import main
from multi_turboquant.windows import fetch
from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.gittools import changed_paths

from .helpers import PRISTINE, FakeIndex, make_sdist, sh

PIP_CONFIG = "global.find-links='/opt/wheels'\nglobal.index-url='https://mirror.example/simple'\n"


@pytest.fixture()
def env(fake_index: FakeIndex, tmp_path: Path) -> dict[str, str]:
    """Settings that point fetch at the fake index and a cache folder of this test."""
    return {"PIP_INDEX_URL": fake_index.url, "MTQ_CACHE_DIR": str(tmp_path / "cache")}


def run_fetch(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys, *args: str) -> tuple[int, str, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["windows", "fetch", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_index_url_sources() -> None:
    assert (
        fetch.index_url({"PIP_INDEX_URL": "https://env.example/simple"}, lambda: PIP_CONFIG)
        == "https://env.example/simple"
    )
    assert fetch.index_url({}, lambda: PIP_CONFIG) == "https://mirror.example/simple"
    assert fetch.index_url({}, lambda: ":env:.index-url='https://e/simple'\n" + PIP_CONFIG) == "https://e/simple"
    assert fetch.index_url({}, lambda: "global.find-links='/opt/wheels'\n") == fetch.DEFAULT_INDEX


def test_cache_dir() -> None:
    assert fetch.cache_dir({"MTQ_CACHE_DIR": "/c"}) == Path("/c/sdists")
    assert fetch.cache_dir({}) == Path.home() / ".cache/multi-turboquant/sdists"


def test_fetch_lays_out_a_committed_git_tree_and_caches_the_sdist(
    fake_index: FakeIndex, env: dict[str, str], tmp_path: Path, monkeypatch, capsys
) -> None:
    fake_index.add("0.19.0", make_sdist("0.19.0", PRISTINE))
    code, out, err = run_fetch(env, monkeypatch, capsys, "0.19.0", str(tmp_path / "src"))
    assert code == 0, err
    assert "vLLM 0.19.0 from" in out and str(tmp_path / "src") in out
    src = tmp_path / "src"
    assert (src / "PKG-INFO").read_text() == PRISTINE["PKG-INFO"]
    assert changed_paths(src) == []
    tracked = sh(src, "git", "ls-files").split()
    assert "vllm/_version.py" in tracked  # ignored by the sdist's .gitignore, committed all the same
    assert sh(src, "git", "log", "--format=%s").startswith("vLLM 0.19.0 pristine sdist")
    assert (tmp_path / "cache/sdists/vllm-0.19.0.tar.gz").is_file()
    downloads = [r for r in fake_index.requests if r.startswith("/files/")]

    code, _, err = run_fetch(env, monkeypatch, capsys, "0.19.0", str(tmp_path / "again"))
    assert code == 0, err
    assert [r for r in fake_index.requests if r.startswith("/files/")] == downloads  # served from the cache


def test_html_simple_index(fake_index: FakeIndex, env: dict[str, str], tmp_path: Path) -> None:
    fake_index.json_api = False
    sha = fake_index.add("0.27.1", make_sdist("0.27.1", {"PKG-INFO": "Version: 0.27.1\n"}))
    found = fetch.find_sdist("0.27.1", env["PIP_INDEX_URL"])
    assert found.sha256 == sha and found.url.endswith("/files/vllm-0.27.1.tar.gz")


def test_credentials_in_the_index_url(fake_index: FakeIndex, env: dict[str, str], tmp_path: Path) -> None:
    data = make_sdist("0.19.0", PRISTINE)
    fake_index.add("0.19.0", data)
    index = env["PIP_INDEX_URL"].replace("http://", "http://me:s%40cret@")
    sdist = fetch.find_sdist("0.19.0", index)
    assert fetch.download(sdist, tmp_path).read_bytes() == data
    assert fake_index.authorizations == ["Basic bWU6c0BjcmV0"] * 2  # base64 of me:s@cret, on the page and the file
    with pytest.raises(KitError) as failure:
        fetch.find_sdist("0.99.0", index)
    assert "cret" not in str(failure.value) and env["PIP_INDEX_URL"] in str(failure.value)


def test_unknown_version(fake_index: FakeIndex, env, tmp_path: Path, monkeypatch, capsys) -> None:
    for version in ("0.9.1", "0.19.0", "0.27.1"):
        fake_index.add(version, b"x")
    code, _, err = run_fetch(env, monkeypatch, capsys, "0.99.0", str(tmp_path / "src"))
    assert code == 1 and "vLLM 0.99.0 has no sdist on" in err and "0.9.1, 0.19.0, 0.27.1" in err
    assert "Traceback" not in err and not (tmp_path / "src").exists()


def test_checksum_mismatch_keeps_nothing(fake_index: FakeIndex, env, tmp_path: Path, monkeypatch, capsys) -> None:
    fake_index.add("0.19.0", make_sdist("0.19.0", PRISTINE))
    fake_index.hashes["vllm-0.19.0.tar.gz"] = "0" * 64
    code, _, err = run_fetch(env, monkeypatch, capsys, "0.19.0", str(tmp_path / "src"))
    assert code == 1 and "checksum mismatch" in err and "the index says " + "0" * 64 in err
    assert not (tmp_path / "src").exists()
    assert list((tmp_path / "cache/sdists").iterdir()) == []


def test_corrupt_cached_copy_is_downloaded_again(fake_index: FakeIndex, env, tmp_path: Path) -> None:
    data = make_sdist("0.19.0", PRISTINE)
    sdist = fetch.Sdist(
        "vllm-0.19.0.tar.gz", f"{env['PIP_INDEX_URL'][:-7]}/files/vllm-0.19.0.tar.gz", fake_index.add("0.19.0", data)
    )
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / sdist.filename).write_bytes(b"truncated")
    assert fetch.download(sdist, cache).read_bytes() == data


def test_existing_non_empty_dir(fake_index: FakeIndex, env, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src/keep.txt").write_text("mine")
    code, _, err = run_fetch(env, monkeypatch, capsys, "0.19.0", str(tmp_path / "src"))
    assert code == 1 and "already exists and is not empty" in err
    assert fake_index.requests == []  # refused before asking the index


def test_missing_git_is_reported_before_downloading(
    fake_index: FakeIndex, env, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    code, _, err = run_fetch(env, monkeypatch, capsys, "0.19.0", str(tmp_path / "src"))
    assert code == 1 and "git is not installed or not on PATH" in err
    assert fake_index.requests == []


def test_unreachable_index(tmp_path: Path, monkeypatch, capsys) -> None:
    env = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "MTQ_CACHE_DIR": str(tmp_path), "no_proxy": "127.0.0.1"}
    code, _, err = run_fetch(env, monkeypatch, capsys, "0.19.0", str(tmp_path / "src"))
    assert code == 1 and "cannot reach http://127.0.0.1:9/simple/vllm/" in err


def malicious(tmp_path: Path, *members: tuple[str, str]) -> Path:
    """An archive whose members are (name, symlink target or '' for a file)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, target in members:
            info = tarfile.TarInfo(name)
            if target:
                info.type, info.linkname = tarfile.SYMTYPE, target
            else:
                info.size = 4
            tar.addfile(info, io.BytesIO(b"evil") if not target else None)
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            [("vllm-1.0/ok.txt", ""), ("vllm-1.0/../../escaped.txt", "")],
            "member 'vllm-1.0/../../escaped.txt' is outside vllm-1.0/",
        ),
        ([("/tmp/absolute.txt", "")], "is outside vllm-1.0/"),
        ([("other/x.txt", "")], "is outside vllm-1.0/"),
        ([("vllm-1.0/link", "../../../etc"), ("vllm-1.0/link/passwd", "")], "unsafe archive evil.tar.gz"),
        # inside the staging folder the filter checks, but outside the tree once it is moved to its place
        ([("vllm-1.0/link", "../escaped.txt")], "unsafe archive evil.tar.gz: 'vllm-1.0/link' would link to"),
        ([("vllm-1.0/sub/link", "..\\..\\escaped.txt")], "unsafe archive evil.tar.gz: 'vllm-1.0/sub/link' would link"),
    ],
)
def test_extraction_refuses_path_traversal(tmp_path: Path, members, message: str) -> None:
    with pytest.raises(KitError, match=message.replace("(", r"\(").replace(".", r"\.")):
        fetch.extract(malicious(tmp_path, *members), tmp_path / "out" / "src", "vllm-1.0")
    assert not (tmp_path / "escaped.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []  # the staging folder is gone too


def test_git_source(tmp_path: Path, monkeypatch, capsys) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    sh(upstream, "git", "init", "-q")
    (upstream / "setup.py").write_text("print('vllm')\n")
    sh(upstream, "git", "add", "-A")
    sh(upstream, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "release")
    sh(upstream, "git", "tag", "v0.27.1")
    url = upstream.as_uri()
    code, out, err = run_fetch(
        {}, monkeypatch, capsys, "0.27.1", str(tmp_path / "src"), "--source", "git", "--git-url", url
    )
    assert code == 0, err
    assert "tag v0.27.1 of" in out and (tmp_path / "src/setup.py").is_file()
    code, _, err = run_fetch(
        {}, monkeypatch, capsys, "0.27.2", str(tmp_path / "other"), "--source", "git", "--git-url", url
    )
    assert code == 1 and "git clone of tag v0.27.2" in err


class _BrokenResponse(io.BytesIO):
    """A download whose connection drops after the first chunk."""

    def read(self, size: int = -1) -> bytes:
        if self.tell():
            raise ConnectionResetError(104, "Connection reset by peer")
        return super().read(size)


@pytest.mark.parametrize("error", [None, KeyboardInterrupt])
def test_broken_download_is_an_error_and_leaves_no_open_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException] | None
) -> None:
    """The partial file is closed before it is deleted (Windows refuses to delete an open file)."""
    response = _BrokenResponse(b"x" * 10)
    if error is not None:
        monkeypatch.setattr(response, "read", lambda size=-1: (_ for _ in ()).throw(error()))
    monkeypatch.setattr(fetch, "_open", lambda url, accept="*/*": response)
    unlinked: list[bool] = []
    real_unlink = fetch.os.unlink

    def unlink(path: str) -> None:
        unlinked.append(any(Path(f"/proc/self/fd/{fd}").resolve() == Path(path) for fd in os.listdir("/proc/self/fd")))
        real_unlink(path)

    monkeypatch.setattr(fetch.os, "unlink", unlink)
    sdist = fetch.Sdist("vllm-0.19.0.tar.gz", "https://me:secret@example.invalid/vllm-0.19.0.tar.gz", "0" * 64)
    with pytest.raises(error or KitError) as failure:
        fetch.download(sdist, tmp_path)
    if error is None:
        assert "download of https://example.invalid/vllm-0.19.0.tar.gz failed" in str(failure.value)
        assert "Connection reset" in str(failure.value) and "secret" not in str(failure.value)
    if sys.platform.startswith("linux"):
        assert unlinked == [False]  # deleted once, and no longer open when deleted
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("body", [b'{"name": "vllm"}', b"<html>not json</html>", b'{"files": [{"url": "x"}]}', b"[]"])
def test_malformed_json_page_is_an_error_not_a_traceback(
    fake_index: FakeIndex, env, tmp_path: Path, monkeypatch, capsys, body: bytes
) -> None:
    monkeypatch.setattr(fake_index, "page", lambda: ("application/vnd.pypi.simple.v1+json", body))
    code, _, err = run_fetch(env, monkeypatch, capsys, "0.19.0", str(tmp_path / "src"))
    assert code == 1 and "/simple/vllm/ is not a valid simple-API project page" in err
    assert "Traceback" not in err and not (tmp_path / "src").exists()


def test_server_speaking_no_http_is_an_error(tmp_path: Path, monkeypatch, capsys) -> None:
    """A bad status line raises http.client.BadStatusLine, which is no OSError."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/simple"
    env = {"PIP_INDEX_URL": url, "MTQ_CACHE_DIR": str(tmp_path), "no_proxy": "127.0.0.1"}
    try:
        code, _, err = run_fetch(env, monkeypatch, capsys, "0.19.0", str(tmp_path / "src"))
    finally:
        thread.join(5)
        server.close()
    assert code == 1 and f"cannot reach {url}/vllm/" in err
