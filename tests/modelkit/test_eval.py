from __future__ import annotations

import pytest

from modelkit.eval import (
    MAX_TOKENS_PER_TURN,
    EpisodeSummary,
    difficulty_label,
    eval_command,
    evaluate_modes,
    format_table,
    summarise,
)
from protocol.messages import TaskSpec


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
@pytest.mark.parametrize("env_name, labels", [
    ("math", {f"steps={n}" for n in range(1, 5)}),
    ("toolcall", {f"max_turns={n}" for n in range(3, 9)}),
    ("webshop", {f"max_turns={n}" for n in range(5, 8)}),
])
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
