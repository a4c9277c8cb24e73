"""`tracerl bench scale`'s arithmetic: counter rates, scaling efficiency, the ceiling, projections,
and the simulated engine's turns (the real actor service runs them in the bench)."""

import asyncio
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
