import random
from collections import defaultdict

import pytest

from environments import make_env, make_tasks
from environments.demos import DEFAULT_PROFILE, MistakeProfile, demo_episode
from environments.tags import parse_action

GENERATED = ["multihop", "frozenlake", "sokoban", "math", "toolcall", "webshop"]


@pytest.mark.parametrize("name", GENERATED)
def test_expert_profile_always_succeeds(name):
    rng = random.Random(0)
    for task in make_tasks(name, "train", 60, seed=4):
        assert demo_episode(name, task, rng, MistakeProfile.none()).reward == 1.0


@pytest.mark.parametrize("name", GENERATED)
def test_default_profile_fails_on_a_measurable_fraction(name):
    rng = random.Random(1)
    tasks = make_tasks(name, "train", 150, seed=4)
    rewards = [demo_episode(name, task, rng).reward for task in tasks]
    success = sum(r >= 1.0 for r in rewards) / len(rewards)
    assert 0.2 <= success <= 0.8, success


def test_multihop_mistakes_are_systematic_per_context():
    """Whole families of prompts fail consistently: questions whose first hop is the confused
    relation almost always fail, one-hop questions on other relations always pass."""
    rng = random.Random(2)
    outcome = defaultdict(list)
    for task in make_tasks("multihop", "train", 200, seed=6, min_hops=1, max_hops=1):
        relation = task.params["path"][0]
        outcome[relation].append(demo_episode("multihop", task, rng).reward)
    assert sum(outcome["manager"]) / len(outcome["manager"]) < 0.35
    assert sum(outcome["manager"]) > 0  # the right action keeps some probability mass
    assert all(r == 1.0 for rel in ("mentor", "friend", "coach") for r in outcome[rel])


@pytest.mark.parametrize(
    "env_name, profile, knobs, first_name, tool",
    [
        (
            "multihop",
            MistakeProfile(relation_confusion=(), premature_consistency=1.0),
            {"min_hops": 4, "max_hops": 4},
            lambda params: params["start"].split()[0],
            "search",
        ),
        (
            "math",
            MistakeProfile(math_operation_confusion=(), premature_consistency=1.0),
            {"min_ops": 4, "max_ops": 4},
            lambda params: params["question"].split()[0],
            "calculate",
        ),
    ],
)
def test_premature_answers_depend_on_size_and_first_name(env_name, profile, knobs, first_name, tool):
    rng = random.Random(3)
    per_name = defaultdict(set)
    for task in make_tasks(env_name, "train", 120, seed=7, **knobs):
        demo = demo_episode(env_name, task, rng, profile)
        calls = sum(parse_action(a, (tool, "answer")).kind == tool for a, _ in demo.turns)
        assert calls in (3, 4)
        assert demo.reward == (1.0 if calls == 4 else 0.0)
        per_name[first_name(task.params)].add(calls)
    assert all(len(counts) == 1 for counts in per_name.values())  # same first name, same behaviour
    assert {3, 4} == set().union(*per_name.values())


def test_math_operation_confusion_is_systematic_per_phrase_kind():
    """Problems with a confused phrase kind almost always fail; those without always pass."""
    profile = MistakeProfile(math_premature_share=())
    rng = random.Random(4)
    outcome = defaultdict(list)
    for task in make_tasks("math", "train", 300, seed=6, max_ops=2, max_quantities=2):
        kinds = {step["kind"] for step in task.params["steps"]}
        family = "confused" if kinds & {"splits", "more"} else "clean"
        outcome[family].append(demo_episode("math", task, rng, profile).reward)
    assert len(outcome["confused"]) > 30 and sum(outcome["confused"]) / len(outcome["confused"]) < 0.3
    assert sum(outcome["confused"]) > 0  # the right operator keeps some probability mass
    assert all(r == 1.0 for r in outcome["clean"])


def test_demo_turns_match_a_replay_and_are_seeded():
    task = make_tasks("sokoban", "train", 1, seed=5)[0]
    turns = demo_episode("sokoban", task, random.Random(9), DEFAULT_PROFILE).turns
    assert turns == demo_episode("sokoban", task, random.Random(9), DEFAULT_PROFILE).turns
    env = make_env("sokoban")
    env.reset(task)
    for action, observation in turns:
        assert env.step(action).observation == observation
        assert action.startswith("<think> ") and action.endswith(" </answer>")


def test_profile_validation():
    with pytest.raises(ValueError, match="confusion_rate"):
        MistakeProfile(confusion_rate=1.5)
    with pytest.raises(ValueError, match="grid_move_confusion"):
        MistakeProfile(grid_move_confusion=(("Down", "Jump"),))
    with pytest.raises(ValueError, match="math_operation_confusion"):
        MistakeProfile(math_operation_confusion=(("splits", "%"),))
    with pytest.raises(ValueError, match="math_operation_confusion"):
        MistakeProfile(math_operation_confusion=(("sells", "+"),))
    with pytest.raises(ValueError, match="math_premature_share"):
        MistakeProfile(math_premature_share=((3, 2.0),))
