"""The join bench's pure part: an actor's log events in, the phases of its join out."""

import pytest

from bench.join import JoinBreakdown, check_join_args, event_time, join_breakdown


def _event(name, second, **fields):
    return {"event": name, "timestamp": f"2026-01-01T00:00:{second:06.3f}Z", **fields}


START = event_time(_event("x", 0.0))


def test_event_time_reads_structlog_iso_timestamps():
    assert event_time(_event("x", 12.5)) - START == pytest.approx(12.5)


def test_phases_run_from_the_process_start_to_the_first_node():
    events = [
        _event("actor_starting", 3.0),
        _event("engine_started", 31.5),
        _event("bus_connected", 31.75),
        _event("weights_reloaded", 33.0),
        _event("actor_serving", 33.25),
        _event("actor_metrics", 36.0),
        _event("first_node_published", 40.0, policy_version=2),
        _event("weights_reloaded", 45.0),  # the run moving on after the join
    ]
    assert join_breakdown(START, events) == JoinBreakdown(
        total_s=40.0,
        phases=(
            ("start", 3.0),
            ("engine", 28.5),
            ("bus", 0.25),
            ("weights", 1.25),
            ("registered", 0.25),
            ("first node", 6.75),
        ),
        policy_version=2,
    )


def test_a_join_without_new_weights_has_no_weights_phase_and_no_node_means_no_join():
    events = [
        _event("actor_starting", 1.0),
        _event("engine_started", 2.0),
        _event("bus_connected", 3.0),
        _event("actor_serving", 4.0),
        _event("first_node_published", 9.0, policy_version=0),
    ]
    breakdown = join_breakdown(START, events)
    assert [p for p, _ in breakdown.phases] == ["start", "engine", "bus", "registered", "first node"]
    assert dict(breakdown.phases)["registered"] == 1.0 and breakdown.total_s == 9.0
    assert join_breakdown(START, events[:-1]) is None


def test_join_arguments_are_checked():
    check_join_args(["single", "cluster"], 1)
    for buses, joins in ((["single", "mesh"], 1), ([], 1), (["single"], 0)):
        with pytest.raises(ValueError):
            check_join_args(buses, joins)
