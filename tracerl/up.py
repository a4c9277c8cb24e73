"""`tracerl up`: every role as its own process on this machine, with live progress.

It does exactly what a user would do by hand in separate terminals — `tracerl bus`,
`tracerl learner`, `tracerl allocator`, N x `tracerl actor` — from one config, and then
writes the run's report. The per-role configs it writes to ``<run_dir>/config/`` are the
ones to copy when running the roles on separate hosts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from allocator.shard import ShardConfig
from protocol import replace
from tracerl.config import dump_config, override_args, write_resolved_config
from tracerl.logs import configure_logging, get_logger
from tracerl.metrics import metrics_path, read_metrics
from tracerl.report import plot_report, predictor_summary
from tracerl.supervisor import Supervisor, parse_cpu_list, wait_for
from tracerl.upconfig import UpConfig

log = get_logger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def role_configs(up: UpConfig, model_dir: str, port: int, monitor_port: int) -> dict[str, Any]:
    """Each role's config with the shared parts (run, log, bus address, model) made consistent.

    With ``bus.cluster.local_nodes``, node i listens on ``port + i`` (bus.server.plan_nodes)
    and every role lists all nodes, so that it fails over.
    """
    nodes = up.bus.cluster.local_nodes or 1
    servers = [f"nats://127.0.0.1:{port + i}" for i in range(nodes)]
    client_bus = replace(up.actor.bus, servers=servers, credentials="")
    shared: dict[str, Any] = {"run": up.run, "log": up.log}
    bus = replace(up.bus, port=port, monitor_port=monitor_port, **shared)
    if up.bus.cluster.local_nodes:
        # Free route ports: the fixed default would collide with another local cluster.
        bus = replace(bus, cluster=replace(up.bus.cluster, route_port=0))
    configs: dict[str, Any] = {
        "bus": bus,
        "learner": replace(
            up.learner,
            bus=client_bus,
            model=replace(up.learner.model, model_dir=model_dir),
            weights=up.weights,
            **shared,
        ),
    }
    # `allocator.shard.count` allocator processes, each its own shard (allocator.shard).
    for shard in allocator_shards(up.allocator.shard.count):
        configs[shard.role_name] = replace(up.allocator, bus=client_bus, shard=shard, **shared)
    for index in range(up.num_actors):
        configs[f"actor-{index}"] = replace(
            up.actor, bus=client_bus, model_dir=model_dir, actor_id=f"actor-{index}", weights=up.weights, **shared
        )
    return configs


def write_role_configs(up: UpConfig, model_dir: str) -> tuple[dict[str, Any], Path]:
    """Every role's config on fresh ports, written to ``<run_dir>/config/<name>.yaml``."""
    configs = role_configs(up, model_dir, free_port(), free_port())
    config_dir = Path(up.run.run_dir) / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        write_role_config(config_dir, name, cfg)
    return configs, config_dir


def write_role_config(config_dir: Path, name: str, config: Any) -> Path:
    path = config_dir / f"{name}.yaml"
    path.write_text(dump_config(config))
    return path


def allocator_shards(count: int) -> list[ShardConfig]:
    return [ShardConfig(index=index, count=count) for index in range(count)]


def role_of(name: str) -> str:
    """The role a process name runs: actors are ``actor-*``, allocator shards ``allocator-*``."""
    for role in ("actor", "allocator"):
        if name.startswith(f"{role}-"):
            return role
    return name


def start_role(supervisor: Supervisor, up: UpConfig, name: str, config_dir: Path) -> None:
    """``tracerl ROLE --config <config_dir>/<name>.yaml`` on the role's cores; actors are
    ``actor-*``, allocator shards past the first ``allocator-*``."""
    role = role_of(name)
    cpus = getattr(up.cpus, "actors" if role == "actor" else role)
    supervisor.start(name, [role, "--config", str(config_dir / f"{name}.yaml")], parse_cpu_list(cpus))


# What `tracerl bus` prints once the run's streams and buckets exist (bus.entry._announce).
BUS_READY_LINE = "tracerl bus: listening on"


def start_roles(supervisor: Supervisor, up: UpConfig, names: list[str], config_dir: Path) -> None:
    """The bus first (and wait until it has provisioned the run), then the other roles of ``names``.

    A role started before provisioning would find no stream or bucket; a cluster takes
    seconds to elect the leaders its replicated streams need.
    """
    out = supervisor.log_dir / "bus.out"
    offset = out.stat().st_size if out.exists() else 0  # the lines of an earlier run in this directory

    def ready() -> bool:
        with out.open("rb") as handle:
            handle.seek(offset)
            return BUS_READY_LINE.encode() in handle.read()

    start_role(supervisor, up, "bus", config_dir)
    wait_for(lambda: ready() or not supervisor.processes["bus"].alive, up.startup_timeout_s, what="the bus")
    check_alive(supervisor)
    allocators = [n for n in names if role_of(n) == "allocator"]
    for name in ("learner", *allocators, *(n for n in names if n.startswith("actor-"))):
        if name in names:
            start_role(supervisor, up, name, config_dir)


def stop_roles(supervisor: Supervisor, timeout_s: float = 60.0) -> None:
    """Learner, allocator, actors, then the bus they all need to shut down cleanly."""
    allocators = [n for n in supervisor.processes if role_of(n) == "allocator"]
    order = ["learner", *allocators, *[n for n in supervisor.processes if n.startswith("actor-")], "bus"]
    supervisor.stop_all(order=[n for n in order if n in supervisor.processes], timeout_s=timeout_s)


def progress_line(run_dir: Path, started_at: float) -> str:
    learner = [r for r in read_metrics(metrics_path(run_dir, "learner")) if "step" in r]
    allocator = list(read_metrics(metrics_path(run_dir, "allocator")))
    heldout = [r for r in allocator if "heldout.policy_version" in r]
    parts = [f"{time.time() - started_at:5.0f}s"]
    if learner:
        last = learner[-1]
        tokens = sum(float(r.get("batch.generated_tokens", 0)) for r in learner)
        elapsed = max(1e-6, last["time"] - learner[0]["time"] + float(learner[0].get("step_seconds", 0)))
        lag = last.get("policy_version", 0) - last.get("batch_versions_min", last.get("policy_version", 0))
        parts += [
            f"step {last.get('step', 0)}",
            f"reward {last.get('batch.reward_mean', 0):.2f}",
            f"eff.ratio {last.get('batch.effective_ratio', 0):.2f}",
            f"tok/s {tokens / elapsed:,.0f}",
            f"version lag {lag}",
        ]
    else:
        parts.append("waiting for the first training step")
    if heldout:
        h = heldout[-1]
        parts.append(
            f"held-out@v{h['heldout.policy_version']} greedy {h['heldout.greedy_success']:.2f} "
            f"sampled {h['heldout.sampled_success']:.2f}"
        )
    return " | ".join(parts)


def eval_engine_log(json_file: Path) -> Path:
    """Where the engine of the eval writing ``json_file`` logs: ``logs/<name>.engine.log`` beside it."""
    return json_file.parent / "logs" / f"{json_file.name.split('.')[0]}.engine.log"


def eval_argv(
    model_dir: str, env: str, tasks: int, options: Mapping[str, object], json_file: Path, cpus: list[int], *extra: str
) -> list[str]:
    """`tracerl eval` on ``tasks`` held-out tasks that the task generator draws with ``options``
    (a run's ``allocator.heldout.options``), writing its JSON to ``json_file``, pinned to
    ``cpus``; run it as a child process, so that its vLLM engine is gone when it returns."""
    argv = [
        sys.executable,
        "-m",
        "tracerl",
        "eval",
        "--model",
        model_dir,
        "--env",
        env,
        "--tasks",
        str(tasks),
        "--json-file",
        str(json_file),
        "--log-file",
        str(eval_engine_log(json_file)),
        *(arg for setting in override_args(options) for arg in ("--option", setting)),
        *extra,
    ]
    return ["taskset", "-c", ",".join(map(str, cpus)), *argv] if cpus else argv


def run_eval(
    model_dir: str, env: str, tasks: int, options: Mapping[str, object], out: Path, cpus: list[int]
) -> dict | None:
    """Greedy and sampled success of ``model_dir`` (on the held-out tasks of ``options``, as
    ``eval_argv``), also written to ``out``; None if the eval failed."""
    raw = out.with_suffix(".raw.json")
    argv = eval_argv(model_dir, env, tasks, options, raw, cpus)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not raw.is_file():
        log.error(
            "eval_failed", model_dir=model_dir, stderr=result.stderr[-2000:], engine_log=str(eval_engine_log(raw))
        )
        return None
    results = json.loads(raw.read_text())
    raw.unlink()
    data = {f"{r['mode']}_success": r["success_rate"] for r in results}
    data.update(env=env, tasks=tasks, options=dict(options), model_dir=model_dir, results=results)
    out.write_text(json.dumps(data, indent=2))
    return data


def eval_cache_key(model_dir: str, env: str, tasks: int, options: Mapping[str, object]) -> str:
    """What a held-out eval's result depends on: the model's files, the task draw (with the
    generator's ``options``, and the size and modification time of each data file they name)
    and the code that runs episodes (its seeds are fixed: the same key gives the same numbers,
    up to the noise of vLLM's batching in sampled mode)."""
    from modelkit.cache import content_key, model_fingerprint, source_fingerprint

    root = Path(__file__).resolve().parent.parent
    code = [
        root / "modelkit" / "eval.py",
        root / "actors" / "episode.py",
        root / "actors" / "engine.py",
        *sorted((root / "environments").glob("*.py")),
    ]
    data_files = {
        key: [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
        for key, value in options.items()
        if isinstance(value, str) and (path := Path(value)).is_file() and (stat := path.stat())
    }
    return content_key(
        {
            "model": model_fingerprint(Path(model_dir)),
            "env": env,
            "tasks": tasks,
            "options": dict(options),
            "data_files": data_files,
            "code": source_fingerprint(code),
        }
    )


def cached_eval(
    model_dir: str, env: str, tasks: int, options: Mapping[str, object], out: Path, cpus: list[int]
) -> dict | None:
    """``run_eval``, reusing an earlier result for the same unchanged model and task set: every
    run of a benchmark starts from the same model, and its before-training eval costs a minute each time."""
    from modelkit.cache import cache_root

    cached = cache_root() / ".evals" / f"{eval_cache_key(model_dir, env, tasks, options)}.json"
    try:
        data = json.loads(cached.read_text())
        out.write_text(json.dumps(data, indent=2))
        log.info("eval_reused", model_dir=model_dir, cached=str(cached))
        return data
    except (OSError, json.JSONDecodeError):
        pass  # not cached yet, or unreadable: evaluate again
    data = run_eval(model_dir, env, tasks, options, out, cpus)
    if data:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(data, indent=2))
        os.replace(partial, cached)  # concurrent runs never read half a file
    return data


def eval_cpus(up: UpConfig) -> list[int]:
    """Evaluations run when training does not: on the actors' and the learner's cores together."""
    return sorted(set(parse_cpu_list(up.cpus.actors)) | set(parse_cpu_list(up.cpus.learner)))


def resolve_model_dir(up: UpConfig) -> str:
    if up.model_dir:
        if not (Path(up.model_dir) / "config.json").is_file():
            raise SystemExit(f"tracerl up: model_dir {up.model_dir!r} is not an HF model directory (no config.json)")
        return up.model_dir
    from modelkit.build import build_embedded_model

    return str(build_embedded_model(up.model))


def run(up: UpConfig) -> int:
    run_dir = Path(up.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    configure_logging("up", run_dir, up.log.level, up.log.json_file)
    write_resolved_config(up, "up")
    model_dir = resolve_model_dir(up)
    env = up.allocator.tasks.env
    # Every held-out eval of the run scores the tasks its allocator's probes do.
    heldout_options = up.allocator.heldout.options
    all_cpus = eval_cpus(up)
    supervisor = Supervisor(run_dir)
    # What a child leaves of its process tree (an engine core, a server) is reaped here
    # after each phase instead of outliving `tracerl up`.
    supervisor.adopt_orphans()

    before = None
    if up.eval_tasks:
        print(f"[up] evaluating the initial policy on {up.eval_tasks} held-out {env} tasks ...", flush=True)
        before = cached_eval(model_dir, env, up.eval_tasks, heldout_options, run_dir / "eval_before.json", all_cpus)
        supervisor.reap_orphans(kill=True)
        if before:
            print(f"[up] before: greedy {before['greedy_success']:.3f}  sampled {before['sampled_success']:.3f}")

    configs, config_dir = write_role_configs(up, model_dir)

    interrupted = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    started_at = time.time()
    try:
        start_roles(supervisor, up, list(configs), config_dir)
        print(
            f"[up] run {up.run.run_id}: bus, learner, allocator and {up.num_actors} actor(s) started; "
            f"logs in {run_dir / 'logs'}"
        )
        next_progress = time.time() + up.progress_interval_s
        while not interrupted:
            learner = supervisor.processes["learner"]
            if not learner.alive:
                break
            check_alive(supervisor)
            if time.time() - started_at > up.timeout_s:
                print("[up] timeout reached, stopping", flush=True)
                break
            if time.time() >= next_progress:
                print("[up] " + progress_line(run_dir, started_at), flush=True)
                next_progress = time.time() + up.progress_interval_s
            time.sleep(0.5)
    finally:
        stop_roles(supervisor)
        supervisor.reap_orphans(kill=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("[up] " + progress_line(run_dir, started_at), flush=True)

    final_model = run_dir / "final_model"
    after = None
    if up.eval_tasks and (final_model / "config.json").is_file():
        print(f"[up] evaluating the trained policy on {up.eval_tasks} held-out {env} tasks ...", flush=True)
        after = run_eval(str(final_model), env, up.eval_tasks, heldout_options, run_dir / "eval_after.json", all_cpus)
        supervisor.reap_orphans(kill=True)
    report = plot_report(run_dir, title=f"{up.run.run_id}: {up.allocator.core.strategy} on {env}")
    summary: dict[str, Any] = {
        "run_id": up.run.run_id,
        "strategy": up.allocator.core.strategy,
        "env": env,
        "seconds": round(time.time() - started_at, 1),
        "before": before,
        "after": after,
        "report": str(report),
        "interrupted": interrupted,
        "predictor": predictor_summary(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[up] report: {report}")
    if before and after:
        for mode in ("greedy", "sampled"):
            b, a = before[f"{mode}_success"], after[f"{mode}_success"]
            print(f"[up] held-out {mode:8s} success: {b:.3f} -> {a:.3f} ({100 * (a - b):+.1f} points)")
    predictor = summary["predictor"]
    if "predictor_auc" in predictor:
        print(
            "[up] success predictor: AUC {:.3f} at decisions, {:.3f} at every node ({:.3f} within a prompt); "
            "Brier {:.3f} = {:.2f}x the per-prompt baseline's".format(
                predictor["predictor_auc"],
                predictor.get("predictor_loo_auc", float("nan")),
                predictor.get("predictor_loo_auc_within_prompt", float("nan")),
                predictor["predictor_brier"],
                predictor.get("predictor_brier_vs_beta", float("nan")),
            )
        )
    return 130 if interrupted else 0


def check_alive(supervisor: Supervisor) -> None:
    failed = supervisor.failed()
    if failed:
        proc = failed[0]
        raise SystemExit(
            f"tracerl up: {proc.name} exited with code {proc.popen.returncode}; last lines of {proc.log_path}:\n"
            + supervisor.tail(proc.name)
        )
