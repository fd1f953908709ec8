"""Request validation and the context-length checks, without a server."""
from __future__ import annotations

import json

import pytest

from multi_turboquant.serve.prompts import Prompts
from multi_turboquant.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, \
    parse_request


def parse(cls, body):
    return parse_request(cls, body if isinstance(body, bytes) else json.dumps(body).encode())


def refusal(cls, body) -> APIError:
    with pytest.raises(APIError) as info:
        parse(cls, body)
    assert info.value.status == 400 and set(info.value.body()["error"]) == {"message", "type", "param", "code"}
    return info.value


@pytest.mark.parametrize("body, param, code", [
    (b"{", None, "invalid_json"),
    (b"\xff", None, "invalid_json"),
    (b'"a string"', None, "invalid_json"),
    ({"prompt": "x"}, "model", "missing_required_parameter"),
    ({"model": "m"}, "prompt", "missing_required_parameter"),
    ({"model": 3, "prompt": "x"}, "model", "invalid_type"),
    ({"model": "m", "prompt": ""}, "prompt", "invalid_value"),
    ({"model": "m", "prompt": ["a", "b"]}, "prompt", "invalid_value"),
    ({"model": "m", "prompt": [1, True]}, "prompt", "invalid_value"),
    ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"model": "m", "prompt": "x", "max_tokens": 1.5}, "max_tokens", "invalid_type"),
    ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens", "invalid_type"),
    ({"model": "m", "prompt": "x", "temperature": "0"}, "temperature", "invalid_type"),
    ({"model": "m", "prompt": "x", "top_p": 0}, "top_p", "invalid_value"),
    ({"model": "m", "prompt": "x", "n": 3}, "n", "invalid_value"),
    ({"model": "m", "prompt": "x", "n": 0}, "n", "invalid_value"),
    ({"model": "m", "prompt": "x", "best_of": 2}, "best_of", "invalid_value"),
    ({"model": "m", "prompt": "x", "best_of": "1"}, "best_of", "invalid_type"),
    ({"model": "m", "prompt": "x", "stop": ["a"] * 5}, "stop", "invalid_value"),
    ({"model": "m", "prompt": "x", "stop": 5}, "stop", "invalid_value"),
    ({"model": "m", "prompt": "x", "stop": [""]}, "stop", "invalid_value"),
    ({"model": "m", "prompt": "x", "stream": 1}, "stream", "invalid_type"),
    ({"model": "m", "prompt": "x", "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage",
     "invalid_type"),
    ({"model": "m", "prompt": "x", "echo": True}, "echo", "unsupported_parameter"),
])
def test_completion_refusals(body, param, code):
    error = refusal(CompletionRequest, body)
    assert (error.param, error.code) == (param, code)
    assert error.type == "invalid_request_error"


def test_completion_accepts_openai_prompt_forms_and_ignores_unknown_fields():
    for prompt, parsed in (("hi", "hi"), (["hi"], "hi"), ([1, 2], [1, 2]), ([[1, 2]], [1, 2])):
        assert parse(CompletionRequest, {"model": "m", "prompt": prompt, "user": "me"}).prompt == parsed
    req = parse(CompletionRequest, {"model": "m", "prompt": "x", "temperature": 0, "stop": "\n", "n": 1, "best_of": 1,
                                    "logprobs": None, "stream": True, "stream_options": {"include_usage": True}})
    assert req.sampling_kwargs() == {"temperature": 0.0, "top_p": 1.0, "presence_penalty": 0.0,
                                     "frequency_penalty": 0.0, "seed": None, "stop": ["\n"], "ignore_eos": False}
    assert req.include_usage() and req.max_tokens_or_default() == 16


def test_chat_messages():
    req = parse(ChatCompletionRequest, {"model": "m", "max_tokens": 5, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]})
    assert [m.model_dump() for m in req.messages] == [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hi there"}]
    assert req.max_tokens_or_default() == 5
    assert parse(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}]}
                 ).max_tokens_or_default() is None
    image = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    assert refusal(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": image}]}
                   ).param == "messages.0.content"
    assert refusal(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                           "tools": [{}]}).param == "tools"


def test_embedding_inputs():
    assert parse(EmbeddingRequest, {"model": "m", "input": "a"}).input == ["a"]
    assert parse(EmbeddingRequest, {"model": "m", "input": ["a", [1, 2]]}).input == ["a", [1, 2]]
    assert parse(EmbeddingRequest, {"model": "m", "input": [3, 4]}).input == [[3, 4]]
    assert refusal(EmbeddingRequest, {"model": "m", "input": []}).param == "input"
    assert refusal(EmbeddingRequest, {"model": "m", "input": "a", "encoding_format": "hex"}).param == \
        "encoding_format"


class WordTokenizer:
    """One token per word."""

    chat_template = "{{ messages }}"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [len(w) for w in text.split()]

    def apply_chat_template(self, messages: list[dict], tokenize: bool, add_generation_prompt: bool) -> str:
        return " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"


def test_prompts_and_context_limits():
    prompts = Prompts(WordTokenizer(), max_model_len=10)
    messages = parse(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "a b"}]}).messages
    assert prompts.chat(messages) == [6, 1, 1, 11]
    assert prompts.completion("one two") == [3, 3] and prompts.completion([7, 8]) == [7, 8]
    assert prompts.max_tokens(4, None, "messages") == 6
    assert prompts.max_tokens(4, 6, "messages") == 6
    with pytest.raises(APIError) as info:
        prompts.max_tokens(4, 7, "messages")
    assert (info.value.param, info.value.code) == ("max_tokens", "context_length_exceeded")
    with pytest.raises(APIError) as info:
        prompts.max_tokens(10, None, "messages")
    assert info.value.param == "messages"
    prompts.check_prompt(10, "input", room=0)
    prompts.tokenizer.chat_template = None
    with pytest.raises(APIError, match="no chat template"):
        prompts.chat(messages)
