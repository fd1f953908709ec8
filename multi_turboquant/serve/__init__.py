"""`mtq serve`: an OpenAI-compatible HTTP server over an in-process vLLM engine, and `mtq loadtest`."""
