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
from environments.snapshots import task_from_plain, task_to_plain

GENERATED = ["multihop", "frozenlake", "sokoban", "math", "toolcall", "webshop"]
STOPS = {
    "math": {"</calculate>", "</answer>"},
    "toolcall": {"</tool_call>", "</answer>"},
    "bfcl": {"</tool_call>", "</answer>"},
    "webshop": {"</answer>"},
}
#: BFCL's conversations take up to 7 user turns and 10 calls, and room to explore.
TURN_CAPS = {"bfcl": 60}


def test_env_names_lists_every_environment():
    assert env_names() == ["bfcl", "frozenlake", "math", "multihop", "searchqa", "sokoban", "toolcall", "webshop"]
    for name in env_names():
        env = make_env(name)
        assert isinstance(env, Environment)
        assert env.name == name
        assert set(env.stop_strings) == STOPS.get(name, {"</search>", "</answer>"})
        assert set(env.stop_strings) <= set(env.special_tokens) <= set(SPECIAL_TOKENS)
        assert 1 <= env.max_turns <= TURN_CAPS.get(name, 10)


def test_unknown_env_lists_valid_names():
    with pytest.raises(
        EnvironmentError_,
        match=r"unknown environment 'chess'.*bfcl, frozenlake, math, multihop, searchqa, sokoban, toolcall, webshop",
    ):
        make_env("chess")
    with pytest.raises(EnvironmentError_, match="valid names"):
        make_tasks("chess", "train", 3, 0)


def test_bad_split_and_unknown_knob_are_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        make_tasks("multihop", "test", 3, 0)
    with pytest.raises(TypeError, match="num_hops"):
        make_tasks("multihop", "train", 3, 0, num_hops=2)


def test_special_tokens_cover_every_tag():
    search_r1 = (
        "<think>",
        "</think>",
        "<search>",
        "</search>",
        "<answer>",
        "</answer>",
        "<information>",
        "</information>",
    )
    # New tags go last, so the ids of earlier ones never move.
    tools = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
    assert (*search_r1, "<calculate>", "</calculate>", *tools) == SPECIAL_TOKENS
    assert STOP_STRINGS == ("</search>", "</answer>", "</calculate>", "</tool_call>")


def test_a_model_for_some_environments_gets_exactly_their_tags():
    search_r1 = SPECIAL_TOKENS[:8]
    for names in (["multihop"], ["frozenlake"], ["sokoban", "searchqa"]):
        assert env_special_tokens(names) == search_r1
    assert env_special_tokens(["math"]) == (*search_r1[:2], *search_r1[4:], "<calculate>", "</calculate>")
    assert env_special_tokens(["math", "multihop"]) == SPECIAL_TOKENS[:10]
    # Qwen3's own tool tags; no search, calculator or information block.
    tool_tags = (
        "<think>",
        "</think>",
        "<answer>",
        "</answer>",
        "<tool_call>",
        "</tool_call>",
        "<tool_response>",
        "</tool_response>",
    )
    assert env_special_tokens(["toolcall"]) == tool_tags
    assert env_special_tokens(["webshop"]) == (
        "<think>",
        "</think>",
        "<answer>",
        "</answer>",
        "<information>",
        "</information>",
    )


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
        wire = msgpack.unpackb(msgpack.packb(task_to_plain(task)))
        assert task_from_plain(wire) == task


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


def test_task_options_are_the_generators_keywords_and_unknown_ones_are_refused_by_name():
    from environments.registry import check_task_options, task_options

    assert task_options("multihop") == [
        "min_hops",
        "max_hops",
        "num_people",
        "num_relations",
        "distractors",
        "top_k",
        "num_kbs",
    ]
    assert "train_file" in task_options("math")
    check_task_options("multihop", ["min_hops", "distractors"])
    with pytest.raises(ValueError, match=r"no task option 'num_hops'.*min_hops, max_hops"):
        check_task_options("multihop", ["min_hops", "num_hops"])
