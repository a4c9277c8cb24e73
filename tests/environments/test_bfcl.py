"""The BFCL multi-turn environment: its own check of BFCL's success definition on hand-made
cases, and, with ``bfcl-eval`` installed (``make data-bfcl``), every task of the benchmark
replayed from its ground truth and the verdicts compared with BFCL's own checker."""

import decimal
import importlib.util
import itertools
import json
import random

import msgpack
import pytest

from environments import EnvironmentError_, bfcl_data, make_env, make_tasks
from environments.bfcl import (
    COST_LIMITS,
    EXECUTION_ERROR_PREFIX,
    MAX_TURNS_CAP,
    argument_schema,
    call_turn,
    execute,
    ground_truth,
    missing_results,
    named_arguments,
    parse_truth_call,
    reply_turn,
    result_text,
    state_differences,
    task_params,
    turn_failure,
)
from environments.splits import split_of_content
from environments.tags import TOOL_CALL_ACTIONS, parse_action
from environments.toolcall import make_call, parse_call
from protocol import TaskSpec
from tests.environments.roundtrip import assert_restores_at_every_turn

needs_bfcl = pytest.mark.skipif(
    importlib.util.find_spec("bfcl_eval") is None, reason="bfcl-eval is not installed: run make data-bfcl"
)

#: Entry id -> why its ground truth cannot score as a success. None in bfcl-eval 2026.3.23
#: (the version ``make data-bfcl`` installs); the replay test fails if one appears or goes away.
KNOWN_DEFECTS: dict[str, str] = {}


# -- BFCL's check, on hand-made objects --------------------------------------------------------


class Box:
    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def test_result_text_is_what_bfcl_records():
    assert result_text("plain") == "plain"
    assert result_text({"a": 1, "b": [True, None]}) == '{"a": 1, "b": [true, null]}'
    # Not JSON-able: BFCL falls back to str.
    assert result_text({"result": decimal.Decimal("1.5")}) == "{'result': Decimal('1.5')}"
    assert result_text(None) == "None"
    assert result_text([1, 2]) == "[1, 2]"
    assert result_text(2.5) == "2.5"


def test_missing_results_count_repeats_and_ignore_order():
    assert missing_results(["a", "b"], ["b", "x", "a"]) == []
    assert missing_results(["a", "a"], ["a", "b"]) == ["a"]
    assert missing_results(["c"], []) == ["c"]
    assert missing_results([], ["a"]) == []


def test_state_differences_compare_public_attributes_of_the_ground_truth():
    truth = {"Fs": Box(cwd="/a", files=["x"], _clock=1), "Tw": Box(tweets={1: "hi"})}
    same = {"Fs": Box(cwd="/a", files=["x"], _clock=99, extra=True), "Tw": Box(tweets={1: "hi"})}
    assert state_differences(same, truth) == []
    other = {"Fs": Box(cwd="/b", files=["x"]), "Tw": Box()}
    assert state_differences(other, truth) == ["Fs.cwd", "Tw.tweets"]


def test_turn_failure_follows_bfcl_order_of_checks():
    truth = {"Fs": Box(cwd="/a")}
    right, wrong = {"Fs": Box(cwd="/a")}, {"Fs": Box(cwd="/b")}
    # A turn without ground-truth calls is not checked, whatever the policy did.
    assert turn_failure(0, 0, 0, wrong, truth, (), []) == ""
    assert turn_failure(1, 2, 0, right, truth, ("r",), ["r"]) == "turn 1: no function call"
    assert "state differs from the ground truth's in Fs.cwd" in turn_failure(2, 1, 1, wrong, truth, ("r",), ["r"])
    assert "results lack 1" in turn_failure(3, 1, 1, right, truth, ("r", "s"), ["s", "t"])
    # Results of earlier turns count: the policy may have made the call before.
    assert turn_failure(4, 1, 1, right, truth, ("r",), ["r", "other"]) == ""


def test_ground_truth_calls_are_read_as_python_literals():
    assert parse_truth_call("cd(folder='document')") == ("cd", (), {"folder": "document"})
    assert parse_truth_call("sort('a.txt')") == ("sort", ("a.txt",), {})
    name, args, kwargs = parse_truth_call("f(1, x=[1.5, True], y={'k': None})")
    assert (name, args, kwargs) == ("f", (1,), {"x": [1.5, True], "y": {"k": None}})
    for bad in ("cd(folder=", "os.system('x')", "f(x=g())", "f(**k)", "42"):
        with pytest.raises(EnvironmentError_, match="ground-truth call"):
            parse_truth_call(bad)


def test_positional_ground_truth_arguments_get_their_names():
    def sort(file_name, reverse=False):
        return file_name, reverse

    assert named_arguments(sort, ("a.txt",), {}) == {"file_name": "a.txt"}
    assert named_arguments(sort, ("a.txt",), {"reverse": True}) == {"file_name": "a.txt", "reverse": True}
    with pytest.raises(EnvironmentError_, match="do not fit sort"):
        named_arguments(sort, (), {"nope": 1})


class Api:
    def __init__(self):
        self.log = []

    def record(self, value):
        self.log.append(value)
        return {"logged": value}

    def explode(self):
        self.log.append("half done")
        raise KeyError("missing")

    def set_precision(self):
        decimal.getcontext().prec = 3
        return decimal.Decimal(1) / decimal.Decimal(3)


def test_execute_runs_like_bfcl_and_keeps_the_process_numeric_context():
    instances = {"Api": Api()}
    assert execute(instances, "Api", "record", (), {"value": 2}) == '{"logged": 2}'
    # An exception is recorded as BFCL records it, and the state it changed stays changed.
    assert execute(instances, "Api", "explode", (), {}) == f"{EXECUTION_ERROR_PREFIX}'missing'"
    assert execute(instances, "Api", "record", (), {"wrong": 1}).startswith(EXECUTION_ERROR_PREFIX)
    assert instances["Api"].log == [2, "half done"]
    before = decimal.getcontext().prec
    # The result is printed under the call's precision, and the precision is put back.
    assert execute(instances, "Api", "set_precision", (), {}) == "0.333"
    assert decimal.getcontext().prec == before


def test_only_costly_arguments_are_checked_before_a_call_runs():
    schemas = {"logarithm": argument_schema({"precision": 1000}), "ls": argument_schema({})}
    assert parse_call('{"name": "logarithm", "arguments": {"precision": 1000, "value": 5}}', schemas, 500)
    too_costly = parse_call('{"name": "logarithm", "arguments": {"precision": 100000}}', schemas, 500)
    assert too_costly["error"] == "invalid_arguments"
    assert "must be <= 1000" in too_costly["violations"][0]
    # Anything else goes to the API, as in BFCL: a string precision, unknown arguments.
    assert parse_call('{"name": "logarithm", "arguments": {"precision": "9"}}', schemas, 500).name == "logarithm"
    assert parse_call('{"name": "ls", "arguments": {"whatever": [1]}}', schemas, 500).name == "ls"
    assert parse_call('{"name": "rm", "arguments": {}}', schemas, 500)["error"] == "unknown_function"


def test_tool_call_contents_can_keep_their_spacing():
    text = '<tool_call> {"name": "echo", "arguments": {"content": "a  b"}} </tool_call>'
    assert parse_action(text, TOOL_CALL_ACTIONS, keep_spacing=True).content.endswith('"a  b"}}')
    assert parse_action(text, TOOL_CALL_ACTIONS).content.endswith('"a b"}}')


def test_without_the_package_the_error_names_the_fix(monkeypatch):
    monkeypatch.setattr(bfcl_data, "PACKAGE", "bfcl_eval_absent_here")
    bfcl_data.load_entries.cache_clear()
    try:
        env = make_env("bfcl")  # constructing needs nothing
        task = TaskSpec(env="bfcl", task_id="t", params=task_params("multi_turn_base_0", 10))
        with pytest.raises(EnvironmentError_, match="bfcl-eval package, not installed: run make data-bfcl"):
            env.reset(task)
        with pytest.raises(EnvironmentError_, match="run make data-bfcl"):
            make_tasks("bfcl", "train", 1, 0)
    finally:
        bfcl_data.load_entries.cache_clear()


def test_a_missing_api_module_names_the_fix(monkeypatch):
    monkeypatch.setattr(bfcl_data, "API_PACKAGE", "bfcl_eval_absent_here.func_source_code")
    bfcl_data.api_class.cache_clear()
    try:
        with pytest.raises(
            EnvironmentError_, match=r"cannot import BFCL's MathAPI .*bfcl_eval_absent_here.*make data-bfcl"
        ):
            bfcl_data.api_class("MathAPI")
    finally:
        bfcl_data.api_class.cache_clear()


# -- the benchmark itself ------------------------------------------------------------------------


def _task(entry_id: str, max_turns: int = MAX_TURNS_CAP) -> TaskSpec:
    return TaskSpec(env="bfcl", task_id=f"bfcl-{entry_id}", params=task_params(entry_id, max_turns))


def _play(entry_id: str, turns) -> tuple[float, str]:
    """Reward and failure of an episode making ``turns`` (per user turn, its calls) and replying."""
    env = make_env("bfcl")
    env.reset(_task(entry_id))
    for calls in turns:
        for call in calls:
            assert not env.step(call_turn(call)).done
        step = env.step(reply_turn())
        if step.done:
            return step.reward, env.failure
    raise AssertionError(f"{entry_id}: the episode did not end after its last reply")


def _data_lines(name: str) -> int:
    path = bfcl_data.data_dir() / name
    return sum(1 for line in path.read_text().splitlines() if line.strip())


@needs_bfcl
def test_every_ground_truth_replays_as_a_success():
    entries = bfcl_data.load_entries()
    assert len(entries) == _data_lines(bfcl_data.DATA_FILE) == 200, "multi-turn base tasks loaded"
    failures = {}
    for entry_id in sorted(entries):
        reward, failure = _play(entry_id, ground_truth(entry_id).calls)
        if reward != 1.0:
            failures[entry_id] = failure
    assert failures.keys() == KNOWN_DEFECTS.keys(), failures
    assert sum(map(len, (e.ground_truth for e in entries.values()))) > 0


@needs_bfcl
def test_verdicts_agree_with_bfcl_own_checker():
    """Ground truths perturbed (a call dropped, repeated, moved to the next turn, replaced, turns
    reversed) are judged by this environment and by BFCL's multi-turn checker: the same verdict
    every time. The checker needs no missing dependency; only this test imports it."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    rng, runs = random.Random(0), itertools.count()
    verdicts, disagreements = {True: 0, False: 0}, []
    for entry_id, entry in sorted(bfcl_data.load_entries().items()):
        truth = [list(calls) for calls in ground_truth(entry_id).calls]
        for attempt in range(4):
            turns = _perturbed(truth, rng) if attempt else truth
            reward, _ = _play_all(entry_id, turns)
            bfcl_entry = {
                "id": entry_id,
                "initial_config": json.loads(entry.initial_config_json),
                "involved_classes": list(entry.involved_classes),
            }
            steps = [[[_python_call(call)] for call in calls] for calls in turns]
            ground = [list(calls) for calls in entry.ground_truth]
            # Each run gets its own model name: BFCL keeps instances in globals keyed by it.
            theirs = multi_turn_checker(steps, ground, bfcl_entry, "multi_turn_base", f"run{next(runs)}")["valid"]
            verdicts[theirs] += 1
            if (reward == 1.0) != theirs:
                disagreements.append((entry_id, turns, theirs))
    assert disagreements == []
    assert verdicts[True] > 200 and verdicts[False] > 200, verdicts


def _perturbed(truth, rng: random.Random):
    turns = [list(calls) for calls in truth]
    places = [(i, j) for i, calls in enumerate(turns) for j in range(len(calls))]
    i, j = rng.choice(places)
    kind = rng.choice(["drop", "repeat", "move", "reverse", "replace"])
    if kind == "drop":
        del turns[i][j]
    elif kind == "repeat":
        turns[i].insert(j, turns[i][j])
    elif kind == "move" and i + 1 < len(turns):
        turns[i + 1].insert(0, turns[i].pop(j))
    elif kind == "reverse":
        turns[i].reverse()
    else:
        k, m = rng.choice(places)
        turns[i][j] = truth[k][m]
    return turns


def _play_all(entry_id: str, turns) -> tuple[float, str]:
    """As ``_play``, but a failed turn may end the episode early."""
    env = make_env("bfcl")
    env.reset(_task(entry_id))
    for calls in turns:
        for call in calls:
            env.step(call_turn(call))
        step = env.step(reply_turn())
        if step.done:
            return step.reward, env.failure
    return 0.0, "not done"


def _python_call(call) -> str:
    return f"{call.name}({', '.join(f'{name}={value!r}' for name, value in call.arguments.items())})"


@needs_bfcl
def test_the_expert_solves_every_task():
    for entry_id in sorted(bfcl_data.load_entries()):
        env = make_env("bfcl")
        env.reset(_task(entry_id))
        step = None
        while step is None or not step.done:
            step = env.step(env.expert_action())
        assert step.reward == 1.0, (entry_id, env.failure)


@needs_bfcl
def test_an_episode_is_the_conversation():
    entry = bfcl_data.load_entries()["multi_turn_base_0"]
    truth = ground_truth("multi_turn_base_0")
    env = make_env("bfcl")
    prompt = env.reset(_task("multi_turn_base_0"))
    assert prompt.endswith(f"\nuser : {entry.user_turns[0]}\n")
    assert '"name": "post_tweet"' in prompt and '"name": "mkdir"' in prompt  # TwitterAPI and GorillaFileSystem
    observation = env.step(call_turn(truth.calls[0][0])).observation
    assert observation == f"<tool_response> {truth.results[0][0]} </tool_response>"
    # Replying before the turn's work is done fails BFCL's state check and ends the episode.
    step = env.step(reply_turn())
    assert step.done and step.reward == 0.0
    assert "turn 0: state differs" in env.failure

    env.reset(_task("multi_turn_base_0"))
    for call in truth.calls[0]:
        env.step(call_turn(call))
    step = env.step(reply_turn())
    assert not step.done and step.observation == f"\nuser : {entry.user_turns[1]}\n"
    # A reply without any call, where the ground truth has calls, fails.
    step = env.step(reply_turn())
    assert step.done and step.reward == 0.0 and env.failure == "turn 1: no function call"


@needs_bfcl
def test_bad_actions_are_observations_and_the_episode_goes_on():
    env = make_env("bfcl")
    env.reset(_task("multi_turn_base_49"))  # GorillaFileSystem and MathAPI
    cases = {
        "no tags at all": "no_action",
        "<tool_call> {not json </tool_call>": "invalid_json",
        '<tool_call> ["cd"] </tool_call>': "bad_call",
        '<tool_call> {"name": "cd", "arguments": "x"} </tool_call>': "bad_call",
        '<tool_call> {"name": "format_disk", "arguments": {}} </tool_call>': "unknown_function",
        '<tool_call> {"name": "logarithm", "arguments": {"value": 2, "base": 3, "precision": 99999}} </tool_call>': (
            "invalid_arguments"
        ),
        '<tool_call> {"name": "power", "arguments": {"base": 10, "exponent": 1000000000}} </tool_call>': (
            "invalid_arguments"
        ),
        "<tool_call> "
        + json.dumps({"name": "echo", "arguments": {"content": "x" * 5000}})
        + " </tool_call>": "too_long",
    }
    for action, kind in cases.items():
        step = env.step(action)
        assert not step.done
        assert (
            json.loads(step.observation.removeprefix("<tool_response>").removesuffix("</tool_response>"))["error"]
            == kind
        )
    # Calls that reach the API fail inside it, as in BFCL.
    step = env.step('<tool_call> {"name": "cd", "arguments": {"folder": "nowhere"}} </tool_call>')
    assert "nowhere" in step.observation and not step.done
    step = env.step('<tool_call> {"name": "ls", "arguments": {"colour": true}} </tool_call>')
    assert f"<tool_response> {EXECUTION_ERROR_PREFIX}" in step.observation
    assert "unexpected keyword argument 'colour'" in step.observation
    assert env.snapshot()["turn"] == len(cases) + 2


@needs_bfcl
def test_a_file_keeps_the_spacing_of_its_text():
    env = make_env("bfcl")
    env.reset(_task("multi_turn_base_2"))
    env.step(call_turn(make_call("touch", {"file_name": "spaced.txt"})))
    env.step(call_turn(make_call("echo", {"content": "a  b\n c", "file_name": "spaced.txt"})))
    assert env.step(call_turn(make_call("cat", {"file_name": "spaced.txt"}))).observation == (
        '<tool_response> {"file_content": "a  b\\n c"} </tool_response>'
    )


@needs_bfcl
def test_the_turn_cap_is_a_forced_termination():
    truth = ground_truth("multi_turn_base_0")
    env = make_env("bfcl")
    env.reset(_task("multi_turn_base_0", max_turns=len(truth.calls[0]) + 1))
    for call in truth.calls[0]:
        env.step(call_turn(call))
    step = env.step(reply_turn())  # the first turn passes, but the conversation is not over
    assert step.done and step.reward == 0.0 and env.failure == ""
    assert env.step(reply_turn()).done


@needs_bfcl
def test_snapshot_restores_at_every_turn():
    tasks = [_task(entry_id) for entry_id in ("multi_turn_base_0", "multi_turn_base_49", "multi_turn_base_167")]
    tasks += make_tasks("bfcl", "heldout", 3, seed=5)

    def choose(env, rng):
        roll = rng.random()
        if roll < 0.65:
            return env.expert_action()
        if roll < 0.75:
            return rng.choice(["<tool_call> {oops </tool_call>", "text", '<tool_call> {"name": "nope"} </tool_call>'])
        truth = ground_truth(env.entry.entry_id).calls
        return call_turn(rng.choice([call for calls in truth for call in calls]))

    assert_restores_at_every_turn("bfcl", tasks, choose, turns=14, episodes_per_task=3, seed=1)


@needs_bfcl
def test_corrupt_snapshots_are_refused():
    env = make_env("bfcl")
    env.reset(_task("multi_turn_base_0"))
    truth = ground_truth("multi_turn_base_0")
    for call in truth.calls[0]:
        env.step(call_turn(call))
    env.step(reply_turn())
    good = msgpack.unpackb(msgpack.packb(env.snapshot()))
    make_env("bfcl").restore(good)

    def corrupt(**changes):
        return {**good, **changes}

    cases = [
        (corrupt(calls=[]), "a list per user turn"),
        (corrupt(calls="x"), "a list per user turn"),
        (corrupt(calls=[[{"name": "rm_rf", "arguments": {}}], []]), "not a valid call"),
        (corrupt(calls=[[{"name": "cd", "arguments": []}], []]), "not a valid call"),
        (corrupt(replies=0), "replies to its last turn without an end|do not fit"),
        (corrupt(replies=5), "do not fit"),
        (corrupt(replies=True), "do not fit"),
        (corrupt(turn=1), "more calls and replies"),
        (corrupt(done=True), "done before its last reply"),
        # The first turn's calls missing: its reply fails the check and ends the episode there.
        (corrupt(calls=[[], []], turn=good["turn"]), "goes on after user turn 0"),
        (corrupt(calls=[[], []], replies=2), "do not fit|goes on"),
    ]
    for snapshot, message in cases:
        with pytest.raises(EnvironmentError_, match=message):
            make_env("bfcl").restore(snapshot)
    finished = make_env("bfcl")
    finished.reset(_task("multi_turn_base_0"))
    finished.step(reply_turn())  # fails turn 0: done, reward 0
    state = finished.snapshot()
    make_env("bfcl").restore(state)
    with pytest.raises(EnvironmentError_, match="reward"):
        make_env("bfcl").restore({**state, "reward": 1.0})


@needs_bfcl
def test_bad_task_params_are_refused():
    env = make_env("bfcl")
    for params, message in [
        ({"entry_id": "multi_turn_base_9999", "max_turns": 5}, "no BFCL multi-turn base entry"),
        ({"entry_id": "multi_turn_base_0", "max_turns": 0}, "max_turns must be an int"),
        ({"entry_id": "multi_turn_base_0", "max_turns": MAX_TURNS_CAP + 1}, "max_turns must be an int"),
        ({"entry_id": 3, "max_turns": 5}, "entry_id must be a string"),
        ({"entry_id": "multi_turn_base_0", "max_turns": 5, "x": 1}, "exactly entry_id and max_turns"),
    ]:
        with pytest.raises(EnvironmentError_, match=message):
            env.reset(TaskSpec(env="bfcl", task_id="t", params=params))


@needs_bfcl
def test_tasks_split_by_entry_and_follow_the_difficulty_knobs():
    entries = bfcl_data.load_entries()
    train = make_tasks("bfcl", "train", 60, seed=1)
    assert train == make_tasks("bfcl", "train", 60, seed=1)
    assert train != make_tasks("bfcl", "train", 60, seed=2)
    held = {t.params["entry_id"] for seed in range(5) for t in make_tasks("bfcl", "heldout", 60, seed=seed)}
    trained = {t.params["entry_id"] for seed in range(5) for t in make_tasks("bfcl", "train", 60, seed=seed)}
    assert held and trained and not held & trained
    assert all(split_of_content(entry_id) == "heldout" for entry_id in held)
    for task in make_tasks("bfcl", "train", 10, seed=0, max_calls=4, max_user_turns=3, slack=1):
        entry = entries[task.params["entry_id"]]
        calls = sum(map(len, entry.ground_truth))
        assert calls <= 4 and len(entry.user_turns) <= 3
        assert task.params["max_turns"] == calls + len(entry.user_turns) + 1
    available = sum(split_of_content(entry_id) == "train" for entry_id in entries)
    with pytest.raises(ValueError, match=f"only {available} fit"):
        make_tasks("bfcl", "train", available + 1, seed=0)
    with pytest.raises(ValueError, match="slack"):
        make_tasks("bfcl", "train", 1, seed=0, slack=-1)


@needs_bfcl
def test_no_ground_truth_argument_comes_near_the_cost_limits():
    for entry_id in bfcl_data.load_entries():
        for calls in ground_truth(entry_id).calls:
            for call in calls:
                for (_, function, argument), limit in COST_LIMITS.items():
                    if call.name == function and argument in call.arguments:
                        assert abs(call.arguments[argument]) <= limit / 10
