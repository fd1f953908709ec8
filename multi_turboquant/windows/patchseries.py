"""`mtq windows patch`: apply, check, reverse and regenerate the Windows patch series of a vLLM tree.

A series is a folder `patches/vllm-<VERSION>/` with a `series` file (patch file names in order,
`#` comments allowed), the patches (git-style unified diffs, `git apply -p1` at the vLLM root) and
a README.md. Patches are checked in sequence on a throw-away index, so a failing check touches
nothing, and failures name the patch file, the file, the hunk and its line in the patch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.gittools import changed_paths, git, require_repo_root, worktree_index

PATCHES_DIR = Path(__file__).with_name("patches")
HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
PATCH_NAME_RE = re.compile(r"[\w.+-]+\.patch")


@dataclass(frozen=True)
class Hunk:
    header: str  # "@@ -a,b +c,d @@"
    line: int  # 1-based line of the header in the patch file
    old_start: int
    new_start: int


@dataclass
class FileDiff:
    path: str
    start: int  # 0-based index of its first line in the patch
    end: int = 0  # one past its last line
    hunks: list[Hunk] = field(default_factory=list)


@dataclass
class Patch:
    name: str
    text: str
    preamble: str  # the description before the first diff, kept by --regenerate
    files: list[FileDiff]


@dataclass
class Series:
    version: str
    folder: Path
    lines: list[str]  # the series file, comments included
    patches: list[Patch]


def split_lines(text: str) -> list[str]:
    """Lines with their '\\n' kept, split on '\\n' only (diffs may hold '\\r' or form feeds)."""
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def _strip_prefix(path: str) -> str:
    path = path.split("\t")[0].rstrip("\n")
    return path[2:] if path.startswith(("a/", "b/")) else path


def _git_header_path(line: str) -> str:
    """The path of a `diff --git a/P b/P` line."""
    rest = line[len("diff --git ") :].rstrip("\n")
    half = len(rest) // 2
    if len(rest) % 2 and rest[half] == " " and rest[2:half] == rest[half + 3 :]:
        return rest[half + 3 :]
    return _strip_prefix(rest.rsplit(" ", 1)[-1])


class _PatchParser:
    """Reads a unified diff far enough to know its files, hunks and where each starts."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.lines = split_lines(text)
        self.files: list[FileDiff] = []
        self.in_header = False  # between a file's `diff --git` and its first hunk

    def fail(self, index: int, message: str) -> KitError:
        file = f" {self.files[-1].path}:" if self.files else ""
        return KitError(f"{self.name}:{file} line {index + 1}: {message}")

    def start_file(self, index: int, path: str) -> None:
        if self.files:
            self.files[-1].end = index
        self.files.append(FileDiff(path, index))
        self.in_header = True

    def parse(self) -> Patch:
        i = 0
        while i < len(self.lines):
            line = self.lines[i]
            if line.startswith("diff --git "):
                if line.endswith("\r\n"):
                    raise self.fail(
                        i,
                        "CRLF line endings: the patch file was converted (core.autocrlf?); "
                        "restore LF endings, e.g. with `*.patch -text` in .gitattributes",
                    )
                self.start_file(i, _git_header_path(line))
            elif line.startswith("--- ") and i + 1 < len(self.lines) and self.lines[i + 1].startswith("+++ "):
                new, old = _strip_prefix(self.lines[i + 1][4:]), _strip_prefix(line[4:])
                path = old if new == "/dev/null" else new
                if not self.in_header:
                    self.start_file(i, path)
                self.files[-1].path = path
                self.in_header = False
                i += 1
            elif line.startswith("@@"):
                i = self.hunk(i)
                continue
            elif self.files and not self.in_header and line.startswith(("+", "-")) and not line.startswith("-- "):
                raise self.fail(i, self.stray(line.rstrip()))
            i += 1
        if not self.files:
            raise KitError(f"{self.name}: no diff found in the patch")
        self.files[-1].end = len(self.lines)
        preamble = "".join(self.lines[: self.files[0].start])
        return Patch(self.name, "".join(self.lines), preamble, self.files)

    def stray(self, line: str) -> str:
        """Why a +/- line outside a hunk's counted body is an error."""
        hunks = self.files[-1].hunks
        if not hunks:
            return f"{line!r} comes before the file's first @@ hunk header"
        return f"{line!r} is past the end of hunk {hunks[-1].header} (line {hunks[-1].line}): its line counts are too small"

    def hunk(self, i: int) -> int:
        """Record the hunk whose header is line i; return the index after its body."""
        header = self.lines[i].rstrip("\n")
        match = HUNK_RE.match(header)
        if not self.files or self.in_header:
            raise self.fail(i, f"hunk {header!r} comes before any file header (---/+++ lines)")
        if match is None:
            raise self.fail(i, f"malformed hunk header {header!r}")
        hunk = Hunk(match[0], i + 1, int(match[1]), int(match[3]))
        old = 1 if match[2] is None else int(match[2])
        new = 1 if match[4] is None else int(match[4])
        j = i + 1
        while old > 0 or new > 0:
            body = self.lines[j] if j < len(self.lines) else ""
            kind = body[:1]
            if kind in (" ", "\n") and old > 0 and new > 0:  # an empty line is an empty context line
                old, new = old - 1, new - 1
            elif kind == "-" and old > 0:
                old -= 1
            elif kind == "+" and new > 0:
                new -= 1
            elif kind != "\\":
                raise self.fail(
                    j, f"hunk {hunk.header} (line {hunk.line}) ends early: {old} old and {new} new lines still expected"
                )
            j += 1
        if j < len(self.lines) and self.lines[j].startswith("\\"):
            j += 1
        self.files[-1].hunks.append(hunk)
        self.in_header = False
        return j


def parse_patch(name: str, text: str) -> Patch:
    """Parse a patch; a malformed one raises a KitError naming the patch, file, hunk and line."""
    return _PatchParser(name, text).parse()


def read_text(path: Path) -> str:
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as f:
        return f.read()


def write_text(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        f.write(text)


# ------------------------------------------------------------------------------- series files
def supported_versions(root: Path = PATCHES_DIR) -> list[str]:
    return sorted(p.name[len("vllm-") :] for p in root.glob("vllm-*") if (p / "series").is_file())


def series_names(lines: list[str]) -> list[str]:
    """Patch names of a series file's lines, skipping blanks and `#` comments."""
    return [name for line in lines if (name := line.split("#", 1)[0].strip())]


def load_series(folder: Path, version: str) -> Series:
    """Read and parse a series folder; missing or malformed entries raise a KitError."""
    series_file = folder / "series"
    if not series_file.is_file():
        raise KitError(f"no patch series for vLLM {version}: {series_file} does not exist")
    lines = read_text(series_file).splitlines()
    names = series_names(lines)
    patches = []
    for name in names:
        if not PATCH_NAME_RE.fullmatch(name):
            raise KitError(f"{series_file}: {name!r} is not a patch file name (NNNN-short-name.patch)")
        if names.count(name) > 1:
            raise KitError(f"{series_file}: {name} is listed twice")
        if not (folder / name).is_file():
            raise KitError(f"{series_file} lists {name}, which is not in {folder}")
        patches.append(parse_patch(name, read_text(folder / name)))
    return Series(version, folder, lines, patches)


def detect_version(tree: Path) -> str | None:
    """The vLLM version of a source tree: PKG-INFO, vllm/_version.py, or a vX.Y.Z tag at HEAD."""
    pkg_info = tree / "PKG-INFO"
    if pkg_info.is_file():
        match = re.search(r"^Version:\s*(\S+)", read_text(pkg_info), re.MULTILINE)
        if match:
            return match[1].split("+")[0]
    version_py = tree / "vllm" / "_version.py"
    if version_py.is_file():
        match = re.search(r"^__version__\s*=.*?['\"]([^'\"]+)['\"]", read_text(version_py), re.MULTILINE)
        if match:
            return match[1].split("+")[0]
    if (tree / ".git").exists():
        try:
            tags = git(tree, "tag", "--points-at", "HEAD", check=False).stdout.split()
        except KitError:  # git is missing: the version is unknown (the doctor says so and goes on)
            tags = []
        versions = [tag[1:] for tag in tags if re.fullmatch(r"v\d+(\.\d+)+", tag)]
        if versions:
            return versions[0]
    return None


def resolve_series(tree: Path, version: str | None, root: Path = PATCHES_DIR) -> Series:
    """The series for the tree's vLLM version; `version`, when given, must agree with the tree."""
    require_repo_root(tree)
    detected = detect_version(tree)
    if version and detected and version != detected:
        raise KitError(f"wrong version: {tree} holds vLLM {detected}, not {version}")
    version = version or detected
    if not version:
        raise KitError(f"cannot tell the vLLM version of {tree} (no PKG-INFO or vllm/_version.py): pass --version")
    folder = root / f"vllm-{version}"
    if not folder.is_dir():
        known = ", ".join(supported_versions(root)) or "none"
        raise KitError(f"no patch series for vLLM {version} (series exist for: {known})")
    return load_series(folder, version)


# ---------------------------------------------------------------------------------- applying
def _failure(patch: Patch, stderr: str, reverse: bool) -> KitError:
    """A KitError naming the patch, and the file and hunk git stopped at when it says which."""
    where = ""
    failed = re.search(r"patch failed: (.+):(\d+)", stderr)
    named = failed or re.search(r"error: (.+?): (?:does not exist|No such file|already exists|does not match)", stderr)
    if named:
        path = named[1]
        where = f" {path}:"
        hunks = [h for f in patch.files if f.path == path for h in f.hunks]
        at = [h for h in hunks if failed and (h.new_start if reverse else h.old_start) == int(failed[2])]
        if at or hunks:
            hunk = (at or hunks)[0]
            where += f" hunk {hunk.header} (line {hunk.line} of the patch)"
    action = "un-apply" if reverse else "apply"
    return KitError(f"{patch.name}:{where} does not {action}\n  git: " + "\n  git: ".join(stderr.strip().splitlines()))


def _apply(tree: Path, series: Series, patch: Patch, *, reverse: bool, env: dict[str, str] | None = None) -> None:
    args = ["apply", "--whitespace=nowarn", *(["--reverse"] if reverse else []), *(["--cached"] if env else [])]
    proc = git(tree, *args, str(series.folder / patch.name), env=env, check=False)
    if proc.returncode != 0:
        raise _failure(patch, proc.stderr, reverse)


def _simulate(tree: Path, series: Series, reverse: bool) -> None:
    """Apply (or un-apply) the whole series in order on a copy of the work tree's index."""
    with worktree_index(tree) as env:
        for patch in reversed(series.patches) if reverse else series.patches:
            _apply(tree, series, patch, reverse=reverse, env=env)


def is_applied(tree: Path, series: Series) -> bool:
    """Whether the work tree is the pristine tree with the whole series applied."""
    if not series.patches:
        return False
    try:
        _simulate(tree, series, reverse=True)
    except KitError:
        return False
    return True


def require_pristine(tree: Path, series: Series) -> None:
    """Fail unless the tree is clean and the series applies to it, naming the first failing hunk."""
    changed = changed_paths(tree)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise KitError(
            f"{tree} has uncommitted changes that are not the vLLM {series.version} series ({shown}): "
            "commit, stash or discard them first"
        )
    _simulate(tree, series, reverse=False)


def run_patch(tree: Path, series: Series, *, check: bool, reverse: bool) -> str:
    """Apply, un-apply or only check the series; returns what was done."""
    count = f"{len(series.patches)} patch(es) of the vLLM {series.version} series"
    if not series.patches:
        return f"the vLLM {series.version} series has no patches yet: nothing to do"
    if is_applied(tree, series):
        if not reverse:
            return f"{count} already applied to {tree}"
        if check:
            return f"{count} applied to {tree}; they can be un-applied"
        for patch in reversed(series.patches):
            _apply(tree, series, patch, reverse=True)
        return f"un-applied {count} from {tree}"
    require_pristine(tree, series)
    if reverse:
        return f"{count} not applied to {tree}: nothing to un-apply"
    if check:
        return f"{count} apply cleanly to {tree}"
    for patch in series.patches:
        _apply(tree, series, patch, reverse=False)
    return f"applied {count} to {tree}"


# ------------------------------------------------------------------------------- regenerating
def _owners(series: Series) -> dict[str, str]:
    """file path -> the patch that changes it; a file in two patches cannot be split back."""
    owners: dict[str, str] = {}
    for patch in series.patches:
        for diff in patch.files:
            if owners.setdefault(diff.path, patch.name) != patch.name:
                raise KitError(
                    f"{diff.path} is changed by both {owners[diff.path]} and {patch.name}: "
                    "cannot split the tree's changes back into the series"
                )
    return owners


def regenerate(tree: Path, series: Series, into: str | None = None) -> list[str]:
    """Write the tree's changes against HEAD back into the series, one file to one patch.

    A file already in a patch goes back to it; other files (untracked ones included) go to `into`,
    appended to the series when new, or to the last patch. Patch descriptions and README.md are
    kept; patches left empty are dropped. Returns a summary line per patch.
    """
    owners = _owners(series)
    if into is not None and not PATCH_NAME_RE.fullmatch(into):
        raise KitError(f"--into {into!r} is not a patch file name (NNNN-short-name.patch)")
    default = into or (series.patches[-1].name if series.patches else None)
    with worktree_index(tree) as env:
        diff_text = git(
            tree,
            "diff",
            "--cached",
            "HEAD",
            "--binary",
            "--full-index",
            "--no-renames",
            "--no-color",
            "--no-ext-diff",
            "--unified=3",
            "--diff-algorithm=myers",
            "--src-prefix=a/",
            "--dst-prefix=b/",
            env=env,
        ).stdout
    if not diff_text:
        raise KitError(f"{tree} has no changes against its pristine commit: nothing to regenerate")
    diff = parse_patch("the tree's diff", diff_text)
    lines = split_lines(diff_text)
    chunks: dict[str, list[str]] = {}
    for file in diff.files:
        owner = owners.get(file.path, default)
        if owner is None:
            raise KitError(f"the series is empty and {file.path} is new: name its patch with --into NNNN-name.patch")
        chunks.setdefault(owner, []).extend(lines[file.start : file.end])
    existing = {patch.name: patch for patch in series.patches}
    summary = []
    for name in [*existing, *(n for n in chunks if n not in existing)]:
        path = series.folder / name
        if name not in chunks:
            path.unlink()
            summary.append(f"{name}: no changes left; removed from the series (update README.md)")
            continue
        preamble = existing[name].preamble if name in existing else ""
        patch = parse_patch(name, preamble + "".join(chunks[name]))
        write_text(path, patch.text)
        hunks = sum(len(f.hunks) for f in patch.files)
        summary.append(f"{name}: {len(patch.files)} file(s), {hunks} hunk(s)")
    kept = [line for line in series.lines if all(name in chunks for name in series_names([line]))]
    kept += [name for name in chunks if name not in existing]
    write_text(series.folder / "series", "\n".join(kept) + "\n")
    readme = series.folder / "README.md"
    documented = read_text(readme) if readme.is_file() else ""
    summary += [f"{name}: not described in README.md yet" for name in chunks if name not in documented]
    return summary
