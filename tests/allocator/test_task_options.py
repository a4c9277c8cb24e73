"""``allocator.tasks.options``: the training pool's generator keywords, checked when the config loads."""

import pytest

from allocator.config import AllocatorConfig
from environments import make_tasks
from tracerl.config import ConfigError, load_config


def _write(tmp_path, options: str):
    path = tmp_path / "allocator.yaml"
    path.write_text(f"tasks:\n  env: multihop\n  train_tasks: 64\n  options: {options}\n")
    return path


def test_a_harder_training_mix_is_one_option_away(tmp_path):
    config = load_config(AllocatorConfig, _write(tmp_path, "{min_hops: 3}"))
    assert config.tasks.options == {"min_hops": 3}
    pool = make_tasks(config.tasks.env, "train", config.tasks.train_tasks, config.tasks.seed, **config.tasks.options)
    assert {len(task.params["path"]) for task in pool} <= {3, 4}
    default = make_tasks("multihop", "train", 64, 0)
    assert {len(task.params["path"]) for task in default} == {1, 2, 3, 4}


def test_an_unknown_option_is_refused_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"no task option 'num_hops'.*min_hops"):
        load_config(AllocatorConfig, _write(tmp_path, "{num_hops: 3}"))


def test_an_option_given_on_the_command_line_reaches_the_pool(tmp_path):
    config = load_config(AllocatorConfig, _write(tmp_path, "{}"), ["tasks.options.max_hops=1"])
    assert config.tasks.options == {"max_hops": 1}


def test_held_out_options_are_checked_against_the_training_environment(tmp_path):
    path = tmp_path / "allocator.yaml"
    path.write_text("tasks:\n  env: multihop\nheldout:\n  options: {min_hops: 2}\n")
    assert load_config(AllocatorConfig, path).heldout.options == {"min_hops": 2}
    path.write_text("tasks:\n  env: multihop\nheldout:\n  options: {train_file: x.jsonl}\n")
    with pytest.raises(ConfigError, match="no task option 'train_file'"):
        load_config(AllocatorConfig, path)
