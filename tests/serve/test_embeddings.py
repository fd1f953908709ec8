"""`mtq serve --runner pooling --convert embed`: SmolLM2 as an embedding model on vLLM's CPU build."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from .conftest import SERVED_NAME, mtq_serve, needs_vllm  # noqa: E402

pytestmark = needs_vllm

HIDDEN_SIZE = 576  # SmolLM2-135M


@pytest.fixture(scope="module")
def server(smollm2, serving, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve-embed") / "serve.log"
    with serving(mtq_serve(smollm2, "--runner", "pooling", "--convert", "embed"), log) as url:
        yield url


def test_embeddings(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="none", timeout=300.0, max_retries=0)
    texts = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Quarterly revenue rose by 4%."]
    reply = client.embeddings.create(model=SERVED_NAME, input=texts)  # the client asks for base64
    vectors = [d.embedding for d in sorted(reply.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [HIDDEN_SIZE] * 3
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 3

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    floats = httpx.post(f"{server}/v1/embeddings", json={"model": SERVED_NAME, "input": texts[0],
                                                         "encoding_format": "float"}, timeout=300.0).json()
    assert floats["data"][0]["embedding"] == pytest.approx(vectors[0], abs=1e-6)


def test_generation_on_an_embedding_model_is_refused(server):
    reply = httpx.post(f"{server}/v1/completions", json={"model": SERVED_NAME, "prompt": "hi"})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "unsupported_task"
