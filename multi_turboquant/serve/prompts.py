"""Requests to token ids: the tokenizer, the model's chat template, and the context-length checks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .protocol import APIError, ChatMessage


@dataclass
class Prompts:
    """Tokenizes on the server's event loop with its own tokenizer (the engine thread detokenizes with another)."""

    tokenizer: Any  # a Hugging Face tokenizer
    max_model_len: int

    def completion(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a completion prompt (text gets the tokenizer's special tokens, as in vLLM)."""
        return prompt if isinstance(prompt, list) else self.tokenizer.encode(prompt)

    def chat(self, messages: list[ChatMessage]) -> list[int]:
        """Token ids of `messages` through the model's chat template, ending with the assistant's turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "this model has no chat template; use /v1/completions", param="messages",
                           code="no_chat_template")
        text = self.tokenizer.apply_chat_template([m.model_dump() for m in messages], tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def check_prompt(self, n_prompt: int, param: str, room: int = 1) -> None:
        """Refuse a prompt that leaves fewer than `room` tokens of context (1 to generate, 0 to embed)."""
        if n_prompt + room > self.max_model_len:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} tokens; the prompt "
                           f"has {n_prompt} tokens.", param=param, code="context_length_exceeded")

    def max_tokens(self, n_prompt: int, requested: int | None, param: str) -> int:
        """`requested` new tokens (None: all the context leaves) if prompt and completion fit the context."""
        self.check_prompt(n_prompt, param)
        if requested is None:
            return self.max_model_len - n_prompt
        if n_prompt + requested > self.max_model_len:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} tokens; you requested "
                           f"{n_prompt + requested} tokens ({n_prompt} in the prompt, {requested} for the completion)."
                           " Reduce the prompt or max_tokens.", param="max_tokens", code="context_length_exceeded")
        return requested
