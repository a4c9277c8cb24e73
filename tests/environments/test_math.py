import json
import random
import re
from fractions import Fraction
from pathlib import Path

import msgpack
import pytest

from environments import EnvironmentError_, make_env, make_tasks
from environments.arith import (
    KIND_OPERATORS,
    MAX_TURNS_CAP,
    MathEnvironment,
    dataset_tasks,
    generate_tasks,
    load_gsm8k,
    parse_problem,
)
from environments.calculator import evaluate
from environments.splits import split_of_content
from environments.tags import CALCULATOR_ACTIONS, parse_action
from protocol import TaskSpec
from tests.environments.roundtrip import assert_restores_at_every_turn

SAMPLE = Path(__file__).resolve().parents[2] / "environments" / "data" / "gsm8k_sample.jsonl"
#: Ana has 4 tins of 12 pencils, gives 15 away: 4 * 12 = 48, 48 - 15 = 33.
HAND_PARAMS = {
    "question": "Ana has 4 tins with 12 pencils in each tin . Ana gives 15 pencils to Omar . "
    "how many pencils does Ana have now ?",
    "answer": "33",
    "steps": [{"template": "4 * 12", "kind": "boxes"}, {"template": "#0 - 15", "kind": "gives"}],
    "max_turns": 4,
}


def hand_task(**changes):
    return TaskSpec(env="math", task_id="hand", params={**HAND_PARAMS, **changes})


def test_registry_builds_the_math_environment():
    env = make_env("math")
    assert isinstance(env, MathEnvironment) and env.name == "math"
    assert set(env.stop_strings) == {"</calculate>", "</answer>"}
    assert set(env.stop_strings) <= set(env.special_tokens)


def test_expert_calculates_each_step_then_answers():
    env = make_env("math")
    prompt = env.reset(hand_task())
    assert prompt.endswith("\nproblem : " + HAND_PARAMS["question"])
    assert env.score() == 0.0
    assert env.expert_action() == "<think> step 1 boxes </think> <calculate> 4 * 12 </calculate>"
    first = env.step("<think> tins times pencils </think> <calculate> 4 * 12 </calculate>")
    assert (first.observation, first.done, first.reward) == ("<information> 48 </information>", False, 0.0)
    assert env.score() == pytest.approx(1 / 3)
    assert env.expert_action() == "<think> step 2 gives </think> <calculate> 48 - 15 </calculate>"
    assert env.step(env.expert_action()).observation == "<information> 33 </information>"
    assert env.expert_action() == "<think> the answer is 33 </think> <answer> 33 </answer>"
    final = env.step(env.expert_action())
    assert final.done and final.reward == 1.0 and env.score() == 1.0


@pytest.mark.parametrize(
    "answer, reward", [("33", 1.0), ("33.0", 1.0), ("66/2", 1.0), ("+33", 1.0), ("32", 0.0), ("-33", 0.0)]
)
def test_answers_are_compared_as_exact_rationals(answer, reward):
    env = make_env("math")
    env.reset(hand_task())
    result = env.step(f"<answer> {answer} </answer>")
    assert result.done and result.reward == reward


def test_fractional_answers_match_in_every_form():
    env = make_env("math")
    for text in ("7/2", "3.5", "14/4", "3.50"):
        env.reset(hand_task(answer="7/2", steps=[{"template": "7 / 2", "kind": "splits"}]))
        assert env.step(f"<answer> {text} </answer>").reward == 1.0, text
    env.reset(hand_task(answer="-3/4", steps=[]))
    assert env.step("<answer> -0.75 </answer>").reward == 1.0


def test_malformed_actions_are_observations_and_the_episode_runs_to_its_turn_limit():
    env = make_env("math")
    env.reset(hand_task(max_turns=6))
    actions = [
        "no tags at all",
        "<calculate> 1 / 0 </calculate>",
        "<answer> thirty three </answer>",
        "<search> pencils </search>",
        "<calculate> 9 ** 9 ** 9 </calculate>",
        "<calculate> (((( </calculate>",
    ]
    observations = []
    for turn, action in enumerate(actions, start=1):
        result = env.step(action)
        observations.append(result.observation)
        assert result.done == (turn == 6) and result.reward == 0.0
    assert observations == [
        "<information> error : write a calculation or an answer </information>",
        "<information> error : division by zero </information>",
        "<information> error : the answer must be a number such as 7 , -3/4 or 2.5 </information>",
        "<information> error : write a calculation or an answer </information>",
        "<information> error : exponent larger than 64 </information>",
        "<information> error : expression ends too early </information>",
    ]
    assert env.step("<answer> 33 </answer>").observation == "<information> episode is over </information>"


def test_the_expert_answers_when_one_turn_is_left():
    env = make_env("math")
    env.reset(hand_task(max_turns=2))
    env.step("<calculate> 1 + 1 </calculate>")
    assert env.expert_action() == "<think> the answer is 33 </think> <answer> 33 </answer>"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"question": ""}, "question must be a non-empty string"),
        ({"answer": 33}, "answer must be a string"),
        ({"answer": "66/2"}, "canonical"),
        ({"answer": "many"}, "not an exact value"),
        ({"steps": "4 * 12"}, "steps must be a list"),
        ({"steps": [{"template": "4 * 12"}]}, "steps must be a list"),
        ({"steps": [{"template": "1", "kind": ""}] * 8}, "at most 7"),
        ({"steps": [{"template": "#1 + 1", "kind": ""}, {"template": "2", "kind": ""}]}, "does not come before it"),
        ({"steps": [{"template": "4 / 0", "kind": ""}]}, "division by zero"),
        ({"max_turns": 9}, "max_turns"),
        ({"max_turns": "4"}, "max_turns"),
    ],
)
def test_bad_task_params_are_clear_errors(changes, message):
    with pytest.raises(EnvironmentError_, match=message):
        make_env("math").reset(hand_task(**changes))


# -- the generator ----------------------------------------------------------------------------


@pytest.mark.parametrize("min_ops, max_ops, min_q, max_q", [(1, 1, 1, 1), (2, 4, 1, 2), (3, 6, 2, 3), (6, 6, 3, 3)])
def test_difficulty_knobs_set_steps_quantities_and_turn_cap(min_ops, max_ops, min_q, max_q):
    tasks = generate_tasks("train", 80, 3, min_ops=min_ops, max_ops=max_ops, min_quantities=min_q, max_quantities=max_q)
    assert len({t.task_id for t in tasks}) == 80
    for task in tasks:
        problem = parse_problem(task.params)
        steps = len(problem.steps)
        assert min_ops <= steps <= max_ops
        assert problem.max_turns == min(MAX_TURNS_CAP, steps + 2)  # + the answer turn + slack 1
        combining = [s.kind for s in problem.steps if s.kind in ("together", "more")]
        assert min_q - 1 <= len(combining) <= max_q - 1
        assert all(s.kind in KIND_OPERATORS for s in problem.steps)
        assert len(set(problem.values)) == steps  # distinct, so the shown values tell the progress
        assert problem.answer == problem.values[-1] and problem.answer > 0


def test_generated_problems_are_in_their_split_by_content():
    for split in ("train", "heldout"):
        for task in generate_tasks(split, 60, 11):
            assert split_of_content(task.params["question"]) == split


def test_every_generated_problem_is_solved_by_the_expert_in_steps_plus_one_turns():
    env = make_env("math")
    for task in generate_tasks("heldout", 150, 5, max_ops=6, max_quantities=3):
        env.reset(task)
        turns = 0
        while True:
            result = env.step(env.expert_action())
            turns += 1
            if result.done:
                break
        assert result.reward == 1.0 and turns == len(task.params["steps"]) + 1


def test_some_generated_answers_are_fractions():
    answers = [t.params["answer"] for t in generate_tasks("train", 400, 0)]
    assert any("/" in a for a in answers) and sum("/" not in a for a in answers) > 300


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"min_ops": 0}, "min_ops"),
        ({"min_ops": 3, "max_ops": 2}, "min_ops"),
        ({"max_ops": 7}, "max_ops"),
        ({"max_quantities": 4}, "max_quantities"),
        ({"min_quantities": 3, "max_quantities": 3, "max_ops": 1}, "combining quantities takes steps"),
        ({"slack": -1}, "slack"),
    ],
)
def test_bad_knobs_are_refused(knobs, message):
    with pytest.raises(ValueError, match=message):
        generate_tasks("train", 5, 0, **knobs)


# -- snapshots --------------------------------------------------------------------------------


def _random_action(env: MathEnvironment, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return env.expert_action()
    if roll < 0.7:
        return f"<calculate> {rng.randint(1, 50)} {rng.choice('+-*/')} {rng.randint(0, 9)} </calculate>"
    if roll < 0.85:
        return rng.choice(["garbage", "<answer> x </answer>", "<calculate> 2 ** 99 </calculate>", "<calculate>"])
    return f"<answer> {rng.randint(1, 50)} </answer>"


def test_snapshot_restore_round_trips_at_every_turn():
    tasks = generate_tasks("train", 25, 8, max_ops=6, max_quantities=3)
    assert_restores_at_every_turn("math", tasks, _random_action, MAX_TURNS_CAP, episodes_per_task=4)


def test_a_restored_episode_continues_with_the_same_expert_and_score():
    env = make_env("math")
    env.reset(hand_task())
    env.step("<calculate> 4 * 12 </calculate>")
    clone = make_env("math")
    clone.restore(msgpack.unpackb(msgpack.packb(env.snapshot())))
    assert clone.snapshot()["shown"] == ["48"]
    assert clone.expert_action() == env.expert_action() and clone.score() == env.score()
    assert clone.step("<answer> 33 </answer>") == env.step("<answer> 33 </answer>")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: {**s, "shown": None}, "list of strings"),
        (lambda s: {**s, "shown": [48]}, "list of strings"),
        (lambda s: {**s, "shown": ["96/2"]}, "canonical"),
        (lambda s: {**s, "shown": ["48", "33"]}, "shows 2 values after 1 turns"),
        (lambda s: {**s, "reward": 1}, "reward on an unfinished episode"),
        (lambda s: {**s, "task": {**s["task"], "params": {**s["task"]["params"], "max_turns": 0}}}, "max_turns"),
    ],
)
def test_corrupt_snapshots_are_clear_errors(corrupt, message):
    env = make_env("math")
    env.reset(hand_task())
    env.step("<calculate> 4 * 12 </calculate>")
    with pytest.raises(EnvironmentError_, match=message):
        make_env("math").restore(corrupt(env.snapshot()))


# -- real data --------------------------------------------------------------------------------


def test_the_shipped_gsm8k_sample_loads_with_its_calculator_steps():
    problems = load_gsm8k(SAMPLE)
    assert len(problems) == 12
    by_line = {p.line: p for p in problems}
    assert by_line[1].answer == 12 and [s.template for s in by_line[1].steps] == ["24+18", "42-30"]
    assert by_line[6].answer == Fraction(7, 2)  # "#### 3.5"
    assert by_line[9].answer == -7
    assert by_line[11].answer == 2700  # "#### 2,700"
    for problem in problems:
        annotated = re.findall(
            r"<<([^=]+)=([^>]+)>>", json.loads(SAMPLE.read_text().splitlines()[problem.line - 1])["answer"]
        )
        assert len(problem.steps) == len(annotated)
        for step, (_, result) in zip(problem.steps, annotated, strict=True):
            assert evaluate(step.template) == Fraction(result)


def test_one_file_for_both_splits_is_divided_by_content():
    files = {"train_file": str(SAMPLE), "heldout_file": str(SAMPLE)}
    train = make_tasks("math", "train", 0, 0, **files)
    everything = {p.question for p in load_gsm8k(SAMPLE)}
    train_questions = {p.question for p in load_gsm8k(SAMPLE) if split_of_content(p.question) == "train"}
    heldout_questions = everything - train_questions
    assert train == [] and train_questions and heldout_questions
    train = make_tasks("math", "train", len(train_questions), 0, **files)
    heldout = make_tasks("math", "heldout", len(heldout_questions), 0, **files)
    assert {t.params["question"] for t in train} == train_questions
    assert {t.params["question"] for t in heldout} == heldout_questions
    with pytest.raises(ValueError, match="only"):
        make_tasks("math", "heldout", len(heldout_questions) + 1, 0, **files)


def test_dataset_problems_play_through_the_expert(tmp_path):
    heldout = tmp_path / "test.jsonl"
    lines = SAMPLE.read_text().splitlines()
    heldout.write_text("\n".join(lines[:3]) + "\n")  # shared with train: dropped from held-out
    extra = {"question": "A box has 9 eggs. 3 break. How many are whole?", "answer": "9 - 3 = <<9-3=6>>6\n#### 6"}
    heldout.write_text(heldout.read_text() + json.dumps(extra) + "\n")
    tasks = dataset_tasks("heldout", 1, 0, train_file=str(SAMPLE), heldout_file=str(heldout))
    assert [t.params["question"] for t in tasks] == [extra["question"]]
    env = make_env("math")
    for task in tasks + dataset_tasks("train", 12, 0, train_file=str(SAMPLE), heldout_file=str(heldout)):
        env.reset(task)
        while not (result := env.step(env.expert_action())).done:
            pass
        assert result.reward == 1.0, task.params["question"]


def test_annotations_the_calculator_cannot_read_are_skipped(tmp_path):
    path = tmp_path / "odd.jsonl"
    worked = "Half is <<x/2=3>>3, then <<2^3=8>>8 and <<3*4=12>>12 and <<12 % 5=2>>2\n#### 12"
    path.write_text(json.dumps({"question": "q?", "answer": worked}) + "\n")
    (problem,) = load_gsm8k(path)
    assert [s.template for s in problem.steps] == ["3*4"] and problem.answer == 12


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"answer": "#### 3"}', "field 'question' must be a non-empty string"),
        ('{"question": "q?", "answer": 3}', "field 'answer' must be a non-empty string"),
        ('{"question": "q?", "answer": "it is 3"}', "must end with '#### <number>'"),
        ('{"question": "q?", "answer": "#### three"}', "'three' after '####' is not a number"),
    ],
)
def test_a_malformed_line_names_the_file_and_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = SAMPLE.read_text().splitlines()[0]
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(EnvironmentError_, match=re.escape(f"{path}:3: ") + ".*" + re.escape(message)):
        load_gsm8k(path)


def test_dataset_tasks_need_both_files():
    with pytest.raises(ValueError, match="need both train_file and heldout_file"):
        make_tasks("math", "train", 1, 0, train_file=str(SAMPLE))


def test_a_fraction_answer_is_written_in_canonical_form():
    env = make_env("math")
    env.reset(hand_task(question="Two friends share 7 pizzas .", answer="7/2", steps=[], max_turns=1))
    assert env.expert_action() == "<think> the answer is 7/2 </think> <answer> 7/2 </answer>"
    assert parse_action(env.expert_action(), CALCULATOR_ACTIONS).content == "7/2"
