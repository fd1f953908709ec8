"""Load-test statistics, without a server."""
from __future__ import annotations

import math

import numpy as np
import pytest

from multi_turboquant.serve.loadtest import Report, Sample, percentile


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0],
                                    list(np.random.default_rng(0).random(37))])
@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 50))


def test_report_rows():
    samples = [Sample(latency=1.0 + i, ttft=0.5, tokens=11) for i in range(4)] + [Sample(9.0, None, 0, "boom")]
    rows = dict(Report(samples, seconds=4.0, concurrency=2).rows())
    assert rows["requests (ok / failed)"] == "4 / 1"
    assert rows["requests/s"] == "1.00"
    assert rows["output tokens/s"] == "11.0"
    assert rows["latency p50 / p90 / p99 (s)"] == "2.500 / 3.700 / 3.970"
    assert rows["time to first token p50 / p90 / p99 (s)"] == "0.500 / 0.500 / 0.500"
    assert rows["time per output token p50 / p90 / p99 (ms)"].startswith("200.000 / ")  # (2.5 - 0.5) / 10
    assert Report(samples, 4.0, 2).table().endswith("error: boom")
