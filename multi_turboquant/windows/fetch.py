"""`mtq windows fetch`: a vLLM source tree for one version, checksum-verified, as a git work tree.

The sdist comes from pip's configured package index through the simple API (JSON per PEP 691,
HTML per PEP 503 as a fallback), is cached outside the repository, verified against the index's
sha256, extracted without letting any member escape the target, and committed as the pristine tree
that the patch command diffs against. `--source git` clones the release tag instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlsplit, urlunsplit

from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.gittools import git, git_executable, init_and_commit

PROJECT = "vllm"
DEFAULT_INDEX = "https://pypi.org/simple"
DEFAULT_GIT_URL = "https://github.com/vllm-project/vllm.git"
JSON_SIMPLE = "application/vnd.pypi.simple.v1+json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Sdist:
    filename: str
    url: str
    sha256: str


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where downloaded sdists are kept: $MTQ_CACHE_DIR/sdists, by default ~/.cache/multi-turboquant/sdists."""
    root = environ.get("MTQ_CACHE_DIR") or Path.home() / ".cache" / "multi-turboquant"
    return Path(root) / "sdists"


def pip_config_list() -> str:
    """The output of `pip config list` for this Python ('' when pip cannot tell)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def index_url(environ: Mapping[str, str] = os.environ, pip_config: Callable[[], str] = pip_config_list) -> str:
    """pip's index: PIP_INDEX_URL, else index-url from `pip config list`, else PyPI."""
    if environ.get("PIP_INDEX_URL"):
        return environ["PIP_INDEX_URL"]
    settings = dict(re.findall(r"^(\S+?)=['\"]?(.*?)['\"]?$", pip_config(), re.MULTILINE))
    for key in (":env:.index-url", "download.index-url", "install.index-url", "global.index-url"):
        if settings.get(key):
            return settings[key]
    return DEFAULT_INDEX


class _LinkParser(HTMLParser):
    """Collects (href, text) of the anchors of a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((self._href, data.strip()))
            self._href = None


def _project_files(page_url: str, content_type: str, body: bytes) -> dict[str, tuple[str, str | None]]:
    """filename -> (absolute url, sha256 or None) from a simple-API project page."""
    if content_type.startswith(JSON_SIMPLE):
        files = json.loads(body)["files"]
        return {f["filename"]: (urljoin(page_url, f["url"]), f.get("hashes", {}).get("sha256")) for f in files}
    parser = _LinkParser()
    parser.feed(body.decode("utf-8", "replace"))
    result = {}
    for href, text in parser.links:
        url, fragment = urldefrag(urljoin(page_url, href))
        result[text] = (url, fragment[len("sha256=") :] if fragment.startswith("sha256=") else None)
    return result


def _without_credentials(url: str) -> tuple[str, str | None]:
    """The URL without `user:password@`, and the Basic authorization header those give."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    return urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"


def _open(url: str, accept: str = "*/*") -> HTTPResponse:
    """GET url (credentials in it become a Basic authorization header); errors name the URL without them."""
    plain, authorization = _without_credentials(url)
    headers = {"Accept": accept, "User-Agent": "multi-turboquant"}
    if authorization:
        headers["Authorization"] = authorization
    try:
        return urllib.request.urlopen(urllib.request.Request(plain, headers=headers), timeout=60)
    except urllib.error.HTTPError as exc:
        raise KitError(f"{plain}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:  # HTTPException: e.g. a bad status line
        raise KitError(f"cannot reach {plain}: {getattr(exc, 'reason', exc)}") from None


def find_sdist(version: str, index: str) -> Sdist:
    """The vLLM sdist of `version` on the index, with its sha256."""
    page = index.rstrip("/") + f"/{PROJECT}/"
    with _open(page, accept=f"{JSON_SIMPLE}, text/html;q=0.1") as response:
        # Relative file URLs resolve against the final (redirected) path, keeping page's credentials.
        base = urljoin(page, urlsplit(response.geturl()).path)
        try:
            files = _project_files(base, response.headers.get("Content-Type", ""), response.read())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON that is not a PEP 691 page
            raise KitError(f"{_without_credentials(page)[0]} is not a valid simple-API project page: {exc!r}") from None
        except (OSError, HTTPException) as exc:
            raise KitError(f"cannot read {_without_credentials(page)[0]}: {exc}") from None
    filename = f"{PROJECT}-{version}.tar.gz"
    if filename not in files:
        known = sorted(
            {m[1] for name in files if (m := re.fullmatch(rf"{PROJECT}-(.+)\.tar\.gz", name))},
            key=lambda v: [int(p) if p.isdigit() else -1 for p in re.split(r"[.+-]", v)],
        )
        latest = ", ".join(known[-8:]) or "none"
        raise KitError(
            f"vLLM {version} has no sdist on {_without_credentials(index)[0]}; latest versions there: {latest}"
        )
    url, sha256 = files[filename]
    if not sha256:
        raise KitError(f"{_without_credentials(page)[0]} gives no sha256 for {filename}: cannot verify the download")
    return Sdist(filename, url, sha256.lower())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(sdist: Sdist, cache: Path) -> Path:
    """The sdist in the cache, downloaded first unless a copy with the right sha256 is there."""
    target = cache / sdist.filename
    if target.is_file() and sha256_of(target) == sdist.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    part = tempfile.NamedTemporaryFile(dir=cache, prefix=f".{sdist.filename}.", delete=False)
    try:
        with part, _open(sdist.url) as response:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                part.write(chunk)
    except (OSError, HTTPException) as exc:  # the connection broke or timed out mid-download
        os.unlink(part.name)  # closed by now: Windows cannot delete an open file
        raise KitError(f"download of {_without_credentials(sdist.url)[0]} failed: {exc}") from None
    except BaseException:
        os.unlink(part.name)
        raise
    if digest.hexdigest() != sdist.sha256:
        os.unlink(part.name)
        url = _without_credentials(sdist.url)[0]
        raise KitError(f"checksum mismatch for {url}: got sha256 {digest.hexdigest()}, the index says {sdist.sha256}")
    os.replace(part.name, target)  # atomic: concurrent fetches never see a partial file
    return target


def _safe_members(tar: tarfile.TarFile, root: str) -> list[tarfile.TarInfo]:
    """The archive's members, refused when one lies outside the `root/` folder."""
    members = tar.getmembers()
    for member in members:
        parts = member.name.replace("\\", "/").split("/")
        if parts[0] != root or ".." in parts or member.name.startswith(("/", "\\")) or ":" in member.name:
            raise KitError(f"unsafe archive: member {member.name!r} is outside {root}/")
        if member.issym():
            # The extraction filter only keeps links inside the staging folder, one level above root/.
            link = member.linkname.replace("\\", "/")  # Windows reads either separator
            target = posixpath.normpath(posixpath.join("/".join(parts[:-1]), link))
            if target.split("/")[0] != root or link.startswith("/") or ":" in link:
                raise tarfile.LinkOutsideDestinationError(member, target)  # reported like the filter's refusals
    return members


def extract(archive: Path, dest: Path, root: str) -> None:
    """Extract the archive's `root/` folder as `dest` (which must not exist or be empty)."""
    if not hasattr(tarfile, "data_filter"):
        raise KitError("safe extraction needs Python 3.10.12, 3.11.4 or newer (tarfile extraction filters)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.extracting-"))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(staging, members=_safe_members(tar, root), filter="data")
        if dest.exists():
            dest.rmdir()
        (staging / root).rename(dest)
    except tarfile.FilterError as exc:
        raise KitError(f"unsafe archive {archive.name}: {exc}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise KitError(f"cannot extract {archive}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_target(dest: Path) -> None:
    """Refuse a target directory that exists and is not empty (or is a file)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise KitError(f"{dest} already exists and is not empty: choose another directory")


def fetch_sdist(
    version: str, dest: Path, environ: Mapping[str, str] = os.environ, pip_config: Callable[[], str] = pip_config_list
) -> Path:
    """Download (or reuse), verify and extract the sdist of `version` into `dest`, committed with git."""
    check_target(dest)
    git_executable()
    sdist = find_sdist(version, index_url(environ, pip_config))
    archive = download(sdist, cache_dir(environ))
    extract(archive, dest, f"{PROJECT}-{version}")
    init_and_commit(dest, f"vLLM {version} pristine sdist ({sdist.filename}, sha256 {sdist.sha256})")
    return archive


def fetch_git(version: str, dest: Path, url: str = DEFAULT_GIT_URL) -> None:
    """Clone the `vVERSION` tag of vLLM into `dest` (git checks the objects' hashes)."""
    check_target(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = git(
        dest.parent,
        "clone",
        "--quiet",
        "--depth",
        "1",
        "--branch",
        f"v{version}",
        "--config",
        "core.autocrlf=false",
        url,
        str(dest.resolve()),
        check=False,
    )
    if proc.returncode != 0:
        raise KitError(f"git clone of tag v{version} from {url} failed:\n{proc.stderr.strip()}")
