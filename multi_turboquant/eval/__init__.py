"""Quality evaluation: synthetic round-trip and attention error (real-model perplexity later)."""
