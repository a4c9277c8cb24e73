from __future__ import annotations

import asyncio
import json
import re

import pytest
import safetensors.torch
from transformers import AutoTokenizer

import modelkit.eval as eval_module
from environments import make_tasks
from modelkit.eval import (
    MAX_TOKENS_PER_TURN,
    EpisodeSummary,
    EvalInputError,
    difficulty_label,
    eval_command,
    eval_tasks,
    evaluate_checkpoints,
    evaluate_checkpoints_async,
    evaluate_modes,
    evaluate_modes_async,
    find_checkpoints,
    format_table,
    parse_task_options,
    summarise,
)
from protocol.messages import TaskSpec
from tests.actors.doubles import ScriptedEngine


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_missing_model_directory_is_a_one_line_error(tmp_path, capsys):
    assert eval_command(str(tmp_path / "nope"), "multihop", 2, False, 0) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_directory_without_config_json_is_a_one_line_error(tmp_path, capsys):
    assert eval_command(str(tmp_path), "multihop", 2, False, 0) == 2
    assert "config.json" in _one_line_error(capsys)


def test_unknown_environment_lists_the_valid_names(random_model_dir, capsys):
    assert eval_command(str(random_model_dir), "chess", 2, False, 0) == 2
    err = _one_line_error(capsys)
    assert "'chess'" in err and "multihop" in err and "sokoban" in err


def test_task_options_read_their_values_as_set_values_do():
    options = parse_task_options(["min_hops=3", "distractors=false", 'heldout_file="2024.jsonl"', "top_k=2", "top_k=5"])
    assert options == {"min_hops": 3, "distractors": False, "heldout_file": "2024.jsonl", "top_k": 5}
    assert type(options["min_hops"]) is int
    assert parse_task_options([]) == {}
    with pytest.raises(EvalInputError, match=r"^--option 'min_hops': expected key=value"):
        parse_task_options(["min_hops"])


@pytest.mark.parametrize(
    ("env_name", "options", "message"),
    [
        ("multihop", ["num_hops=3"], r"takes no task option 'num_hops'; its options are: min_hops, max_hops"),
        ("multihop", ["min_hops=9"], r"task options \(min_hops=9\): "),
        ("math", ["train_file=missing.jsonl", "heldout_file=missing.jsonl"], r"missing\.jsonl"),
        ("multihop", ["min_hops=[3"], r"--option min_hops: cannot parse value '\[3'"),
    ],
)
def test_a_bad_task_option_is_a_one_line_error_before_any_engine_starts(
    random_model_dir, capsys, env_name, options, message
):
    assert eval_command(str(random_model_dir), env_name, 2, False, 0, option_args=options) == 2
    err = _one_line_error(capsys)
    assert err.startswith("tracerl eval: ") and re.search(message, err), err


def test_the_held_out_tasks_are_those_the_options_draw():
    harder = eval_tasks("multihop", "heldout", 16, 0, {"min_hops": 3})
    assert harder == make_tasks("multihop", "heldout", 16, 0, min_hops=3)
    assert {difficulty_label(task) for task in harder} == {"hops=3", "hops=4"}
    assert eval_tasks("multihop", "heldout", 16, 0) == make_tasks("multihop", "heldout", 16, 0)


def test_episodes_are_scored_on_the_tasks_of_the_options(random_model_dir):
    """Through the episode loop with a scripted generator: every episode scored is one of the
    3-4 hop tasks ``min_hops: 3`` draws, in the same numbers per hop count."""
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    expected = make_tasks("multihop", "heldout", 12, 0, min_hops=3)
    counts = {label: sum(difficulty_label(t) == label for t in expected) for label in ("hops=3", "hops=4")}

    async def score(options):
        engine = ScriptedEngine(tokenizer, answer_after=1)
        return await evaluate_modes_async(engine, "multihop", 12, "heldout", (True,), 0, None, options)

    (harder,) = asyncio.run(score({"min_hops": 3}))
    assert harder.num_tasks == 12
    assert {label: stats.episodes for label, stats in harder.by_difficulty.items()} == {
        label: n for label, n in counts.items() if n
    }
    (standard,) = asyncio.run(score(None))
    assert {"hops=1", "hops=2"} & set(standard.by_difficulty)


def test_summary_counts_success_per_difficulty():
    episodes = [
        EpisodeSummary("hops=1", 1.0, 2, 30),
        EpisodeSummary("hops=1", 0.0, 2, 28),
        EpisodeSummary("hops=2", 1.0, 3, 45),
        EpisodeSummary("hops=2", 1.0, 3, 41),
    ]
    result = summarise("multihop", "heldout", False, episodes, 1.0)
    assert result.success_rate == 0.75 and result.mode == "sampled"
    assert result.by_difficulty["hops=1"].success_rate == 0.5 and result.by_difficulty["hops=2"].episodes == 2
    assert result.mean_turns == 2.5 and result.mean_generated_tokens == 36.0
    assert result.mean_reward == 0.75
    assert "75.0%" in format_table([result])


def test_partial_rewards_count_in_the_mean_reward_not_in_success():
    episodes = [EpisodeSummary("max_turns=5", r, 4, 20) for r in (1.0, 0.75, 0.5, 0.0)]
    result = summarise("webshop", "heldout", True, episodes, 1.0)
    assert result.success_rate == 0.25 and result.mean_reward == pytest.approx(0.5625)
    assert "mean reward        0.562" in format_table([result])


def test_difficulty_labels():
    assert difficulty_label(TaskSpec("multihop", "t", {"path": ["coach", "friend"]})) == "hops=2"
    assert difficulty_label(TaskSpec("sokoban", "t", {"rows": [], "max_turns": 6})) == "max_turns=6"
    math_params = {"question": "q", "answer": "1", "steps": [{"template": "1", "kind": ""}] * 3, "max_turns": 5}
    assert difficulty_label(TaskSpec("math", "t", math_params)) == "steps=3"


@pytest.mark.slow
@pytest.mark.parametrize(
    "env_name, labels",
    [
        ("math", {f"steps={n}" for n in range(1, 5)}),
        ("toolcall", {f"max_turns={n}" for n in range(3, 9)}),
        ("webshop", {f"max_turns={n}" for n in range(5, 8)}),
    ],
)
def test_tool_episodes_run_through_the_eval_loop(random_model_dir, env_name, labels):
    """The calculator's, the tool call's and the store's tags and stop strings reach the
    generator: a random policy's episodes end within the turn cap and are scored."""
    greedy, sampled = evaluate_modes(random_model_dir, env_name, 2, backend="transformers", seed=1)
    for result in (greedy, sampled):
        assert result.num_tasks == 2 and result.success_rate == 0.0 and result.mean_reward <= 0.5
        assert 1 <= result.mean_turns <= 8 and set(result.by_difficulty) <= labels


@pytest.mark.slow
@pytest.mark.parametrize("env_name", ["multihop", "frozenlake", "sokoban"])
def test_warm_started_model_plays_through_the_episode_loop(embedded_model_dir, env_name):
    greedy, sampled = evaluate_modes(embedded_model_dir, env_name, 3, backend="transformers", seed=1)
    for result in (greedy, sampled):
        assert result.num_tasks == 3 and 0.0 <= result.success_rate <= 1.0
        assert result.mean_turns >= 1 and result.mean_generated_tokens > 0
    assert sum(stats.episodes for stats in greedy.by_difficulty.values()) == 3
    assert greedy.mean_generated_tokens <= greedy.mean_turns * MAX_TOKENS_PER_TURN


def _checkpoint(root, version, weights):
    directory = root / f"v{version:08d}"
    directory.mkdir(parents=True)
    safetensors.torch.save_file(weights, str(directory / "model.safetensors"))
    (directory / "trainer_state.json").write_text(json.dumps({"policy_version": version, "steps_done": version}))
    return directory


def test_checkpoints_are_found_in_version_order_and_unfinished_saves_skipped(tmp_path, random_model_dir, capsys):
    weights = safetensors.torch.load_file(str(random_model_dir / "model.safetensors"))
    later, first = _checkpoint(tmp_path, 10, weights), _checkpoint(tmp_path, 5, weights)
    (tmp_path / ".v00000015.tmp").mkdir()  # a save cut short
    (tmp_path / "v00000020").mkdir()  # no trainer state: not complete
    assert find_checkpoints(tmp_path) == [(5, first), (10, later)]
    assert eval_command(str(random_model_dir), "multihop", 2, False, 0, checkpoints=str(tmp_path / "none")) == 2
    assert "no complete learner checkpoint" in _one_line_error(capsys)


class _ReloadingEngine:
    def __init__(self) -> None:
        self.loaded: list[int] = []

    async def reload_weights(self, directory, policy_version):
        self.loaded.append(policy_version)


def test_each_checkpoint_is_scored_with_its_own_weights(monkeypatch, tmp_path):
    async def score_loaded_version(engine, env_name, num_tasks, split, modes, seed, on_episode=None, options=None):
        assert options == {"min_hops": 2}  # every checkpoint is scored on the run's held-out tasks
        # success 1 only when version 5 is loaded: a result filed under the wrong version shows
        episodes = [EpisodeSummary("all", float(engine.loaded[-1] == 5), 1, 3)] * num_tasks
        return [summarise(env_name, split, greedy, episodes, 0.0) for greedy in modes]

    monkeypatch.setattr(eval_module, "evaluate_modes_async", score_loaded_version)
    engine = _ReloadingEngine()
    checkpoints = [(0, tmp_path / "v0"), (5, tmp_path / "v5"), (10, tmp_path / "v10")]
    scored = asyncio.run(
        evaluate_checkpoints_async(engine, checkpoints, "multihop", 4, "heldout", 0, None, {"min_hops": 2})
    )
    assert engine.loaded == [0, 5, 10]
    assert [(c.policy_version, c.checkpoint) for c in scored] == [(v, str(d)) for v, d in checkpoints]
    assert [[r.success_rate for r in c.results] for c in scored] == [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    assert [r.mode for r in scored[1].results] == ["greedy", "sampled"]


@pytest.mark.vllm
@pytest.mark.slow
def test_checkpoints_reload_into_one_vllm_engine(random_model_dir, tmp_path):
    weights = safetensors.torch.load_file(str(random_model_dir / "model.safetensors"))
    _checkpoint(tmp_path, 0, weights)
    _checkpoint(tmp_path, 4, {k: v * 2 if v.dim() == 2 else v for k, v in weights.items()})
    scored = evaluate_checkpoints(random_model_dir, find_checkpoints(tmp_path), "multihop", 3)
    assert [c.policy_version for c in scored] == [0, 4]
    for checkpoint in scored:
        assert [(r.mode, r.num_tasks) for r in checkpoint.results] == [("greedy", 3), ("sampled", 3)]
        assert checkpoint.results[0].mean_generated_tokens > 0 and checkpoint.seconds > 0
