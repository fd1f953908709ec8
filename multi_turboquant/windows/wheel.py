"""`mtq windows wheel`: package a built vLLM tree as a wheel, then read it back and validate it."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import sys
import sysconfig
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.native import module_of, native_modules
from multi_turboquant.windows.patchseries import detect_version

# Packages with no Windows wheels: a requirement on them gets `; sys_platform != "win32"` (as patch 0001 does).
WINDOWS_UNAVAILABLE = ("flashinfer-python", "flashinfer-cubin", "nvidia-cutlass-dsl", "quack-kernels")
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".obj", ".o", ".lib", ".exp", ".ilk", ".pdb")
TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # fixed: the same tree gives the same wheel
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def wheel_tag(platform: str | None = None) -> str:
    """The tag of this interpreter and platform, e.g. cp311-cp311-win_amd64."""
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"{python}-{python}-{re.sub(r'[-.]', '_', platform or sysconfig.get_platform())}"


def _toml_strings(text: str) -> dict[str, dict[str, str]]:
    """The `key = "value"` lines of each [section] of a pyproject.toml (enough for its scripts and entry points)."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for line in text.splitlines():
        header = re.fullmatch(r"\s*\[([^\[\]]+)\]\s*", line)
        pair = re.fullmatch(r"\s*([\w.\"-]+)\s*=\s*\"([^\"]*)\"\s*", line)
        if header:
            current = sections.setdefault(header[1].replace('"', ""), {})
        elif pair:
            current[pair[1].strip('"')] = pair[2]
    return sections


def requirements(tree: Path, name: str = "cuda.txt") -> list[str]:
    """The requirement lines of requirements/NAME (following -r), Windows-safe."""
    lines = []
    for raw in (tree / "requirements" / name).read_text(encoding="utf-8").splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if line.startswith("-r"):
            lines += requirements(tree, line[2:].strip())
        elif line and not line.startswith("-"):
            package = NAME_RE.match(line)
            base = re.split(r"\[", package[0])[0].lower() if package else ""
            if base.replace("_", "-") in WINDOWS_UNAVAILABLE and ";" not in line:
                line += '; sys_platform != "win32"'
            lines.append(line)
    return lines


def _metadata(tree: Path, version: str) -> str:
    project = _toml_strings((tree / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    lines = ["Metadata-Version: 2.1", "Name: vllm", f"Version: {version}"]
    if "requires-python" in project:
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {req}" for req in requirements(tree)]
    return "\n".join(lines) + "\n"


def _entry_points(tree: Path) -> str:
    sections = _toml_strings((tree / "pyproject.toml").read_text(encoding="utf-8"))
    groups = {"console_scripts": sections.get("project.scripts", {})}
    groups |= {name[len("project.entry-points.") :]: values for name, values in sections.items()
               if name.startswith("project.entry-points.")}  # fmt: skip
    return "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
        for group, entries in groups.items()
        if entries
    )


def _package_files(tree: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted((tree / "vllm").rglob("*")):
        relative = path.relative_to(tree)
        if path.is_file() and not SKIPPED_DIRS & set(relative.parts) and not path.name.endswith(SKIPPED_SUFFIXES):
            yield relative.as_posix(), path


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(tree: Path, out_dir: Path, device: str = "cuda", platform: str | None = None) -> Path:
    """Write vllm-VERSION-TAG.whl from the tree's vllm/ package into out_dir; validated before it is kept."""
    if not (tree / "vllm").is_dir() or not (tree / "pyproject.toml").is_file():
        raise KitError(f"{tree} is not a vLLM source tree (no vllm/ package or pyproject.toml)")
    version = detect_version(tree)
    if version is None:
        raise KitError(f"cannot tell the vLLM version of {tree}")
    tag = wheel_tag(platform)
    dist_info = f"vllm-{version}.dist-info"
    files = [(name, path.read_bytes()) for name, path in _package_files(tree)]
    files += [
        (f"{dist_info}/METADATA", _metadata(tree, version).encode()),
        (f"{dist_info}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: multi-turboquant\nRoot-Is-Purelib: false\n"
                                f"Tag: {tag}\n").encode()),
        (f"{dist_info}/entry_points.txt", _entry_points(tree).encode()),
        (f"{dist_info}/top_level.txt", b"vllm\n"),
    ]  # fmt: skip
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    writer.writerows((name, record_hash(data), len(data)) for name, data in files)
    writer.writerow((f"{dist_info}/RECORD", "", ""))
    files.append((f"{dist_info}/RECORD", record.getvalue().encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"vllm-{version}-{tag}.whl"
    partial = target.with_suffix(".whl.part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            info = zipfile.ZipInfo(name, TIMESTAMP)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    try:
        validate_wheel(partial, native_modules(version, device), target.name)
    except KitError:
        partial.unlink()
        raise
    partial.replace(target)
    return target


def wheel_problems(path: Path, required: tuple[str, ...], filename: str | None = None) -> list[str]:
    """What is wrong with a wheel: CRC, duplicates, RECORD, WHEEL/METADATA vs the file name, native modules."""
    filename = filename or path.name
    parts = re.fullmatch(r"([^-]+)-([^-]+)-([^-]+-[^-]+-[^-]+)\.whl", filename)
    if parts is None:
        return [f"{filename}: not a wheel file name (NAME-VERSION-PY-ABI-PLATFORM.whl)"]
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        return [f"{filename}: cannot open: {exc}"]
    with archive:
        problems = []
        names = archive.namelist()
        contents = {}
        for name in names:
            try:
                contents[name] = archive.read(name)
            except (zipfile.BadZipFile, zlib.error) as exc:
                problems.append(f"{name}: corrupt ({exc})")
        counts = Counter(name.lower() for name in names)  # Windows file names ignore case
        problems += [f"{name}: stored {n} times (case-insensitively)" for name, n in counts.items() if n > 1]
        dist_info = f"{parts[1]}-{parts[2]}.dist-info"
        special = {key: contents.get(f"{dist_info}/{key}") for key in ("RECORD", "WHEEL", "METADATA")}
        missing = [f"missing {dist_info}/{key}" for key, data in special.items() if data is None]
        if missing:
            return problems + missing
        if f"Tag: {parts[3]}" not in special["WHEEL"].decode().splitlines():
            problems.append(f"WHEEL has no 'Tag: {parts[3]}' (the file name's tag)")
        if f"Version: {parts[2]}" not in special["METADATA"].decode().splitlines():
            problems.append(f"METADATA's version is not {parts[2]} (the file name's)")
        recorded = {}
        for row in csv.reader(io.StringIO(special["RECORD"].decode())):
            if not row:
                continue
            if len(row) != 3 or row[0] in recorded:
                problems.append(f"RECORD: bad or repeated row {row!r}")
            recorded[row[0]] = row
        for name in names:
            row = recorded.pop(name, None)
            if row is None:
                problems.append(f"{name}: not in RECORD")
            elif name != f"{dist_info}/RECORD" and name in contents:
                data = contents[name]
                if row[1:] != [record_hash(data), str(len(data))]:
                    problems.append(f"{name}: hash or size differs from RECORD")
        problems += [f"{name}: in RECORD but not in the wheel" for name in recorded]
        present = {module_of(name) for name in names}
        problems += [f"native module {module} is missing" for module in required if module not in present]
        return problems


def validate_wheel(path: Path, required: tuple[str, ...], filename: str | None = None) -> None:
    """Raise a KitError listing every problem of the wheel."""
    problems = wheel_problems(path, required, filename)
    if problems:
        raise KitError(f"{filename or path.name} is not valid:\n  " + "\n  ".join(problems))
