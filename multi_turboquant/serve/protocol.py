"""OpenAI request bodies: validation into typed requests, and OpenAI-style errors."""
from __future__ import annotations

import json
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context


class APIError(Exception):
    """An error answered as OpenAI's `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BaseRequest(BaseModel):
    """Fields shared by all requests; unknown fields are ignored, known ones are type-checked strictly."""

    model_config = ConfigDict(strict=True, extra="ignore")
    # OpenAI parameters this server does not implement: refused when given a value other than null/false
    UNSUPPORTED: ClassVar[tuple[str, ...]] = ()

    model: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class SamplingRequest(BaseRequest):
    max_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    stop: Any = None  # a string or up to 4; validated into a list
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension, used by `mtq loadtest` for fixed-length outputs

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        return _only_one(n, "n")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, stop: Any) -> list[str]:
        stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("stop must be a string or a list of up to 4 non-empty strings")
        return stops

    def max_tokens_or_default(self) -> int | None:
        """The completion's length; None: all the context leaves."""
        return self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for vLLM's SamplingParams, OpenAI defaults where a field is absent (max_tokens aside)."""
        return {
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "presence_penalty": self.presence_penalty or 0.0,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "seed": self.seed,
            "stop": self.stop or None,
            "ignore_eos": self.ignore_eos,
        }


def _only_one(value: int | None, name: str) -> int | None:
    """`value` if it asks for one choice (or is absent); `n`/`best_of` beyond 1 are refused."""
    if value not in (None, 1):
        raise ValueError(f"only {name}=1 is supported (got {value})")
    return value


def _text_or_tokens(value: Any, what: str) -> str | list[int]:
    """A prompt given as a non-empty string or a non-empty list of token ids."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value
    raise ValueError(f"{what} must be a non-empty string or a non-empty list of token ids")


class CompletionRequest(SamplingRequest):
    UNSUPPORTED = ("logprobs", "echo", "suffix", "logit_bias")

    prompt: Any
    best_of: int | None = None

    @field_validator("best_of")
    @classmethod
    def _one_candidate(cls, best_of: int | None) -> int | None:
        return _only_one(best_of, "best_of")

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> str | list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ValueError("only one prompt per request is supported")
            prompt = prompt[0]
        return _text_or_tokens(prompt, "prompt")

    def max_tokens_or_default(self) -> int:
        return self.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: Any = None

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, content: Any) -> str:
        """A string, or OpenAI's list of `{"type": "text", "text": ...}` parts joined into one."""
        if content is None or isinstance(content, str):
            return content or ""
        if isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
        raise ValueError("content must be a string or a list of text parts (only text is supported)")


class ChatCompletionRequest(SamplingRequest):
    UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias", "tools", "tool_choice", "functions", "function_call",
                   "response_format", "audio", "modalities", "prediction")

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, gt=0)

    def max_tokens_or_default(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EmbeddingRequest(BaseRequest):
    UNSUPPORTED = ("dimensions",)

    input: Any
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> list[str | list[int]]:
        """One or more inputs, each a string or a list of token ids."""
        if isinstance(value, list) and value and isinstance(value[0], (str, list)):
            return [_text_or_tokens(v, "each input") for v in value]
        return [_text_or_tokens(value, "input")]


RequestT = TypeVar("RequestT", bound=BaseRequest)


def parse_request(cls: type[RequestT], body: bytes) -> RequestT:
    """The request `cls` in `body` (JSON), or an APIError(400) naming the offending parameter."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    for name in cls.UNSUPPORTED:
        if data.get(name) not in (None, False):
            raise APIError(400, f"{name!r} is not supported by this server", param=name, code="unsupported_parameter")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        code = "missing_required_parameter" if error["type"] == "missing" else \
            "invalid_type" if error["type"].endswith("_type") else "invalid_value"
        message = error["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{param}: {message}" if param else message, param=param, code=code) from None
