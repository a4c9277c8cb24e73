import copy
import json
import random
import re
from collections import defaultdict
from pathlib import Path

import msgpack
import pytest

from environments import EnvironmentError_, make_env, make_tasks
from environments.argschema import SchemaDefinitionError, check_schema, validate
from environments.demos import MistakeProfile, demo_episode
from environments.splits import split_of_content
from environments.storeapi import TOOLS, database_problems, next_order_id, signature
from environments.toolcall import (
    MAX_TURNS_CAP,
    ToolCallEnvironment,
    generate_tasks,
    load_tasks,
    make_call,
    parse_task,
    request_quotes,
)
from protocol import TaskSpec
from tests.environments.roundtrip import assert_restores_at_every_turn

SAMPLE = Path(__file__).resolve().parents[2] / "environments" / "data" / "toolcall_sample.jsonl"

INITIAL = {
    "users": {
        "u1": {"name": "Ana Ruiz", "balance": 30, "orders": ["o1", "o2"]},
        "u2": {"name": "Omar Diaz", "balance": 100, "orders": ["o3"]},
    },
    "products": {"lamp": {"price": 25, "stock": 1}, "mug": {"price": 8, "stock": 5}},
    "orders": {
        "o1": {"user_id": "u1", "product": "mug", "quantity": 2, "total": 16, "status": "delivered"},
        "o2": {"user_id": "u1", "product": "lamp", "quantity": 1, "total": 25, "status": "pending"},
        "o3": {"user_id": "u2", "product": "mug", "quantity": 1, "total": 8, "status": "pending"},
    },
}


def _goal():
    # Cancel o2 (refund 25, a lamp back in stock), then buy 3 mugs (24) as o4: 30 + 25 - 24 = 31.
    goal = copy.deepcopy(INITIAL)
    goal["orders"]["o2"].update(status="cancelled", reason="ordered by mistake")
    goal["products"]["lamp"]["stock"] = 2
    goal["products"]["mug"]["stock"] = 2
    goal["users"]["u1"]["balance"] = 31
    goal["users"]["u1"]["orders"].append("o4")
    goal["orders"]["o4"] = {"user_id": "u1", "product": "mug", "quantity": 3, "total": 24, "status": "pending"}
    return goal


def call(function, **arguments):
    return {"name": function, "arguments": arguments}


SOLUTION = [
    call("find_user", name="Ana Ruiz"),
    call("get_order", order_id="o1"),
    call("get_order", order_id="o2"),
    call("cancel_order", order_id="o2", reason="ordered by mistake"),
    call("place_order", user_id="u1", product="mug", quantity=3),
]
HAND_PARAMS = {
    "instruction": "i am Ana Ruiz . cancel my pending lamp order , i ordered it by mistake . "
    "then buy mug , quantity 3 .",
    "tools": list(TOOLS),
    "initial": INITIAL,
    "goal": _goal(),
    "solution": SOLUTION,
    "max_turns": 7,
}


def hand_task(**changes):
    return TaskSpec(env="toolcall", task_id="hand", params={**copy.deepcopy(HAND_PARAMS), **changes})


def tool_call(function, **arguments):
    return f"<tool_call> {json.dumps(call(function, **arguments))} </tool_call>"


def response(result):
    text = result.observation
    assert text.startswith("<tool_response> ") and text.endswith(" </tool_response>"), text
    return json.loads(text[len("<tool_response> ") : -len(" </tool_response>")])


def play(env, actions):
    return [env.step(action) for action in actions]


# -- the environment --------------------------------------------------------------------------


def test_registry_builds_the_toolcall_environment():
    env = make_env("toolcall")
    assert isinstance(env, ToolCallEnvironment) and env.name == "toolcall"
    assert set(env.stop_strings) == {"</tool_call>", "</answer>"}
    assert set(env.stop_strings) <= set(env.special_tokens)


def test_the_prompt_lists_each_tool_rendered_from_its_schema():
    env = make_env("toolcall")
    prompt = env.reset(hand_task(tools=["find_user", "cancel_order", "place_order"], solution=[]))
    lines = prompt.split("\n")
    assert lines[1:5] == [
        "tools :",
        "find_user ( name : string ) : look up a customer by full name",
        'cancel_order ( order_id : string , reason : "no longer needed" | "ordered by mistake" ) : '
        "cancel a pending order and refund it",
        "place_order ( user_id : string , product : string , quantity : integer 1 to 10 ) : "
        "order a product for a customer , paid from the balance",
    ]
    assert lines[-1] == "request : " + HAND_PARAMS["instruction"]
    assert '<tool_call> {"name": tool , "arguments": {...}} </tool_call>' in lines[0]


def test_the_expert_follows_the_solution_and_reaches_the_goal():
    env = make_env("toolcall")
    env.reset(hand_task())
    assert env.expert_action() == (
        "<think> step 1 i am Ana Ruiz . find_user Ana Ruiz </think> "
        '<tool_call> {"name": "find_user", "arguments": {"name": "Ana Ruiz"}} </tool_call>'
    )
    first = env.step(env.expert_action())
    assert response(first) == {"user_id": "u1", "name": "Ana Ruiz", "balance": 30, "orders": ["o1", "o2"]}
    assert env.score() == pytest.approx(1 / 6)
    observed = [response(env.step(env.expert_action())) for _ in range(4)]
    assert observed[1] == {
        "order_id": "o2",
        "user_id": "u1",
        "product": "lamp",
        "quantity": 1,
        "total": 25,
        "status": "pending",
    }
    assert observed[2] == {"order_id": "o2", "status": "cancelled", "refund": 25, "balance": 55}
    assert observed[3] == {"order_id": "o4", "status": "pending", "total": 24, "balance": 31}
    assert env.expert_action() == "<think> the request is done </think> <answer> done </answer>"
    final = env.step(env.expert_action())
    assert (final.observation, final.done, final.reward) == ("", True, 1.0) and env.score() == 1.0


def test_each_call_quotes_the_words_of_the_request_it_carries_out():
    solution = [make_call(c["name"], c["arguments"]) for c in SOLUTION]
    assert request_quotes(HAND_PARAMS["instruction"], solution) == [
        "i am Ana Ruiz .",
        "",
        "",
        "cancel my pending lamp order , i ordered it by mistake .",
        "then buy mug , quantity 3 .",
    ]
    env = make_env("toolcall")
    env.reset(hand_task())
    thoughts = []
    while not (result := env.step(action := env.expert_action())).done:
        thoughts.append(action.split(" </think>")[0].removeprefix("<think> "))
    assert thoughts == [
        "step 1 i am Ana Ruiz . find_user Ana Ruiz",
        "step 2 get_order o1",
        "step 3 get_order o2",
        "step 4 cancel my pending lamp order , i ordered it by mistake . cancel_order o2 ordered by mistake",
        "step 5 then buy mug , quantity 3 . place_order mug 3 u1",
    ]
    assert result.reward == 1.0


@pytest.mark.parametrize(
    "instruction",
    [
        "please cancel my lamp order and buy three mugs",  # a loaded dataset's own wording
        "i am Ana Ruiz . cancel my pending lamp order , i ordered it by mistake .",  # one clause, two writes
        "i am Ana Ruiz",
    ],
)
def test_requests_not_in_the_generators_form_get_no_quotes(instruction):
    solution = [make_call(c["name"], c["arguments"]) for c in SOLUTION]
    assert request_quotes(instruction, solution) == [""] * len(solution)


def test_any_call_sequence_that_reaches_the_goal_state_succeeds():
    """Judged by the final state, not the calls: buying first, guessing ids and extra reads all pass."""
    env = make_env("toolcall")
    env.reset(hand_task())
    play(
        env,
        [
            tool_call("place_order", user_id="u1", product="mug", quantity=3),
            tool_call("get_product", product="lamp"),
            tool_call("cancel_order", order_id="o2", reason="ordered by mistake"),
        ],
    )
    assert env.step("<answer> all done </answer>").reward == 1.0


@pytest.mark.parametrize(
    "actions",
    [
        [
            tool_call("cancel_order", order_id="o2", reason="no longer needed"),
            tool_call("place_order", user_id="u1", product="mug", quantity=3),
        ],  # the wrong reason is recorded
        [tool_call("cancel_order", order_id="o2", reason="ordered by mistake")],  # the purchase is missing
        [
            tool_call("cancel_order", order_id="o2", reason="ordered by mistake"),
            tool_call("place_order", user_id="u1", product="mug", quantity=3),
            tool_call("change_quantity", order_id="o3", quantity=2),
        ],  # another customer's order changed too
    ],
)
def test_any_other_final_state_fails(actions):
    env = make_env("toolcall")
    env.reset(hand_task())
    play(env, actions)
    assert env.step("<answer> done </answer>").reward == 0.0


def test_the_final_state_is_judged_at_the_turn_cap_too():
    env = make_env("toolcall")
    env.reset(hand_task(max_turns=3, solution=[]))
    results = play(
        env,
        [
            tool_call("cancel_order", order_id="o2", reason="ordered by mistake"),
            tool_call("place_order", user_id="u1", product="mug", quantity=3),
            "<think> nothing more </think>",
        ],
    )
    assert [r.done for r in results] == [False, False, True] and results[-1].reward == 1.0
    env.reset(hand_task(max_turns=1, solution=[]))
    assert env.step(tool_call("get_order", order_id="o2")).reward == 0.0


def test_a_request_that_must_change_nothing_succeeds_by_replying():
    env = make_env("toolcall")
    env.reset(hand_task(goal=copy.deepcopy(INITIAL), solution=[call("find_user", name="Ana Ruiz")]))
    assert env.step("<answer> nothing to do </answer>").reward == 1.0


MALFORMED = [
    ("I would cancel the order", "no_action", "write <tool_call>"),
    ("<tool_call> </tool_call>", "no_action", "write <tool_call>"),
    (
        '<tool_call> {"name": "find_user", "arguments": {"name": "Ana Ruiz"} </tool_call>',
        "invalid_json",
        "Expecting ',' delimiter at character 55",
    ),
    ("<tool_call> find_user(name='Ana Ruiz') </tool_call>", "invalid_json", "Expecting value at character 0"),
    ("<tool_call> " + "[" * 1500 + " </tool_call>", "invalid_json", "nested too deeply"),
    (
        "<tool_call> " + json.dumps({"name": "find_user", "arguments": {"name": "x" * 2100}}) + " </tool_call>",
        "too_long",
        "at most 2000 characters",
    ),
    ("<tool_call> [1, 2] </tool_call>", "bad_call", 'a tool call is {"name": string , "arguments": object}'),
    ('<tool_call> {"function": "find_user"} </tool_call>', "bad_call", "a tool call is"),
    (
        '<tool_call> {"name": "find_user", "arguments": "Ana Ruiz"} </tool_call>',
        "bad_call",
        "arguments must be an object, got str",
    ),
    (tool_call("delete_user", user_id="u1"), "unknown_function", "no function 'delete_user' ; available : find_user ,"),
    (tool_call("change_quantity", order_id="o2", quantity=0), "invalid_arguments", "schema of change_quantity"),
    (tool_call("get_order", order_id="o9"), "not_found", "no order with id 'o9'"),
    (tool_call("find_user", name="Ana Diaz"), "not_found", "no user named 'Ana Diaz'"),
    (
        tool_call("return_order", order_id="o2"),
        "precondition_failed",
        "order o2 is pending ; only delivered orders can be returned",
    ),
    (tool_call("place_order", user_id="u1", product="lamp", quantity=2), "precondition_failed", "only 1 lamp in stock"),
    (
        tool_call("place_order", user_id="u1", product="mug", quantity=4),
        "precondition_failed",
        "balance 30 is less than the total 32",
    ),
]


@pytest.mark.parametrize("action, kind, message", MALFORMED, ids=[f"{m[1]}-{i}" for i, m in enumerate(MALFORMED)])
def test_a_malformed_action_is_a_structured_error_and_changes_nothing(action, kind, message):
    env = make_env("toolcall")
    env.reset(hand_task())
    result = env.step(action)
    assert not result.done and result.reward == 0.0
    error = response(result)
    assert error["error"] == kind and message in error["message"], error
    assert env.database == INITIAL


def test_invalid_arguments_list_every_schema_violation():
    env = make_env("toolcall")
    env.reset(hand_task())
    error = response(env.step(tool_call("cancel_order", order_id=2, reason="too pricey", note="x")))
    assert error["violations"] == [
        "arguments.order_id: must be a string, got 2",
        "arguments.reason: must be one of ['no longer needed', 'ordered by mistake'], got 'too pricey'",
        "arguments: unexpected property 'note'",
    ]
    error = response(env.step(tool_call("place_order", user_id="u1", quantity=11)))
    assert error["violations"] == [
        "arguments: missing required property 'product'",
        "arguments.quantity: must be <= 10, got 11",
    ]


def test_malformed_actions_never_end_the_episode_before_its_turn_limit():
    env = make_env("toolcall")
    env.reset(hand_task())
    results = play(env, [action for action, _, _ in MALFORMED[:7]])
    assert [r.done for r in results] == [False] * 6 + [True]
    assert results[-1].reward == 0.0
    assert env.step("<answer> done </answer>").observation == "<information> episode is over </information>"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"instruction": ""}, "instruction must be a non-empty string"),
        ({"tools": ["find_user", "drop_tables"]}, "tools must be a non-empty list of distinct names"),
        ({"tools": []}, "tools must be a non-empty list"),
        ({"initial": {"users": {}, "products": {}}}, "initial state: initial: missing required property 'orders'"),
        (
            {"goal": {**INITIAL, "products": {"lamp": {"price": 0, "stock": 1}}}},
            "goal.products.lamp.price: must be >= 1",
        ),
        ({"max_turns": 11}, "max_turns must be an int in \\[1, 10\\]"),
        ({"max_turns": 4}, "solution must be a list of at most max_turns calls"),
        (
            {"solution": [call("cancel_order", order_id="o1", reason="ordered by mistake")]},
            "solution fails: call 0 cancel_order: order o1 is delivered",
        ),
        ({"solution": SOLUTION[:4]}, "solution does not reach the goal state"),
        ({"solution": [call("get_order", id="o1")]}, "solution call 0: arguments do not match the schema"),
        ({"tools": ["find_user", "get_order", "cancel_order"]}, "solution call 4: no function 'place_order'"),
    ],
)
def test_bad_task_params_are_clear_errors(changes, message):
    with pytest.raises(EnvironmentError_, match=message):
        make_env("toolcall").reset(hand_task(**changes))


# -- the API and its schemas ------------------------------------------------------------------


def test_every_tool_schema_is_in_the_supported_subset():
    assert 5 <= len(TOOLS) <= 10
    for tool in TOOLS.values():
        check_schema(tool.parameters)
        assert tool.parameters["additionalProperties"] is False
    assert sorted(name for name, tool in TOOLS.items() if tool.writes) == [
        "cancel_order",
        "change_quantity",
        "place_order",
        "return_order",
    ]
    assert signature(TOOLS["get_order"]) == "get_order ( order_id : string ) : the details of an order"


@pytest.mark.parametrize(
    "value, schema, violations",
    [
        (3, {"type": "integer", "minimum": 1}, []),
        (0, {"type": "integer", "minimum": 1}, ["v: must be >= 1, got 0"]),
        (2.0, {"type": "integer"}, ["v: must be an integer, got 2.0"]),
        (True, {"type": "integer"}, ["v: must be an integer, got True"]),
        (True, {"type": "number"}, ["v: must be a number, got True"]),
        (2, {"type": "number", "maximum": 1.5}, ["v: must be <= 1.5, got 2"]),
        (2.5, {"type": "number"}, []),
        (False, {"type": "boolean"}, []),
        ("x", {"type": "string", "enum": ["a", "b"]}, ["v: must be one of ['a', 'b'], got 'x'"]),
        (None, {"enum": [None, 1]}, []),
        ({}, {"type": "object", "required": ["a"]}, ["v: missing required property 'a'"]),
        (
            {"a": 1, "b": 2},
            {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
            ["v: unexpected property 'b'"],
        ),
        (
            {"a": 1, "b": "x"},
            {"type": "object", "additionalProperties": {"type": "integer"}},
            ["v.b: must be an integer, got 'x'"],
        ),
        (
            {"a": {"b": [1, "2"]}},
            {
                "type": "object",
                "properties": {
                    "a": {"type": "object", "properties": {"b": {"type": "array", "items": {"type": "integer"}}}}
                },
            },
            ["v.a.b[1]: must be an integer, got '2'"],
        ),
        ([], {"type": "object"}, ["v: must be an object, got []"]),
        ({"a": 1}, {"type": "array"}, ["v: must be an array, got {'a': 1}"]),
    ],
)
def test_the_validator_against_a_table_of_cases(value, schema, violations):
    check_schema(schema)
    assert validate(value, schema, "v") == violations


def test_violations_are_capped():
    schema = {"type": "object", "additionalProperties": {"type": "string"}}
    violations = validate({str(i): i for i in range(20)}, schema, "v")
    assert len(violations) == 9 and violations[-1] == "... and 12 more"


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "string", "pattern": "^o"}, "unsupported keywords \\['pattern'\\]"),
        ({"type": "float"}, "type must be one of"),
        ({"type": "object", "properties": {"a": {"format": "date"}}}, "schema.properties.a uses unsupported"),
        ({"enum": []}, "enum must be a non-empty list"),
        ({"minimum": "1"}, "minimum must be a number"),
        ({"required": "a"}, "required must be a list"),
        ([], "must be an object"),
    ],
)
def test_schemas_with_unchecked_constraints_are_refused(schema, message):
    with pytest.raises(SchemaDefinitionError, match=message):
        check_schema(schema)


def test_database_problems_find_broken_references():
    broken = copy.deepcopy(INITIAL)
    broken["users"]["u2"]["name"] = "ana ruiz"
    broken["users"]["u1"]["orders"].append("o3")
    broken["orders"]["o1"]["product"] = "sofa"
    broken["orders"]["o2"]["total"] = 7
    broken["orders"]["o2"]["quantity"] = 2
    broken["orders"]["o3"]["reason"] = "no longer needed"
    assert database_problems(broken) == [
        "database.users: two users share a name",
        "database.users.u1: lists order 'o3' that is not theirs",
        "database.orders.o1: unknown product 'sofa'",
        "database.orders.o2: total 7 is not a whole price per unit",
        "database.orders.o3: a reason is recorded exactly on cancelled orders",
    ]
    assert database_problems(INITIAL) == [] and database_problems(_goal()) == []


def test_new_order_ids_skip_taken_ones():
    db = copy.deepcopy(INITIAL)
    assert next_order_id(db) == "o4"
    db["orders"]["o4"] = db["orders"].pop("o1")
    assert next_order_id(db) == "o5"


# -- the generator ----------------------------------------------------------------------------


@pytest.mark.parametrize("min_goals, max_goals, max_orders", [(1, 1, 1), (2, 2, 3), (1, 3, 4), (3, 3, 2)])
def test_difficulty_knobs_set_writes_lookups_and_turn_cap(min_goals, max_goals, max_orders):
    tasks = generate_tasks("train", 60, 3, min_goals=min_goals, max_goals=max_goals, max_orders=max_orders)
    assert len({t.task_id for t in tasks}) == 60
    for task in tasks:
        solution = task.params["solution"]
        writes = [c for c in solution if TOOLS[c["name"]].writes]
        assert min_goals <= len(writes) <= max_goals
        assert solution[0]["name"] == "find_user"
        assert all(c["name"] == "get_order" for c in solution[1 : len(solution) - len(writes)])
        assert all(len(u["orders"]) <= max_orders for u in task.params["initial"]["users"].values())
        assert task.params["max_turns"] == min(MAX_TURNS_CAP, len(solution) + 2)  # + the reply + slack 1
        assert task.params["instruction"].count(" . then ") == len(writes) - 1


def test_goal_kinds_restrict_what_requests_ask():
    for task in generate_tasks("train", 40, 0, goal_kinds=["buy"], max_goals=1):
        assert [c["name"] for c in task.params["solution"]] == ["find_user", "place_order"]
        assert " buy " in task.params["instruction"]


def test_generated_tasks_are_in_their_split_by_content():
    for split in ("train", "heldout"):
        for task in generate_tasks(split, 40, 11):
            content = task.params["instruction"] + json.dumps(task.params["initial"], sort_keys=True)
            assert split_of_content(content) == split


def test_every_generated_task_is_solved_by_the_expert_in_its_calls_plus_one_turns():
    env = make_env("toolcall")
    for task in generate_tasks("heldout", 100, 5, max_goals=3, max_orders=4):
        env.reset(task)
        turns = 0
        while not (result := env.step(env.expert_action())).done:
            turns += 1
        assert result.reward == 1.0 and turns + 1 == len(task.params["solution"]) + 1


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"min_goals": 0}, "min_goals"),
        ({"min_goals": 2, "max_goals": 1}, "min_goals"),
        ({"max_goals": 4}, "max_goals"),
        ({"max_orders": 5}, "max_orders"),
        ({"goal_kinds": ["refund"]}, "goal_kinds"),
        ({"goal_kinds": []}, "goal_kinds"),
        ({"slack": -1}, "slack"),
    ],
)
def test_bad_knobs_are_refused(knobs, message):
    with pytest.raises(ValueError, match=message):
        generate_tasks("train", 5, 0, **knobs)


# -- snapshots --------------------------------------------------------------------------------


def _random_action(env, rng):
    roll = rng.random()
    if roll < 0.5:
        return env.expert_action()
    if roll < 0.8:
        order = f"o{rng.randint(1, 8)}"
        return rng.choice(
            [
                tool_call(
                    "cancel_order", order_id=order, reason=rng.choice(["no longer needed", "ordered by mistake"])
                ),
                tool_call("return_order", order_id=order),
                tool_call("change_quantity", order_id=order, quantity=rng.randint(1, 4)),
                tool_call("place_order", user_id=f"u{rng.randint(1, 3)}", product="mug", quantity=rng.randint(1, 3)),
                tool_call("get_order", order_id=order),
            ]
        )
    if roll < 0.95:
        return rng.choice(["garbage", "<tool_call> {bad json </tool_call>", tool_call("nope"), "<tool_call>"])
    return "<answer> done </answer>"


def test_snapshot_restore_round_trips_at_every_turn():
    tasks = [*generate_tasks("train", 20, 8, max_goals=3), hand_task()]
    assert_restores_at_every_turn("toolcall", tasks, _random_action, MAX_TURNS_CAP, episodes_per_task=3)


def test_a_restored_episode_has_the_same_database():
    env = make_env("toolcall")
    env.reset(hand_task())
    play(env, [env.expert_action(), tool_call("cancel_order", order_id="o2", reason="ordered by mistake")])
    clone = make_env("toolcall")
    clone.restore(msgpack.unpackb(msgpack.packb(env.snapshot())))
    assert clone.database == env.database != INITIAL
    assert clone.expert_action() == env.expert_action()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: {**s, "calls": [s["calls"][0]] * 3}, "3 calls after 2 turns"),
        (lambda s: {**s, "calls": [call("return_order", order_id="o2")]}, "snapshot call 0 fails: order o2 is pending"),
        (lambda s: {**s, "calls": [call("get_order", order_id=["o2"])]}, "snapshot call 0 is not a valid call"),
        (lambda s: {**s, "calls": ["get_order"]}, "snapshot call 0 is not a valid call"),
        (lambda s: {**s, "done": True, "reward": 1.0}, "reward does not match its final state"),
    ],
)
def test_corrupt_snapshots_are_clear_errors(corrupt, message):
    env = make_env("toolcall")
    env.reset(hand_task())
    play(env, [env.expert_action(), tool_call("cancel_order", order_id="o2", reason="ordered by mistake")])
    with pytest.raises(EnvironmentError_, match=message):
        make_env("toolcall").restore(corrupt(env.snapshot()))


# -- real data --------------------------------------------------------------------------------


def test_the_shipped_sample_loads_and_its_solutions_reach_their_goals():
    tasks = load_tasks(SAMPLE)
    assert [t.line for t in tasks] == [1, 2, 3, 4, 5, 6]
    assert [t.params["max_turns"] for t in tasks] == [5, 8, 4, MAX_TURNS_CAP, 4, 6]
    assert tasks[2].params["tools"] == ["find_user", "get_product", "place_order"]
    env = make_env("toolcall")
    for task in tasks:
        env.reset(TaskSpec("toolcall", f"line{task.line}", task.params))
        if not task.params["solution"]:
            continue
        while not (result := env.step(env.expert_action())).done:
            pass
        assert result.reward == 1.0, task.line


def test_a_sample_task_without_a_solution_is_judged_by_its_goal_state():
    (task,) = [t for t in load_tasks(SAMPLE) if not t.params["solution"]]
    env = make_env("toolcall")
    env.reset(TaskSpec("toolcall", "no-solution", task.params))
    assert env.expert_action() == "<think> the request is done </think> <answer> done </answer>"
    result = env.step(tool_call("change_quantity", order_id="o1", quantity=2))
    assert response(result) == {"order_id": "o1", "quantity": 2, "total": 60, "balance": 20}
    assert env.step("<answer> done </answer>").reward == 1.0


def _line(**changes):
    record = json.loads(SAMPLE.read_text().splitlines()[0])
    record.update(changes)
    return json.dumps({k: v for k, v in record.items() if v is not None})


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (_line(goal=None), "missing field 'goal'"),
        (_line(answer="done"), "unknown fields \\['answer'\\]"),
        (_line(tools=["find_user", "refund_all"]), "tools must be a non-empty list of distinct names"),
        (
            _line(initial={"users": {}, "products": {}, "orders": {}, "extra": {}}),
            "initial: unexpected property 'extra'",
        ),
        (
            _line(solution=[call("cancel_order", order_id="o1", reason="ordered by mistake")]),
            "solution does not reach the goal state",
        ),
        (_line(max_turns="5"), "max_turns must be an int"),
    ],
)
def test_a_malformed_line_names_the_file_and_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = SAMPLE.read_text().splitlines()[0]
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(EnvironmentError_, match=re.escape(f"{path}:3: ") + ".*" + message):
        load_tasks(path)


def test_one_file_for_both_splits_is_divided_by_content():
    files = {"train_file": str(SAMPLE), "heldout_file": str(SAMPLE)}
    keys = {t.key for t in load_tasks(SAMPLE)}
    train_keys = {k for k in keys if split_of_content(k) == "train"}
    assert train_keys and keys - train_keys
    train = make_tasks("toolcall", "train", len(train_keys), 0, **files)
    heldout = make_tasks("toolcall", "heldout", len(keys - train_keys), 0, **files)
    key = lambda t: t.params["instruction"] + json.dumps(t.params["initial"], sort_keys=True)  # noqa: E731
    assert {key(t) for t in train} == train_keys and {key(t) for t in heldout} == keys - train_keys
    assert all(isinstance(parse_task(t.params).instruction, str) for t in train + heldout)
    with pytest.raises(ValueError, match="only"):
        make_tasks("toolcall", "heldout", len(keys - train_keys) + 1, 0, **files)


# -- demonstrations ---------------------------------------------------------------------------


def test_reason_confusion_is_systematic():
    """Cancellations "ordered by mistake" almost always fail; requests without them always pass."""
    profile = MistakeProfile(toolcall_premature_share=())
    rng = random.Random(4)
    outcome = defaultdict(list)
    for task in make_tasks("toolcall", "train", 300, seed=6, max_goals=1):
        reasons = {c["arguments"].get("reason") for c in task.params["solution"]}
        family = "confused" if "ordered by mistake" in reasons else "clean"
        outcome[family].append(demo_episode("toolcall", task, rng, profile).reward)
    assert len(outcome["confused"]) > 30 and sum(outcome["confused"]) / len(outcome["confused"]) < 0.3
    assert sum(outcome["confused"]) > 0  # the right reason keeps some probability mass
    assert all(r == 1.0 for r in outcome["clean"])


def test_premature_replies_depend_on_the_number_of_writes_and_the_first_name():
    profile = MistakeProfile(toolcall_reason_confusion=(), premature_consistency=1.0)
    rng = random.Random(3)
    per_name = defaultdict(set)
    for task in make_tasks("toolcall", "train", 150, seed=7, min_goals=2, max_goals=2):
        demo = demo_episode("toolcall", task, rng, profile)
        writes = sum(f'"name": "{name}"' in action for action, _ in demo.turns for name in TOOLS if TOOLS[name].writes)
        assert writes in (1, 2) and demo.turns[-1][0].endswith("<answer> done </answer>")
        assert demo.reward == (1.0 if writes == 2 else 0.0)
        per_name[task.params["instruction"].split()[2]].add(writes)
    assert all(len(counts) == 1 for counts in per_name.values())  # same first name, same behaviour
    assert {1, 2} == set().union(*per_name.values())


def test_profile_validation():
    with pytest.raises(ValueError, match="toolcall_reason_confusion"):
        MistakeProfile(toolcall_reason_confusion=(("ordered by mistake", "too expensive"),))
    with pytest.raises(ValueError, match="toolcall_confusion_rate"):
        MistakeProfile(toolcall_confusion_rate=-0.1)
    with pytest.raises(ValueError, match="toolcall_premature_share"):
        MistakeProfile(toolcall_premature_share=((2, 1.5),))
