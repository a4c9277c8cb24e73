import msgpack
import pytest

from environments import (
    SPECIAL_TOKENS,
    STOP_STRINGS,
    EnvironmentError_,
    env_names,
    env_special_tokens,
    make_env,
    make_tasks,
)
from environments.base import Environment
from tracerl.typed import from_plain, to_plain
from protocol import TaskSpec

GENERATED = ["multihop", "frozenlake", "sokoban", "math"]


def test_env_names_lists_every_environment():
    assert env_names() == ["frozenlake", "math", "multihop", "searchqa", "sokoban"]
    for name in env_names():
        env = make_env(name)
        assert isinstance(env, Environment)
        assert env.name == name
        expected_stops = {"</calculate>", "</answer>"} if name == "math" else {"</search>", "</answer>"}
        assert set(env.stop_strings) == expected_stops
        assert set(env.stop_strings) <= set(env.special_tokens) <= set(SPECIAL_TOKENS)
        assert 1 <= env.max_turns <= 8


def test_unknown_env_lists_valid_names():
    with pytest.raises(EnvironmentError_, match="unknown environment 'chess'.*frozenlake, math, multihop, searchqa, sokoban"):
        make_env("chess")
    with pytest.raises(EnvironmentError_, match="valid names"):
        make_tasks("chess", "train", 3, 0)


def test_bad_split_and_unknown_knob_are_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        make_tasks("multihop", "test", 3, 0)
    with pytest.raises(TypeError, match="num_hops"):
        make_tasks("multihop", "train", 3, 0, num_hops=2)


def test_special_tokens_cover_every_tag():
    search_r1 = ("<think>", "</think>", "<search>", "</search>", "<answer>", "</answer>", "<information>", "</information>")
    # New tags go last, so the ids of earlier ones never move.
    assert SPECIAL_TOKENS == (*search_r1, "<calculate>", "</calculate>")
    assert STOP_STRINGS == ("</search>", "</answer>", "</calculate>")


def test_a_model_for_some_environments_gets_exactly_their_tags():
    search_r1 = SPECIAL_TOKENS[:8]
    for names in (["multihop"], ["frozenlake"], ["sokoban", "searchqa"]):
        assert env_special_tokens(names) == search_r1
    assert env_special_tokens(["math"]) == tuple(t for t in SPECIAL_TOKENS if t not in ("<search>", "</search>"))
    assert env_special_tokens(["math", "multihop"]) == SPECIAL_TOKENS


@pytest.mark.parametrize("name", GENERATED)
def test_tasks_are_deterministic_distinct_and_plain(name):
    first = make_tasks(name, "train", 40, seed=7)
    again = make_tasks(name, "train", 40, seed=7)
    other = make_tasks(name, "train", 40, seed=8)
    assert first == again
    assert first != other
    assert len({t.task_id for t in first}) == 40
    for task in first:
        assert task.env == name
        wire = msgpack.unpackb(msgpack.packb(to_plain(task)))
        assert from_plain(TaskSpec, wire) == task


@pytest.mark.parametrize("name", GENERATED)
def test_train_and_heldout_never_overlap(name):
    train = make_tasks(name, "train", 150, seed=1)
    heldout = make_tasks(name, "heldout", 150, seed=1)
    # Also across seeds: the separation must not rely on callers choosing seeds carefully.
    heldout_other_seed = make_tasks(name, "heldout", 150, seed=2)
    train_content = {repr(sorted(t.params.items())) for t in train}
    for task in heldout + heldout_other_seed:
        assert repr(sorted(task.params.items())) not in train_content
    assert not {t.task_id for t in train} & {t.task_id for t in heldout + heldout_other_seed}


def test_task_for_other_env_is_refused():
    task = make_tasks("frozenlake", "train", 1, 0)[0]
    with pytest.raises(EnvironmentError_, match="is for env 'frozenlake', not 'sokoban'"):
        make_env("sokoban").reset(task)
