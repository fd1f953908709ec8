"""Choosing a model when `mtq serve` has no --model: local model folders only, never a model hub."""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..models import cache_dir


@dataclass(frozen=True)
class LocalModel:
    name: str  # what the picker shows and the server serves it as
    path: Path


def hub_dirs() -> list[Path]:
    """Hugging Face hub caches: $HF_HUB_CACHE, $HF_HOME/hub and ~/.cache/huggingface/hub (existing, no repeats)."""
    candidates = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HF_HOME") and Path(os.environ["HF_HOME"]) / "hub",
                  "~/.cache/huggingface/hub"]
    dirs = {Path(c).expanduser().resolve(): None for c in candidates if c}
    return [d for d in dirs if d.is_dir()]


def _is_model(path: Path) -> bool:
    return (path / "config.json").is_file()


def _hub_models(hub: Path) -> Iterable[LocalModel]:
    """Snapshots with a config.json in hub/models--ORG--NAME/snapshots/REVISION, named ORG/NAME[@REVISION]."""
    for repo in sorted(hub.glob("models--*")):
        snapshots = [s for s in sorted((repo / "snapshots").glob("*")) if _is_model(s)]
        name = repo.name.removeprefix("models--").replace("--", "/")
        for snapshot in snapshots:
            yield LocalModel(name if len(snapshots) == 1 else f"{name}@{snapshot.name[:8]}", snapshot)


def find_models(models_dir: Path | None = None, hubs: list[Path] | None = None) -> list[LocalModel]:
    """Model folders (with a config.json) in <mtq cache>/models and in the Hugging Face hub caches."""
    models_dir = cache_dir() / "models" if models_dir is None else models_dir
    found = [LocalModel(p.name, p) for p in sorted(models_dir.glob("*")) if _is_model(p)]
    for hub in hub_dirs() if hubs is None else hubs:
        found.extend(_hub_models(hub))
    return found


def pick_model(models: list[LocalModel], stdin: TextIO, out: TextIO) -> LocalModel:
    """Ask on `out` for a number from the numbered list of `models`, read from `stdin` (a terminal)."""
    if not models:
        raise ValueError(f"no --model given and no local model folder found in {cache_dir() / 'models'} or the "
                         "Hugging Face cache; pass --model PATH")
    if not stdin.isatty():
        raise ValueError("no --model given and stdin is not a terminal to choose one; pass --model PATH "
                         f"(local models: {', '.join(str(m.path) for m in models)})")
    for i, model in enumerate(models, 1):
        print(f"  {i:>2}. {model.name}  ({model.path})", file=out)
    while True:
        print(f"model number [1-{len(models)}]: ", end="", file=out, flush=True)
        line = stdin.readline()
        if not line:
            raise ValueError("no model chosen (end of input)")
        choice = line.strip()
        if choice.isdigit() and 1 <= int(choice) <= len(models):
            return models[int(choice) - 1]
        print(f"{choice!r} is not a number from 1 to {len(models)}", file=out)
