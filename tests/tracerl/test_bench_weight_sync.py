"""The weight-sync bench: its projection and comparison against hand-computed numbers, and a tiny run of both
transports (a real nats-server, gloo processes)."""

import json

import pytest

from bench.weight_sync import (
    BroadcastRound,
    FetchRound,
    SizeResult,
    SyncAssumptions,
    TransportComparison,
    aggregate_rate_for,
    broadcast_rate_for,
    compare_transports,
    learner_step_seconds,
    project_sync,
    run_weight_sync,
    store_limit_mib,
)
from bus.config import MIB, BusServerConfig, StreamLimits
from tracerl.config import RunConfig


def test_learner_step_is_six_flops_per_parameter_and_token_at_the_utilised_rate():
    # 6 x 1e9 x 1e6 = 6e15 FLOPs over 2 x 1e15 x 0.5 = 1e15 FLOP/s
    assert learner_step_seconds(1e9, 1e6, 2, 1e15, 0.5) == pytest.approx(6.0)
    # 14e9 parameters, 2^20 tokens, 8 x 989 TFLOP/s at 40%: 8.808e16 / 3.1648e15
    assert learner_step_seconds(14e9, 1_048_576, 8, 989e12, 0.4) == pytest.approx(27.83, abs=0.01)


def test_aggregate_rate_is_the_best_measured_with_at_most_that_many_fetchers():
    measured = {1: 0.5e9, 2: 0.8e9, 4: 0.7e9}
    assert aggregate_rate_for(1, measured) == 0.5e9
    assert aggregate_rate_for(3, measured) == 0.8e9
    assert aggregate_rate_for(64, measured) == 0.8e9  # a slower 4-fetcher round does not lower it
    with pytest.raises(ValueError, match="at most 1 fetchers"):
        aggregate_rate_for(1, {2: 1e9})


def test_projection_by_hand():
    assumptions = SyncAssumptions(
        model_bytes=10e9,
        model_parameters=1e9,
        actors=(1, 3, 8),
        step_tokens=1e6,
        learner_gpus=2,
        gpu_peak_flops=1e15,
        mfu=0.5,
        broadcast_bytes_per_s=25e9,
    )
    rows = project_sync(
        assumptions,
        put_rate=1e9,
        aggregate_fetch={1: 0.5e9, 2: 0.8e9, 4: 1e9},
        sha256_rate=2e9,
        broadcast_rates={1: 2e9, 2: 1e9, 4: 0.5e9},
    )
    # put 10 s; fetch 1 x 10/0.5 = 20, 3 x 10/0.8 = 37.5, 8 x 10/1 = 80; sha256 5 s; step 6 s
    assert [r.actors for r in rows] == [1, 3, 8]
    assert [r.put_s for r in rows] == pytest.approx([10.0] * 3)
    assert [r.fetch_s for r in rows] == pytest.approx([20.0, 37.5, 80.0])
    assert [r.verify_s for r in rows] == pytest.approx([5.0] * 3)
    assert [r.total_s for r in rows] == pytest.approx([35.0, 52.5, 95.0])
    assert [r.sync_over_step for r in rows] == pytest.approx([35 / 6, 52.5 / 6, 95 / 6])
    assert [r.broadcast_s for r in rows] == pytest.approx([0.4] * 3)
    # measured broadcast: 10 GB at 2, 1 (2 receivers <= 3) and 0.5 GB/s (4 <= 8), + 5 s sha256
    assert [r.broadcast_measured_s for r in rows] == pytest.approx([10.0, 15.0, 25.0])
    assert [r.broadcast_over_step for r in rows] == pytest.approx([10 / 6, 15 / 6, 25 / 6])


def test_broadcast_rate_is_the_one_measured_with_the_most_receivers_not_above_the_actors():
    measured = {1: 2e9, 2: 1.5e9, 4: 1e9}
    assert broadcast_rate_for(1, measured) == 2e9
    assert broadcast_rate_for(3, measured) == 1.5e9
    assert broadcast_rate_for(64, measured) == 1e9
    with pytest.raises(ValueError, match="at most 1 receivers"):
        broadcast_rate_for(1, {2: 1e9})


def test_transports_compared_at_the_actor_counts_measured_both_ways():
    size = SizeResult(
        object_mib=100,
        chunks=100,
        put_bytes_per_s=100 * MIB / 4.0,  # put 4 s
        fetch=[
            FetchRound(fetchers=1, aggregate_bytes_per_s=100 * MIB / 2.0, per_fetcher_bytes_per_s=[], verified=True),
            FetchRound(fetchers=2, aggregate_bytes_per_s=200 * MIB / 6.0, per_fetcher_bytes_per_s=[], verified=True),
        ],
        broadcast=[
            BroadcastRound(receivers=1, seconds=0.5, bytes_per_s=0.0, verified=True),
            BroadcastRound(receivers=2, seconds=1.0, bytes_per_s=0.0, verified=True),
            BroadcastRound(receivers=4, seconds=2.0, bytes_per_s=0.0, verified=True),  # no 4-fetcher round
        ],
    )
    # object store: put 4 s + span 2 s (1 fetcher), 4 + 6 s (2 fetchers)
    assert compare_transports(size) == [
        TransportComparison(object_mib=100, actors=1, object_store_s=6.0, broadcast_s=0.5, speedup=12.0),
        TransportComparison(object_mib=100, actors=2, object_store_s=10.0, broadcast_s=1.0, speedup=10.0),
    ]


def test_assumptions_refuse_nonsense():
    with pytest.raises(ValueError, match="mfu"):
        SyncAssumptions(mfu=1.5)
    with pytest.raises(ValueError, match="actors"):
        SyncAssumptions(actors=(0,))


def test_store_limit_holds_the_reserved_caps_and_the_object():
    limits = StreamLimits()  # 512 + 1024 + 64 MiB reserved
    assert store_limit_mib(1024 * MIB, limits) == 1600 + 2048 + 256
    # the bus config accepts it (its check: the caps leave room in the store)
    BusServerConfig(run=RunConfig(run_id="x", run_dir="/tmp/x"), max_store_mib=store_limit_mib(MIB, limits))


@pytest.mark.nats
def test_a_tiny_run_puts_fetches_verifies_and_projects(tmp_path):
    results = run_weight_sync([2], [1, 2], SyncAssumptions(actors=(2, 8)), tmp_path, receiver_counts=[2], bucket_mib=1)
    (size,) = results["sizes"]
    assert size["object_mib"] == 2 and size["chunks"] == 2 and size["put_bytes_per_s"] > 0
    assert [r["fetchers"] for r in size["fetch"]] == [1, 2]
    assert all(r["verified"] for r in size["fetch"])
    assert [len(r["per_fetcher_bytes_per_s"]) for r in size["fetch"]] == [1, 2]
    best = max(r["aggregate_bytes_per_s"] for r in size["fetch"])
    two, eight = results["projection"]
    assert two["aggregate_fetch_bytes_per_s"] == best
    assert eight["fetch_s"] == pytest.approx(8 * 28e9 / best)
    assert json.loads((tmp_path / "weight_sync.json").read_text())["projection"] == results["projection"]
    assert "| 8 |" in (tmp_path / "weight_sync.md").read_text()
    # the broadcast: two gloo receivers got the 2 MiB version in two 1 MiB buckets, sha256 checked
    (round_,) = size["broadcast"]
    assert round_["receivers"] == 2 and round_["verified"] and round_["seconds"] > 0
    assert round_["bytes_per_s"] == pytest.approx(2 * MIB / round_["seconds"])
    (compared,) = results["comparison"]
    assert compared["actors"] == 2 and compared["speedup"] == pytest.approx(
        compared["object_store_s"] / compared["broadcast_s"]
    )
    assert eight["broadcast_measured_s"] == pytest.approx(28e9 / round_["bytes_per_s"] + eight["verify_s"])
