"""The per-interval latency summary the allocator reports (schedule() wall time, node age)."""

import math

from tracerl.metrics import LatencyWindow, percentile


def test_percentile_is_the_nearest_rank():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 1.0) == 5.0
    # 101 values 0..100: rank round(0.99 * 100) = 99.
    assert percentile([float(v) for v in range(101)], 0.99) == 99.0
    assert math.isnan(percentile([], 0.5))


def test_a_window_summarises_its_interval_then_starts_afresh():
    window = LatencyWindow()
    for ms in range(1, 101):
        window.add(ms / 1000.0)
    summary = window.summary("schedule_ms", scale=1000.0)
    assert summary["schedule_ms.count"] == 100.0
    assert math.isclose(summary["schedule_ms.p50"], 51.0)  # rank round(0.5 * 99) = 50 -> 51 ms
    assert math.isclose(summary["schedule_ms.p99"], 99.0)
    assert math.isclose(summary["schedule_ms.max"], 100.0)
    empty = window.summary("schedule_ms")
    assert empty["schedule_ms.count"] == 0.0
    assert math.isnan(empty["schedule_ms.p99"]) and math.isnan(empty["schedule_ms.max"])


def test_a_long_interval_keeps_the_latest_samples_and_counts_them_all():
    window = LatencyWindow(max_samples=10)
    for value in range(100):
        window.add(float(value))
    summary = window.summary("x")
    assert summary["x.count"] == 100.0
    assert summary["x.max"] == 99.0
    assert summary["x.p50"] == percentile([float(v) for v in range(90, 100)], 0.5)
    assert len(window.samples) == 0
