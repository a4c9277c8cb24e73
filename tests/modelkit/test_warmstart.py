from __future__ import annotations

import itertools
import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from modelkit.config import DemoConfig, TrainingConfig
from modelkit.warmstart import (
    EncodedDemo,
    action_loss,
    collate,
    demonstrations,
    learning_rate,
    left_plateau,
    length_batches,
    total_steps,
)


@given(st.lists(st.integers(1, 300), min_size=1, max_size=60), st.integers(300, 2000), st.integers(0, 10))
@settings(max_examples=50, deadline=None)
def test_length_batches_cover_every_index_once_within_the_budget(lengths, budget, seed):
    batches = length_batches(lengths, budget, random.Random(seed))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= budget


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = TrainingConfig(steps=100, warmup_steps=10, learning_rate=1e-3, min_learning_rate=1e-4, plateau_exit_loss=0)
    rates = [learning_rate(step, config) for step in range(101)]
    assert rates[0] < rates[9] == max(rates)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert abs(rates[100] - 1e-4) < 1e-12
    assert total_steps(config, None) == 100


def test_peak_rate_is_held_on_the_plateau_and_decays_after_leaving_it():
    config = TrainingConfig(
        steps=1000,
        warmup_steps=10,
        learning_rate=1e-3,
        min_learning_rate=1e-4,
        plateau_exit_loss=0.3,
        steps_after_plateau=200,
    )
    assert learning_rate(4, config) == 1e-3 * 5 / 10
    assert learning_rate(500, config) == 1e-3 and total_steps(config, None) == 1000
    # Left at step 400: half-way through the decay window the cosine is at its midpoint.
    assert learning_rate(400, config, 400) == 1e-3
    assert abs(learning_rate(500, config, 400) - (1e-4 + 0.5 * (1e-3 - 1e-4))) < 1e-15
    assert abs(learning_rate(600, config, 400) - 1e-4) < 1e-15
    assert total_steps(config, 400) == 600
    assert total_steps(config, 900) == 1000  # the cap wins


def test_the_plateau_is_left_when_the_recent_mean_drops_below_the_threshold():
    config = TrainingConfig(plateau_exit_loss=0.35)
    assert not left_plateau([0.2] * 19, config)  # too few losses to judge
    assert not left_plateau([0.55] * 30 + [0.1] * 5 + [0.5] * 15, config)  # a few lucky batches
    assert left_plateau([0.55] * 30 + [0.3] * 20, config)
    assert not left_plateau([0.1] * 50, TrainingConfig(plateau_exit_loss=0))


def test_loss_ignores_everything_but_action_tokens(random_model_dir):
    model = AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32).eval()
    mask = [False] * 6 + [True] * 4 + [False] * 3
    base = EncodedDemo(list(range(10, 23)), mask)
    # Only the observation tail differs: those are not targets, and causal attention keeps
    # them from influencing earlier positions.
    changed = EncodedDemo([*list(range(10, 20)), 40, 41, 42], mask)
    with torch.no_grad():
        loss_base = action_loss(model, *collate([base], 1))
        loss_changed = action_loss(model, *collate([changed], 1))
        changed_action = EncodedDemo([*list(range(10, 17)), 50, 51, 52, *list(range(20, 23))], mask)
        loss_action = action_loss(model, *collate([changed_action], 1))
    assert torch.isclose(loss_base, loss_changed)
    assert not torch.isclose(loss_base, loss_action)


def test_demonstrations_are_reproducible_and_cover_each_environment():
    config = DemoConfig(environments=["multihop", "frozenlake"], demos_per_env=5, seed=3)
    first, second = demonstrations(config), demonstrations(config)
    assert first == second
    assert [d.env for d in first] == ["multihop"] * 5 + ["frozenlake"] * 5
    assert all(d.turns[-1][0].rstrip().endswith("</answer>") for d in first if d.env == "multihop")
