"""Thin wrappers around the `git` command line, shared by the fetch and patch commands."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from multi_turboquant.windows.errors import KitError

# Settings that keep git's behaviour independent of the user's configuration: no CRLF
# conversion (patches and sdists use LF), paths over 260 characters on Windows, unquoted UTF-8
# paths, no signing prompts.
_FIXED_SETTINGS = (
    "core.autocrlf=false",
    "core.longpaths=true",
    "core.quotepath=false",
    "commit.gpgsign=false",
    "user.name=multi-turboquant",
    "user.email=mtq@localhost",
)
_FIXED_CONFIG = [arg for setting in _FIXED_SETTINGS for arg in ("-c", setting)]


def git_executable() -> str:
    """The git program, or a KitError saying it is missing."""
    exe = shutil.which("git")
    if exe is None:
        raise KitError("git is not installed or not on PATH (needed to lay out and patch the vLLM tree)")
    return exe


def git(
    repo: Path, *args: str, env: Mapping[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `git -C repo ARGS`; with check, a failure becomes a KitError carrying git's message."""
    raw = subprocess.run(
        [git_executable(), "-C", str(repo), *_FIXED_CONFIG, *args],
        capture_output=True,
        env={**os.environ, **(env or {})},
    )
    # Decoded by hand: text mode would turn the CRLF lines of a diff into LF.
    proc = subprocess.CompletedProcess(
        raw.args, raw.returncode, raw.stdout.decode("utf-8", "surrogateescape"), raw.stderr.decode("utf-8", "replace")
    )
    if check and proc.returncode != 0:
        raise KitError(f"git {' '.join(args)} failed in {repo}:\n{proc.stderr.strip()}")
    return proc


def require_repo_root(tree: Path) -> None:
    """Fail unless `tree` exists and is the top directory of a git work tree with a commit."""
    if not tree.is_dir():
        raise KitError(f"tree {tree} does not exist (fetch one with `mtq windows fetch VERSION DIR`)")
    top = git(tree, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != tree.resolve():
        raise KitError(
            f"{tree} is not the root of a git work tree; `mtq windows fetch` lays the vLLM source out as one"
        )
    if git(tree, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode != 0:
        raise KitError(f"{tree} has no commit: commit the pristine vLLM tree first")


def changed_paths(repo: Path) -> list[str]:
    """Paths that differ from HEAD in the work tree or index, untracked files included."""
    out = git(repo, "status", "--porcelain", "--untracked-files=all").stdout
    return [line[3:] for line in out.splitlines() if line]


def init_and_commit(repo: Path, message: str) -> None:
    """Make `repo` a git repository whose first commit holds every file, ignored ones included."""
    git(repo, "init", "--quiet")
    git(repo, "config", "core.autocrlf", "false")
    git(repo, "config", "core.longpaths", "true")
    git(repo, "add", "--all", "--force", ".")
    git(repo, "commit", "--quiet", "--no-verify", "-m", message)


@contextlib.contextmanager
def worktree_index(repo: Path) -> Iterator[dict[str, str]]:
    """A throw-away index holding the work tree's content, untracked files included.

    Yields the environment that points git at it, so patches can be checked in sequence with
    `git apply --cached` without touching the work tree or the real index.
    """
    real_index = Path(git(repo, "rev-parse", "--path-format=absolute", "--git-path", "index").stdout.strip())
    with tempfile.TemporaryDirectory(prefix="mtq-index-") as tmp:
        scratch = Path(tmp) / "index"
        if real_index.exists():
            shutil.copyfile(real_index, scratch)
        env = {"GIT_INDEX_FILE": str(scratch)}
        if not real_index.exists():
            git(repo, "read-tree", "HEAD", env=env)
        git(repo, "add", "--all", ".", env=env)
        yield env
