import pytest

from environments import EnvironmentError_, frozenlake, make_env, make_tasks, sokoban
from environments.grid import MAX_TURNS_CAP, parse_move
from protocol import TaskSpec


def lake_task(rows, max_turns=8):
    return TaskSpec(env="frozenlake", task_id="hand", params={"rows": list(rows), "max_turns": max_turns})


def sokoban_task(rows, max_turns=8):
    return TaskSpec(env="sokoban", task_id="hand", params={"rows": list(rows), "max_turns": max_turns})


@pytest.mark.parametrize(
    "text, move",
    [
        ("<think> go Up </think> <answer> Up </answer>", "Up"),
        ("<answer> down </answer>", "Down"),
        ("<answer> L </answer>", "Left"),
        ("RIGHT", "Right"),
        ("  r.  ", "Right"),
        ("<search> Up </search>", None),
        ("<think> Up </think>", None),
        ("upward", None),
        ("", None),
        ("<answer> Up Down </answer>", None),
    ],
)
def test_tolerant_move_parsing(text, move):
    assert parse_move(text) == move


def test_frozenlake_hand_made_episode():
    env = make_env("frozenlake")
    prompt = env.reset(lake_task(["SFH", "FHF", "FFG"]))
    assert prompt.endswith("P . H\n. H .\n. . G")
    assert env.score() == 0.0
    bump = env.step("<answer> Up </answer>")  # edge: stays put, costs a turn
    assert bump.observation == "<information> P . H\n. H .\n. . G </information>" and not bump.done
    env.step("<answer> Down </answer>")
    assert env.score() == pytest.approx(1 - 3 / 4)
    env.step("down")
    env.step("Right")
    win = env.step("<answer> Right </answer>")
    assert win.done and win.reward == 1.0
    assert win.observation.endswith(". . P </information>")

    env.reset(lake_task(["SFH", "FHF", "FFG"]))
    env.step("<answer> Right </answer>")
    fall = env.step("<answer> Down </answer>")
    assert fall.done and fall.reward == 0.0 and env.score() == 0.0


def test_frozenlake_invalid_action_keeps_board_and_uses_turn():
    env = make_env("frozenlake")
    env.reset(lake_task(["SF", "FG"], max_turns=2))
    bad = env.step("<search> jump </search>")
    assert bad.observation == "<information> invalid action\nP .\n. G </information>"
    assert not bad.done
    # One turn left but two moves needed: a dead state.
    assert env.score() == 0.0
    assert env.step("Down").done


def test_sokoban_push_blocked_push_and_win():
    rows = ["######", "#____#", "#PB_T#", "#____#", "######"]
    env = make_env("sokoban")
    env.reset(sokoban_task(rows))
    assert env.score() == 0.0
    env.step("<answer> Up </answer>")
    env.step("<answer> Right </answer>")
    pushed = env.step("<answer> Down </answer>")
    assert pushed.observation.splitlines()[2:4] == ["# _ P _ T #", "# _ B _ _ #"]
    blocked = env.step("<answer> Down </answer>")  # box against the wall
    assert blocked.observation == pushed.observation and not blocked.done
    assert env.score() == 0.0  # a box on the bottom row can never reach the target: dead
    env.reset(sokoban_task(rows))
    env.step("<answer> Right </answer>")
    assert env.score() == pytest.approx(0.5)
    result = env.step("<answer> Right </answer>")
    assert result.done and result.reward == 1.0
    assert result.observation.splitlines()[2] == "# _ _ P X #"


def test_sokoban_level_round_trip():
    rows = ["#####", "#Y_B#", "#_X_#", "#___#", "#####"]
    room, state = sokoban.parse_level(rows)
    assert sokoban.level_rows(room, state) == rows


@pytest.mark.parametrize(
    "env_name, params, message",
    [
        ("frozenlake", {"rows": ["SF", "FF"], "max_turns": 4}, "one S, one G"),
        ("frozenlake", {"rows": ["SG", "F"], "max_turns": 4}, "rectangle"),
        ("frozenlake", {"rows": ["SH", "HG"], "max_turns": 4}, "no solution"),
        ("frozenlake", {"rows": ["SF", "FG"], "max_turns": 99}, "max_turns"),
        ("sokoban", {"rows": ["#####", "#P_B#", "#####"], "max_turns": 4}, "as many targets"),
        ("sokoban", {"rows": ["_____", "#PBT#", "#####"], "max_turns": 4}, "enclosed"),
        ("sokoban", {"rows": [["#"]], "max_turns": 4}, "list of strings"),
    ],
)
def test_bad_levels_raise_clear_errors(env_name, params, message):
    with pytest.raises(EnvironmentError_, match=message):
        make_env(env_name).reset(TaskSpec(env=env_name, task_id="bad", params=params))


@pytest.mark.parametrize("name, solve", [("frozenlake", frozenlake.solve), ("sokoban", sokoban.solve)])
def test_every_generated_level_is_solvable_and_the_expert_solves_it(name, solve):
    env = make_env(name)
    tasks = make_tasks(name, "train", 200, seed=11) + make_tasks(name, "heldout", 100, seed=11)
    for task in tasks:
        env.reset(task)
        assert 1 <= env.max_turns <= MAX_TURNS_CAP
        solution = solve(env.level, env.state, env.max_turns)
        assert solution is not None and len(solution) <= env.max_turns
        rewards = []
        for _ in range(env.max_turns):
            result = env.step(env.expert_action())
            rewards.append(result.reward)
            if result.done:
                break
        assert result.done and result.reward == 1.0 and len(rewards) == len(solution), task
        assert env.score() == 1.0


def test_boards_stay_small():
    for task in make_tasks("frozenlake", "train", 50, seed=0):
        assert 4 <= len(task.params["rows"]) <= 5
    for task in make_tasks("sokoban", "train", 50, seed=0):
        rows = task.params["rows"]
        assert 5 <= len(rows) <= 6
        boxes = sum(row.count("B") + row.count("X") for row in rows)
        assert 1 <= boxes <= 2
