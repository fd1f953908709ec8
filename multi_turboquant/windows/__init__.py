"""Windows build kit for vLLM: hazard scanner, patch series and tooling."""
