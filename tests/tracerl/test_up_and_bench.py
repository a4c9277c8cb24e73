"""Pure parts of `tracerl up` and the bench drivers."""

import dataclasses
import math
import subprocess
import sys

import pytest

from allocator.config import AllocatorConfig
from allocator.shard import ShardConfig
from bench.learning import aggregate, check_results_name, markdown_table, recorded_outcomes, table_order
from bench.runs import RunOutcome
from protocol import replace
from tracerl.cli_params import load_role_config, role_relative
from tracerl.config import ConfigError, load_config
from tracerl.up import role_configs, role_of
from tracerl.upconfig import UpConfig


def test_role_configs_share_run_bus_address_and_model():
    up = load_config(UpConfig, None, ["num_actors=2", "run.run_id=exp", "run.run_dir=/tmp/exp"])
    configs = role_configs(up, "/models/m", port=4555, monitor_port=8555)
    assert sorted(configs) == ["actor-0", "actor-1", "allocator", "bus", "learner"]
    assert configs["bus"].port == 4555 and configs["bus"].monitor_port == 8555
    for name in ("learner", "allocator", "actor-0", "actor-1"):
        assert configs[name].run.run_id == "exp"
        assert configs[name].bus.servers == ["nats://127.0.0.1:4555"]
    assert configs["learner"].model.model_dir == "/models/m"
    assert configs["actor-1"].model_dir == "/models/m" and configs["actor-1"].actor_id == "actor-1"


def test_up_starts_one_allocator_process_per_shard():
    up = load_config(UpConfig, None, ["num_actors=1", "allocator.shard.count=3"])
    configs = role_configs(up, "/models/m", port=4555, monitor_port=8555)
    assert sorted(configs) == ["actor-0", "allocator", "allocator-1", "allocator-2", "bus", "learner"]
    assert [(configs[n].shard.index, configs[n].shard.count) for n in ("allocator", "allocator-1", "allocator-2")] == [
        (0, 3),
        (1, 3),
        (2, 3),
    ]
    assert [role_of(n) for n in ("allocator-2", "actor-0", "learner", "allocator")] == [
        "allocator",
        "actor",
        "learner",
        "allocator",
    ]
    single = role_configs(load_config(UpConfig, None, []), "/models/m", port=4555, monitor_port=8555)
    assert single["allocator"] == replace(single["allocator"], shard=ShardConfig())


def test_a_role_takes_the_keys_of_its_section_of_the_up_config():
    config = load_role_config(AllocatorConfig, None, ["allocator.shard.index=1", "shard.count=2"], role="allocator")
    assert config.shard == ShardConfig(index=1, count=2)
    assert role_relative(["allocator.x=1", "core.y=2"], "allocator", AllocatorConfig) == ["x=1", "core.y=2"]
    # A config with a field of the role's name keeps the key as it is.
    assert role_relative(["allocator.x=1"], "allocator", UpConfig) == ["allocator.x=1"]
    assert role_relative(None, "allocator", AllocatorConfig) is None


def test_one_weights_section_reaches_the_learner_and_every_actor():
    default = role_configs(load_config(UpConfig, None, ["num_actors=2"]), "/models/m", port=4555, monitor_port=8555)
    assert {default[n].weights.transport for n in ("learner", "actor-0", "actor-1")} == {"object_store"}
    up = load_config(UpConfig, None, ["num_actors=2", "weights.transport=broadcast", "weights.bucket_mib=64"])
    configs = role_configs(up, "/models/m", port=4555, monitor_port=8555)
    for name in ("learner", "actor-0", "actor-1"):
        assert configs[name].weights.transport == "broadcast" and configs[name].weights.bucket_bytes == 64 * 2**20
    with pytest.raises(ValueError, match="transport"):
        load_config(UpConfig, None, ["weights.transport=carrier-pigeon"])
    for item, reason in (
        ("weights.port=65536", r"field weights.port = 65536: Expected `int` <= 65535"),
        ("weights.bucket_mib=0", r"field weights.bucket_mib = 0: Expected `int` >= 1"),
        ("weights.join_timeout_s=0", r"field weights.join_timeout_s = 0: Expected `float` > 0\.0"),
        ("weights.host=''", r"field weights.host = '': Expected `str` of length >= 1"),
    ):
        with pytest.raises(ConfigError, match=reason):
            load_config(UpConfig, None, [item])


def test_role_configs_list_every_node_of_a_local_cluster():
    up = load_config(UpConfig, None, ["bus.cluster.name=c", "bus.cluster.local_nodes=3"])
    configs = role_configs(up, "/models/m", port=4555, monitor_port=8555)
    assert configs["learner"].bus.servers == ["nats://127.0.0.1:4555", "nats://127.0.0.1:4556", "nats://127.0.0.1:4557"]
    assert configs["bus"].cluster.local_nodes == 3 and configs["bus"].cluster.route_port == 0
    assert configs["bus"].replicas == 3


def test_up_config_rejects_bad_pinning():
    with pytest.raises(Exception, match="bad cpu"):
        load_config(UpConfig, None, ["cpus.actors=x"])


def test_benches_read_a_run_config_with_its_included_model_recipe():
    from pathlib import Path

    from bench.cli import bench_overrides, up_set_args

    config = Path(__file__).resolve().parents[2] / "configs" / "math.yaml"
    overrides = bench_overrides(config, ["run.seed=3"], steps=7)
    assert overrides["model.demos.environments"] == ["math"] and overrides["allocator.tasks.env"] == "math"
    assert overrides["learner.training.max_steps"] == 7 and overrides["run.seed"] == 3
    args = up_set_args(config, ["num_actors=2"])
    assert 'model.demos.environments=["math"]' in args and args[-1] == "num_actors=2"
    assert load_config(UpConfig, None, args).model.demos.environments == ["math"]


def _outcome(name, greedy_after, ratio):
    return RunOutcome(
        name=name,
        run_dir=None,
        returncode=0,
        wall_seconds=10.0,
        learner_steps=3,
        heldout_greedy_before=0.3,
        heldout_greedy_after=greedy_after,
        heldout_sampled_before=0.2,
        heldout_sampled_after=greedy_after - 0.1,
        effective_ratio=ratio,
        informative_token_share=0.5,
        mixed_root_groups_per_100_turns=4.0,
        generated_turns=100.0,
        generated_tokens=2000.0,
        first_step_at=1.0,
        last_step_at=5.0,
        mixed_branch_groups_per_100_turns=1.5,
    )


def test_aggregate_reports_mean_and_spread_per_strategy():
    rows = aggregate(
        {"trace": [_outcome("a", 0.5, 0.8), _outcome("b", 0.7, 0.6)], "grpo": [_outcome("c", 0.4, 0.5)]},
        failed={"trace": {"d": "exit code 1"}},
    )
    trace = next(r for r in rows if r["strategy"] == "trace")
    assert trace["heldout_greedy_after"][0] == pytest.approx(0.6)
    assert trace["heldout_greedy_after"][1] == pytest.approx(math.sqrt(0.02))
    assert trace["effective_ratio"][0] == pytest.approx(0.7)
    assert trace["mixed_groups_per_100_turns"] == (5.5, 0.0) and (trace["seeds"], trace["failed_runs"]) == (2, 1)
    grpo = next(r for r in rows if r["strategy"] == "grpo")
    assert grpo["effective_ratio"] == (0.5, 0.0) and grpo["failed_runs"] == 0
    table = markdown_table(rows, {"seeds": 2})
    assert "| trace | 2 (1) | nan ± nan | 0.600 ± 0.141 |" in table and "| grpo |" in table  # no curve: no curve mean
    assert _outcome("x", 0.5, 0.5).training_seconds == 4.0


def test_recorded_runs_are_kept_only_under_the_same_settings():
    settings = {"seeds": 1, "learner.training.max_steps": 40}
    trace, grpo = _outcome("t", 0.5, 0.8), _outcome("g", 0.4, 0.3)
    trace, grpo = dataclasses.replace(trace, seed=0), dataclasses.replace(grpo, seed=0)
    runs = {"trace": [trace.as_dict()], "grpo": [grpo.as_dict()]}
    previous = {"settings": settings, "runs": runs}
    kept = recorded_outcomes(previous, settings, planned={("grpo", 0)})
    assert list(kept) == ["trace"] and kept["trace"][0] == trace
    assert recorded_outcomes(previous, {**settings, "learner.training.max_steps": 20}, planned=set()) == {}
    assert recorded_outcomes(None, settings, planned=set()) == {}


def test_a_results_name_must_be_a_plain_file_stem():
    for good in ("learning", "learning-trace-grpo-9seeds", "ablation_roots"):
        check_results_name(good)
    for bad in ("", "../learning", "sub/learning", ".hidden", "a\\b"):
        with pytest.raises(ValueError, match="plain file stem"):
            check_results_name(bad)


def test_bench_learning_refuses_a_results_name_outside_the_results_dir_before_any_run(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracerl",
            "bench",
            "learning",
            "--results-name",
            "../escape",
            "--work-dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "--results-name" in result.stderr and "plain file stem" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_table_order_puts_trace_first_and_unknown_strategies_last():
    assert table_order(["zeta", "gps", "grpo", "trace"]) == ["trace", "grpo", "gps", "zeta"]


def test_before_eval_is_reused_until_the_model_changes(tmp_path, monkeypatch):
    import tracerl.up as up_module

    monkeypatch.setenv("TRACERL_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"v1")
    calls = []

    def fake_eval(model_dir, env, tasks, options, out, cpus):
        calls.append((model_dir, dict(options)))
        data = {"greedy_success": 0.25 * len(calls), "sampled_success": 0.1, "env": env, "tasks": tasks}
        out.write_text(str(data))
        return data

    monkeypatch.setattr(up_module, "run_eval", fake_eval)
    first = up_module.cached_eval(str(model), "multihop", 10, {}, tmp_path / "a.json", [])
    again = up_module.cached_eval(str(model), "multihop", 10, {}, tmp_path / "b.json", [])
    assert len(calls) == 1 and again == first and (tmp_path / "b.json").is_file()
    up_module.cached_eval(str(model), "multihop", 20, {}, tmp_path / "c.json", [])  # another task count
    assert len(calls) == 2
    # Another task set: a default-difficulty result is not reused for the harder one.
    harder = up_module.cached_eval(str(model), "multihop", 10, {"min_hops": 3}, tmp_path / "e.json", [])
    assert len(calls) == 3 and calls[-1][1] == {"min_hops": 3} and harder["greedy_success"] == 0.75
    (model / "model.safetensors").write_bytes(b"v2, trained")  # same path, new weights
    changed = up_module.cached_eval(str(model), "multihop", 10, {}, tmp_path / "d.json", [])
    assert len(calls) == 4 and changed["greedy_success"] == 1.0


def test_the_eval_cache_key_names_the_task_set(tmp_path):
    from tracerl.up import eval_cache_key

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "heldout.jsonl"
    data.write_text('{"question": "q", "answer": "#### 1"}\n')
    files = {"train_file": str(tmp_path / "train.jsonl"), "heldout_file": str(data)}

    def key(options):
        return eval_cache_key(str(model), "math", 10, options)

    assert key({}) == key({}) != key({"min_ops": 2}) != key({"min_ops": 3})
    assert key({"min_ops": 2, "max_ops": 3}) == key({"max_ops": 3, "min_ops": 2})  # order does not matter
    before = key(files)
    assert before != key({})
    data.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "r", "answer": "#### 2"}\n')
    assert key(files) != before  # the held-out file changed: its earlier result is not reused


def test_eval_argv_carries_the_options_as_tracerl_eval_reads_them(tmp_path):
    from modelkit.eval import parse_task_options
    from tracerl.up import eval_argv

    options = {"min_hops": 3, "distractors": False, "heldout_file": "2024", "slack": 1.5}
    argv = eval_argv("m", "multihop", 8, options, tmp_path / "out.json", [], "--checkpoints", "c")
    assert argv[-2:] == ["--checkpoints", "c"]
    given = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--option"]
    assert given == ["min_hops=3", "distractors=false", 'heldout_file="2024"', "slack=1.5"]
    assert parse_task_options(given) == options  # the string "2024" stays a string
    assert "--option" not in eval_argv("m", "multihop", 8, {}, tmp_path / "out.json", [])


def test_tracerl_eval_explains_and_checks_its_task_options(random_model_dir):
    def tracerl_eval(*args):
        argv = [sys.executable, "-m", "tracerl", "eval", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)

    shown = tracerl_eval("--help")
    assert shown.returncode == 0 and "--option" in shown.stdout and "min_hops=3" in shown.stdout
    refused = tracerl_eval("--model", str(random_model_dir), "--env", "multihop", "--option", "num_hops=3")
    assert refused.returncode == 2
    assert "tracerl eval: environment 'multihop' takes no task option 'num_hops'" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_bench_run_never_resumes_an_earlier_sample(tmp_path):
    from bench.runs import run_up

    foreign = tmp_path / "mine"
    (foreign / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit, match="not a learning/throughput run directory"):
        run_up("mine", foreign, {}, timeout_s=1)
    assert (foreign / "checkpoints").is_dir()  # nothing of it deleted


def _exponent_lr_config(tmp_path):
    path = tmp_path / "user.yaml"
    path.write_text("learner:\n  optimiser:\n    lr: 3e-5\n")
    return path


def test_a_config_files_exponent_float_reaches_a_run_bench_as_a_float(tmp_path):
    from bench.cli import up_set_args
    from bench.harness import bench_up_config

    # `tracerl bench chaos|flood|join --config user.yaml`: the file's fields become the run's --set arguments.
    up = bench_up_config({}, up_set_args(_exponent_lr_config(tmp_path), None))
    assert type(up.learner.optimiser.lr) is float and up.learner.optimiser.lr == 3e-5


def test_a_config_files_exponent_float_reaches_the_learning_bench_as_a_float(tmp_path):
    from bench.cli import bench_overrides

    # `tracerl bench learning|throughput --config user.yaml`: these settings are each run's config and its record.
    overrides = bench_overrides(_exponent_lr_config(tmp_path), None, steps=5)
    assert overrides == {"learner.optimiser.lr": 3e-5, "learner.training.max_steps": 5}
    assert type(overrides["learner.optimiser.lr"]) is float


def test_a_runs_learning_curve_is_scored_on_its_held_out_options(tmp_path, monkeypatch):
    import bench.curve as curve_module
    import tracerl.up as up_module
    from tracerl.config import dump_config

    run_dir = tmp_path / "run"
    (run_dir / "config").mkdir(parents=True)
    up = load_config(UpConfig, None, ["allocator.heldout.options.min_hops=3", "allocator.tasks.options.max_hops=2"])
    (run_dir / "config" / "up.yaml").write_text(dump_config(up))
    (run_dir / "config" / "learner.yaml").write_text("model:\n  model_dir: /models/base\n")
    seen = []

    def fake_cached_eval(model_dir, env, tasks, options, out, cpus):
        seen.append(("initial", model_dir, dict(options)))
        return {"greedy_success": 0.1, "sampled_success": 0.2}

    class FakeEval:
        def __init__(self, argv, **kwargs):
            seen.append(("checkpoints", argv[argv.index("--model") + 1], argv))
            self.pid = 0

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(up_module, "cached_eval", fake_cached_eval)
    monkeypatch.setattr(curve_module.subprocess, "Popen", FakeEval)
    points, _ = curve_module.evaluate_curve(run_dir, 16, timeout_s=5)
    assert [(p.policy_version, p.greedy_success) for p in points] == [(0, 0.1)]
    assert seen[0] == ("initial", "/models/base", {"min_hops": 3})  # the held-out options, not the pool's
    argv = seen[1][2]
    assert seen[1][1] == "/models/base" and argv[argv.index("--option") + 1] == "min_hops=3"
    assert argv.count("--option") == 1
