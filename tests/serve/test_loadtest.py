"""Load-test plans and statistics, without a server."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from multi_turboquant.serve.loadtest import MALFORMED, Mix, Plan, Report, Sample, _Client, percentile, plan


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0],
                                    list(np.random.default_rng(0).random(37))])
@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 50))


def test_report_rows():
    samples = [Sample(latency=1.0 + i, ttft=0.5, tokens=11) for i in range(4)] + [Sample(9.0, None, 0, "boom")]
    samples += [Sample(1.0, None, 0, outcome="401 invalid_api_key", plan=Plan("wrong_key", False, "x"))]
    report = Report(samples, seconds=4.0, concurrency=2)
    rows = dict(report.rows())
    assert rows["requests (ok / failed)"] == "5 / 1"
    assert rows["outcome: ok"] == "4" and rows["outcome: 401 invalid_api_key"] == "1"
    assert rows["completed requests/s"] == "1.00"
    assert rows["output tokens/s"] == "11.0"
    assert rows["latency p50 / p90 / p99 (s)"] == "2.500 / 3.700 / 3.970"
    assert rows["time to first token p50 / p90 / p99 (s)"] == "0.500 / 0.500 / 0.500"
    assert rows["time per output token p50 / p90 / p99 (ms)"].startswith("200.000 / ")  # (2.5 - 0.5) / 10
    assert report.table().endswith("error (1x): ok request: boom")


def test_plan_gives_each_fault_and_chat_its_share():
    plans = plan(200, Mix(chat=0.5, disconnect=0.1, malformed=0.05, wrong_key=0.05), "p {i}", distinct=16)
    assert Counter(p.kind for p in plans) == {"ok": 160, "disconnect": 20, "malformed": 10, "wrong_key": 10}
    assert sum(p.chat for p in plans) == 100
    assert Counter(p.variant for p in plans if p.kind == "malformed") == Counter(
        {v: n for v, n in zip(range(len(MALFORMED)), (3, 3, 2, 2))})
    assert {p.prompt for p in plans} == {f"p {i}" for i in range(16)} and plans[17].prompt == "p 1"
    assert plan(3, Mix(), "hi")[2] == Plan("ok", False, "hi (2)")
    assert plans == plan(200, Mix(chat=0.5, disconnect=0.1, malformed=0.05, wrong_key=0.05), "p {i}", distinct=16)


@pytest.mark.parametrize("mix", [dict(chat=1.5), dict(disconnect=-0.1), dict(disconnect=0.6, malformed=0.5)])
def test_mix_refuses_impossible_fractions(mix):
    with pytest.raises(ValueError, match="fraction"):
        Mix(**mix)


def test_malformed_bodies():
    client = _Client(None, "m", 4, max_model_len=10, api_key=None, oversized_bytes=1000)
    ok = json.loads(client.body(Plan("ok", True, "hi")))
    assert ok["messages"] == [{"role": "user", "content": "hi"}] and ok["max_tokens"] == 4 and ok["stream"]
    bodies = {name: client.body(Plan("malformed", False, "hi", variant)) for variant, name in enumerate(MALFORMED)}
    with pytest.raises(ValueError):
        json.loads(bodies["invalid JSON"])
    with pytest.raises(UnicodeDecodeError):
        bodies["invalid UTF-8"].decode()
    assert json.loads(bodies["prompt past the context"])["prompt"] == "hi " * 11
    assert len(bodies["body past the size limit"]) == 1000
