"""`tracerl bench scale`'s arithmetic: counter rates, scaling efficiency, the ceiling, projections,
and the simulated engine's turns (the real actor service runs them in the bench)."""

import asyncio
import json
import math

import pytest

from actors.config import EngineSettings
from actors.weights import safetensors_signature
from bench.scale import (
    ScalePoint,
    SimulatedEngine,
    find_ceiling,
    gpu_actors_served,
    projected_node_ceiling,
    rate,
    scaling_efficiency,
    simulated_weights,
    step_shape,
    summarise_point,
)
from environments.tags import parse_action
from protocol import SamplingSpec


def point(actors, nodes_per_s, cpu_p99=0.5):
    return ScalePoint(
        actors=actors,
        nodes_per_s=nodes_per_s,
        schedule_p99_ms=cpu_p99 * 3,
        schedule_p99_ms_median=cpu_p99 * 2,
        schedule_cpu_p99_ms=cpu_p99,
        work_latency_s=0.1,
        allocator_cpu_ms_per_node=0.5,
        allocator_rss_per_open_node_kib=2.0,
        open_nodes=100.0,
        cores_busy={"allocator": 0.2},
    )


def test_rate_is_the_counter_change_per_second():
    assert rate({"time": 10.0, "n": 100}, {"time": 14.0, "n": 300}, "n") == 50.0
    # A counter the first record does not have yet started at zero.
    assert rate({"time": 0.0}, {"time": 2.0, "n": 8}, "n") == 4.0
    assert rate({"time": 5.0, "n": 1}, {"time": 5.0, "n": 9}, "n") == 0.0


def test_scaling_efficiency_compares_throughput_growth_with_actor_growth():
    assert scaling_efficiency(point(8, 100.0), point(32, 400.0)) == pytest.approx(1.0)  # linear
    assert scaling_efficiency(point(8, 100.0), point(32, 100.0)) == pytest.approx(0.0)  # flat
    assert scaling_efficiency(point(8, 100.0), point(32, 250.0)) == pytest.approx(0.5)
    assert math.isnan(scaling_efficiency(point(8, 0.0), point(32, 10.0)))


def test_the_ceiling_is_the_first_point_past_the_latency_target_or_without_growth():
    linear = [point(8, 100.0), point(32, 400.0), point(128, 1600.0)]
    assert find_ceiling(linear) == (None, "not reached up to N=128")
    slow = [point(8, 100.0), point(32, 400.0, cpu_p99=6.0), point(128, 1600.0)]
    ceiling, why = find_ceiling(slow)
    assert ceiling == 32 and "6.00 CPU ms > 5 ms" in why
    flat = [point(128, 500.0), point(8, 100.0), point(32, 400.0)]  # order does not matter
    ceiling, why = find_ceiling(flat)
    # 400 -> 500 nodes/s for 32 -> 128 actors: (1.25 - 1) / (4 - 1) = 0.083.
    assert ceiling == 128 and "grew 0.08x as fast as the actors from N=32" in why
    # 400 -> 1000 nodes/s for 32 -> 128 actors: (2.5 - 1) / (4 - 1) = 0.5, not below the bound.
    assert find_ceiling([point(32, 400.0), point(128, 1000.0)])[0] is None
    assert find_ceiling([point(32, 400.0), point(128, 990.0)])[0] == 128


def test_projections_from_the_cost_per_node():
    assert projected_node_ceiling(0.25) == 4000.0
    assert projected_node_ceiling(0.0) is None
    # 3,000 tokens/s in turns of 200 tokens is 15 turns/s per actor: 4,000 nodes/s serve 266.7 actors.
    assert gpu_actors_served(4000.0, 3000.0, 200.0) == pytest.approx(4000.0 / 15.0)


def test_a_step_has_one_prompt_per_actor_and_room_for_branches():
    assert step_shape(128, group_size=4) == {
        "allocator.core.batch_prompts": 128,
        "allocator.core.step_budget_turns": 2 * 128 * 4 * 3,
    }
    assert step_shape(1, group_size=2)["allocator.core.batch_prompts"] == 2


def test_simulated_weights_keep_one_signature_across_versions():
    first, later = simulated_weights(0), simulated_weights(7)
    assert first != later
    assert safetensors_signature(first) == safetensors_signature(later)


class _Tokenizer:
    """Whitespace-split words as ids (enough for the engine's own encode/decode)."""

    def __init__(self):
        self.words: list[str] = []

    def encode(self, text, add_special_tokens=False):
        ids = []
        for word in text.split():
            if word not in self.words:
                self.words.append(word)
            ids.append(self.words.index(word))
        return ids

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(self.words[i] for i in ids)


def test_the_simulated_engine_answers_with_a_parseable_action_of_the_asked_length():
    engine = SimulatedEngine(
        _Tokenizer(), EngineSettings(), turn_seconds=0.001, tokens_per_turn=40, answer_probability=0.5, seed=3
    )

    async def turns():
        return [await engine.generate([1, 2, 3], SamplingSpec(seed=0)) for _ in range(20)]

    generations = asyncio.run(turns())
    kinds = {parse_action(g.text).kind for g in generations}
    assert kinds == {"search", "answer"}
    assert all(len(g.token_ids) == 40 == len(g.behaviour_logprobs) for g in generations)
    assert all(lp <= 0 for g in generations for lp in g.behaviour_logprobs)
    assert engine.turns_generated == 20 and engine.tokens_generated == 800
    assert engine.inflight_turns == 0


def _write_metrics(run_dir, name, records):
    path = run_dir / "metrics" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _allocator_records(accepted, p99s, cpu_p99s, open_nodes):
    return [
        {
            "time": 100.0 + 10.0 * i,
            "live_actors": 4,
            "core.nodes_accepted": n,
            "schedule_ms.p99": p,
            "schedule_cpu_ms.p99": c,
            "node_age_s.p50": 0.1,
            "core.open_nodes": o,
        }
        for i, (n, p, c, o) in enumerate(zip(accepted, p99s, cpu_p99s, open_nodes, strict=True))
    ]


def test_a_sharded_point_adds_up_the_shards_and_takes_the_worst_p99(tmp_path):
    # Shard 0: 200 nodes in 20 s, p99s after the first record 3 and 7 ms CPU; shard 1: 100 nodes, 4 and 2 ms.
    _write_metrics(tmp_path, "allocator", _allocator_records([0, 100, 200], [9, 5, 8], [9, 3, 7], [10, 20, 30]))
    _write_metrics(tmp_path, "allocator-1", _allocator_records([0, 60, 100], [1, 6, 4], [1, 4, 2], [5, 5, 5]))
    cores = {"allocator": 0.3, "nats_server": 0.1, "actor_hosts": 0.2, "learner_sim": 0.0}
    zero = dict.fromkeys(cores, 0.0)
    busy = {role: share * 20.0 for role, share in cores.items()}
    point = summarise_point(
        4, tmp_path, 100.0, 120.0, zero, busy, 0.0, 1024.0 * 45, {"allocator": 0.2, "allocator-1": 0.1}
    )
    assert point.nodes_per_s == pytest.approx(10.0 + 5.0)
    assert point.schedule_cpu_p99_ms == 7.0 and point.schedule_p99_ms == 8.0
    assert point.schedule_p99_ms_median == pytest.approx(5.5)  # of 5, 8, 6, 4
    # All shards' CPU (0.3 cores over 20 s) over all their 300 nodes.
    assert point.allocator_cpu_ms_per_node == pytest.approx(1000.0 * 0.3 * 20.0 / 300.0)
    assert point.open_nodes == pytest.approx(20.0 + 5.0)
    assert point.allocator_rss_per_open_node_kib == pytest.approx(45.0 / 25.0)
    first, second = point.shards
    assert (first.name, first.nodes_per_s, first.schedule_cpu_p99_ms, first.cores_busy) == ("allocator", 10.0, 7.0, 0.2)
    assert (second.name, second.nodes_per_s, second.schedule_cpu_p99_ms) == ("allocator-1", 5.0, 4.0)
    assert second.cpu_ms_per_node == pytest.approx(1000.0 * 0.1 * 20.0 / 100.0)
    # One allocator: the same figures as before shards existed, and no per-shard rows.
    single = summarise_point(4, tmp_path, 100.0, 120.0, zero, busy, 0.0, 1024.0 * 20, {"allocator": 0.3})
    assert single.nodes_per_s == pytest.approx(10.0) and single.shards == ()
    assert single.schedule_cpu_p99_ms == 7.0 and single.open_nodes == pytest.approx(20.0)
