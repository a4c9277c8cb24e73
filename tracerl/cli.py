"""`tracerl`: one entrypoint per role, each with one typed config.

Every role command takes ``--config FILE`` (YAML or TOML) and repeatable
``--set section.field=value`` overrides; ``tracerl ROLE --help`` lists every config
field with its type and default. Heavy imports (torch, vLLM) happen inside the
commands so that ``--help`` stays instant.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from tracerl.config import (
    ConfigError,
    field_docs,
    flatten_dotted,
    load_config,
    override_args,
    parse_override,
    read_config_file,
)

app = typer.Typer(
    name="tracerl",
    help=(
        "TRACE-RL: asynchronous actor-learner RL for LLM agents on a NATS bus.\n\n"
        "Roles run as separate processes that meet on one bus: start `tracerl bus`, then any "
        "number of `tracerl actor`, one `tracerl allocator` and one `tracerl learner` "
        "(or all of them with `tracerl up`)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML or TOML config file for this role.", show_default=False),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override one config field, e.g. --set run.run_id=exp1 (repeatable; values parse as YAML).",
        show_default=False,
    ),
]


def config_epilog(config_cls: type) -> str:
    rows = field_docs(config_cls)
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{name.ljust(width)}  {tp} = {default}" for name, tp, default in rows]
    # Rich markup mode "rich" keeps single newlines, so the table stays one field per line.
    return "Config fields (file keys or --set):\n" + "\n".join(lines)


def load_role_config(config_cls: type, config: Path | None, overrides: list[str] | None) -> Any:
    try:
        return load_config(config_cls, config, overrides)
    except ConfigError as err:
        typer.echo(f"tracerl: config error: {err}", err=True)
        raise typer.Exit(2) from None


def _import(path: str) -> Any:
    module_name, attr = path.split(":")
    return getattr(importlib.import_module(module_name), attr)


class _LazyEpilogCommand(TyperCommand):
    """Renders the config-field table only when --help asks for it.

    Importing every role's config at start-up would pull torch, transformers and numba into
    every process, and vLLM's spawned workers re-import the parent's main module.
    """

    config_path = ""

    @property  # type: ignore[override]
    def epilog(self) -> str | None:
        return config_epilog(_import(self.config_path)) if self.config_path else self._static_epilog

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        self._static_epilog = value


def role_command(name: str, config_path: str, runner_path: str, help_text: str) -> None:
    """Register ``tracerl NAME`` running ``runner(config)`` for a role's config class.

    Paths are "module:attribute" so that a role imports only its own modules, and only when run.
    """

    def command(config: ConfigOption = None, set_: SetOption = None) -> None:
        cfg = load_role_config(_import(config_path), config, set_)
        runner: Callable[[Any], int | None] = _import(runner_path)
        raise typer.Exit(runner(cfg) or 0)

    command.__doc__ = help_text
    command_class = type(f"{name.title()}Command", (_LazyEpilogCommand,), {"config_path": config_path})
    app.command(name, help=help_text, cls=command_class)(command)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="tracerl")


role_command(
    "bus",
    "bus.config:BusServerConfig",
    "bus.entry:run",
    "Start a real nats-server with JetStream for a run: writes per-role credentials (mode 0600) into "
    "<run_dir>/credentials, provisions the run's streams, object store and KV bucket, and serves until "
    "SIGINT/SIGTERM.",
)
role_command(
    "allocator",
    "allocator.config:AllocatorConfig",
    "allocator.service:run",
    "Run the allocator: builds rollout trees from the actors' TurnNodes, spends each step's turn budget "
    "with the configured strategy (core.strategy: trace, grpo, tree-random, entropy, gps, dps, tsr-bon, "
    "tsr-beam, tsr-lookahead), routes branch work to the actor holding the prefix, and emits CompletedTrees.",
)
role_command(
    "learner",
    "learner.config:LearnerConfig",
    "learner.service:run",
    "Run the learner: consumes CompletedTrees, computes tree-aware advantages, takes off-policy-corrected "
    "optimiser steps with Accelerate (also under `torchrun`/`accelerate launch`), checkpoints, and publishes "
    "each new policy version's weights to the bus.",
)


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tracerl up` or the roles.")],
) -> None:
    """Redraw <run_dir>/report.png (reward, effective ratio and held-out success against samples spent)."""
    from tracerl.report import plot_report

    if not run_dir.is_dir():
        typer.echo(f"tracerl: no run directory at {run_dir}", err=True)
        raise typer.Exit(2)
    typer.echo(plot_report(run_dir))


role_command(
    "actor",
    "actors.config:ActorConfig",
    "actors.service:run",
    "Run one actor: owns a vLLM engine and the environments it steps, pulls WorkItems (shared queue and its "
    "own prefix-affinity subject), streams every finished turn as a TurnNode, and reloads new policy weights "
    "in place between turns. Start as many as you like, at any time; a killed actor's work is redelivered.",
)
role_command(
    "up",
    "tracerl.upconfig:UpConfig",
    "tracerl.up:run",
    "Run a whole training job on this machine: builds (or reuses) the embedded model, evaluates it, starts "
    "the bus, the learner, the allocator and N actors as separate processes (optionally pinned to cores), "
    "shows live progress, stops everything cleanly on Ctrl-C or when the learner is done, evaluates the "
    "trained policy and writes <run_dir>/report.png.",
)

model_app = typer.Typer(help="The embedded tiny model.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("build")
def model_build_command(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Build (or find in the cache) the embedded model: tokenizer trained on the environments' text, a small
    untied Qwen3, and a supervised warm start on demonstrations with systematic mistakes. Prints the
    model directory."""
    from modelkit.build import build_command

    raise typer.Exit(build_command(str(config) if config else None, list(set_ or [])))


@app.command("eval")
def eval_command(
    model: Annotated[
        str, typer.Option("--model", "-m", help="An HF-format model directory (config.json + weights + tokenizer).")
    ],
    env: Annotated[
        str,
        typer.Option(
            "--env", "-e", help="Environment: multihop, frozenlake, sokoban, math, toolcall, webshop or searchqa."
        ),
    ],
    tasks: Annotated[int, typer.Option("--tasks", "-n", help="Held-out tasks per decoding mode.")] = 100,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out task draw and of sampling.")] = 0,
    json_file: Annotated[
        Path | None, typer.Option("--json-file", help="Also write the JSON results to this file.", show_default=False)
    ] = None,
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints",
            help="A run's learner checkpoint directory (e.g. runs/default/checkpoints): score every checkpoint in it "
            "on one engine started from --model, one result per policy version.",
            show_default=False,
        ),
    ] = None,
    log_file: Annotated[
        Path | None,
        typer.Option(
            "--log-file",
            help="Where the vLLM engine's logs go (default: a new file under the temp directory, named on the console).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Held-out success with vLLM, greedy and sampled (temperature 1) side by side."""
    from modelkit.eval import eval_command as run_eval

    raise typer.Exit(
        run_eval(
            model,
            env,
            tasks,
            json_output,
            seed,
            str(json_file) if json_file else None,
            str(checkpoints) if checkpoints else None,
            str(log_file) if log_file else None,
        )
    )


bench_app = typer.Typer(
    help="Benchmarks; each prints its numbers and records them under bench/results/.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")

BenchSetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a `tracerl up` config field for every run (repeatable).", show_default=False
    ),
]


def _bench_overrides(config: Path | None, set_: list[str] | None, steps: int) -> dict[str, Any]:
    load_role_config(
        _import("tracerl.upconfig:UpConfig"), config, set_
    )  # fail fast on a bad override, before any run starts
    overrides: dict[str, Any] = {"learner.training.max_steps": steps}
    if config is not None:
        overrides = {**flatten_dotted(read_config_file(config)), **overrides}
    overrides.update(parse_override(item) for item in set_ or [])
    return overrides


@bench_app.command("learning")
def bench_learning(
    strategies: Annotated[
        str, typer.Option(help="Comma-separated allocator strategies to compare.")
    ] = "trace,grpo,tree-random,entropy,gps,dps,tsr-bon",
    seeds: Annotated[
        int,
        typer.Option(
            help="Runs per strategy, with run.seed = first-seed .. first-seed + seeds - 1; seed index s is the same "
            "for every strategy (paired seeds)."
        ),
    ] = 3,
    first_seed: Annotated[
        int, typer.Option(help="The first seed index (run a table's seeds in parts with --merge).")
    ] = 0,
    steps: Annotated[
        int, typer.Option(help="Learner steps per run (the equal sampling cost, with the step budget).")
    ] = 40,
    config: ConfigOption = Path("configs/default.yaml"),
    set_: BenchSetOption = None,
    work_dir: Annotated[Path, typer.Option(help="Where the runs' directories go.")] = Path("runs/bench-learning"),
    timeout_s: Annotated[float, typer.Option(help="Per-run limit in seconds.")] = 3600.0,
    eval_tasks: Annotated[
        int, typer.Option(help="Held-out tasks each checkpoint is scored on, greedy and sampled.")
    ] = 500,
    eval_every: Annotated[
        int,
        typer.Option(help="Score the policy every this many versions (and before training and at the end)."),
    ] = 5,
    merge: Annotated[
        bool,
        typer.Option(
            help="Keep the recorded runs (strategy, seed index) not run now from bench/results/<results-name>.json, "
            "when they were made with the same settings; a table can then be completed in parts."
        ),
    ] = False,
    results_name: Annotated[
        str,
        typer.Option(
            help="File stem of the results under bench/results/; another name keeps a side study "
            "(more seeds, an ablation) apart from the main table."
        ),
    ] = "learning",
) -> None:
    """Equal-cost comparison of strategies on paired seeds: each run's held-out curve (its checkpoints scored
    greedy and sampled after the run), scored by its mean and its last point; mixed root and branch groups per
    100 generated turns, informative-token share, training and evaluation seconds. Writes
    bench/results/<results-name>.{md,json,png} and the headline with paired differences to grpo
    (bench/results/headline.json, or <results-name>-headline.json for a side study)."""
    from bench.learning import check_results_name, run_learning_bench

    try:
        check_results_name(results_name)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--results-name") from err
    for value, hint in ((eval_tasks, "--eval-tasks"), (eval_every, "--eval-every"), (seeds, "--seeds")):
        if value < 1:
            raise typer.BadParameter("must be >= 1", param_hint=hint)
    if first_seed < 0:
        raise typer.BadParameter("must be >= 0", param_hint="--first-seed")
    overrides = _bench_overrides(config, set_, steps)
    run_learning_bench(
        [s.strip() for s in strategies.split(",") if s.strip()],
        seeds,
        overrides,
        work_dir,
        timeout_s,
        merge,
        results_name,
        eval_tasks=eval_tasks,
        eval_every=eval_every,
        first_seed=first_seed,
    )


@bench_app.command("throughput")
def bench_throughput(
    steps: Annotated[int, typer.Option(help="Learner steps per run.")] = 20,
    eta: Annotated[int, typer.Option(help="Staleness bound of the asynchronous runs.")] = 2,
    config: ConfigOption = Path("configs/default.yaml"),
    set_: BenchSetOption = None,
    work_dir: Annotated[Path, typer.Option(help="Where the runs' directories go.")] = Path("runs/bench-throughput"),
    timeout_s: Annotated[float, typer.Option(help="Per-run limit in seconds.")] = 3600.0,
) -> None:
    """Tokens/s and trees/s; asynchronous against synchronous wall time for the same learner steps (learner and
    actors pinned to separate cores); 1 against 2 actors. Writes bench/results/throughput.{md,json}."""
    from bench.throughput import run_throughput_bench

    run_throughput_bench(_bench_overrides(config, set_, steps), work_dir, eta, timeout_s)


@bench_app.command("components")
def bench_components() -> None:
    """The component benchmarks: bus throughput, allocator latency, learner packed vs unpacked, actor over NATS
    vs in-process."""
    import subprocess

    failed = []
    for module in (
        "bench.bus_throughput",
        "bench.allocator_latency",
        "bench.learner_throughput",
        "bench.actor_throughput",
    ):
        typer.echo(f"== {module}")
        if subprocess.run([sys.executable, "-m", module]).returncode != 0:
            failed.append(module)
    if failed:
        typer.echo(f"failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


@bench_app.command("predictor")
def bench_predictor(
    model: Annotated[
        list[Path] | None,
        typer.Option(
            "--model",
            help="A later policy version of the base model (an HF model directory or a learner checkpoint, e.g. "
            "runs/default/final_model), measured after the base model on the same engine (repeatable).",
            show_default=False,
        ),
    ] = None,
    prompts: Annotated[int, typer.Option(help="Train prompts rolled out; the first half trains the predictor.")] = 240,
    prefixes: Annotated[int, typer.Option(help="Diagnostic prefixes: roots and turn prefixes over depths.")] = 320,
    continuations: Annotated[int, typer.Option(help="Monte-Carlo continuations per prefix (even, for halves).")] = 16,
    train_branches: Annotated[
        int, typer.Option(help="Items of allocator.core.branch_k continuations per training tree, at random prefixes.")
    ] = 2,
    seed: Annotated[int, typer.Option(help="Seeds the prompt draw, the prefix choice and the sampling seeds.")] = 0,
    chains_in_flight: Annotated[int, typer.Option(help="Rollouts given to the engine at once.")] = 64,
    config: ConfigOption = Path("configs/default.yaml"),
    set_: BenchSetOption = None,
    results_dir: Annotated[
        Path | None,
        typer.Option(help="Where predictor.json and predictor.md go (default bench/results).", show_default=False),
    ] = None,
) -> None:
    """Every success predictor against Monte-Carlo ground truth, per policy version: root groups of --prompts train
    prompts (the run's allocator settings and sampling), the OutcomeModel trained on the first half's trees as the
    allocator trains it, then --prefixes prefixes of the second half's trees, each continued --continuations times
    with the same version. Scores ours (shared model + tree evidence), the shared model alone, the per-prompt Beta,
    depth only and the split-half Monte-Carlo oracle: AUC across and within prompts, Brier, calibration and P(mixed)
    for pairs of continuations, overall and per depth. Writes bench/results/predictor.{md,json}."""
    from bench.predictor import BenchInputError, PredictorBenchOptions, run_predictor_bench

    try:
        options = PredictorBenchOptions(
            prompts=prompts,
            prefixes=prefixes,
            continuations=continuations,
            train_branches=train_branches,
            seed=seed,
            chains_in_flight=chains_in_flight,
            models=tuple(str(m) for m in model or ()),
            results_dir=str(results_dir) if results_dir else None,
        )
        run_predictor_bench(options, load_role_config(_import("tracerl.upconfig:UpConfig"), config, set_))
    except BenchInputError as err:
        typer.echo(f"tracerl bench predictor: {err}", err=True)
        raise typer.Exit(2) from None


def _up_set_args(config: Path | None, set_: list[str] | None) -> list[str]:
    """A config file's fields and the --set overrides as `tracerl up` --set arguments (checked first)."""
    load_role_config(_import("tracerl.upconfig:UpConfig"), config, set_)  # fail fast, before any run starts
    args = override_args(flatten_dotted(read_config_file(config))) if config is not None else []
    return args + list(set_ or [])


@bench_app.command("chaos")
def bench_chaos(
    seed: Annotated[int, typer.Option(help="Seeds the order and timing of the faults and which actor dies.")] = 0,
    schedule: Annotated[
        str, typer.Option(help="fixed: each fault once, one at a time; random: --faults drawn, some fired at once.")
    ] = "fixed",
    faults: Annotated[int, typer.Option(help="Faults a random schedule draws.")] = 8,
    seeds: Annotated[
        int, typer.Option(help="Random schedule: runs of seeds --seed, --seed+1, ... in bench/results/chaos-random.")
    ] = 1,
    actions: Annotated[
        str,
        typer.Option(
            help="Comma-separated faults (default: every fault of the schedule): kill_actor, kill_learner, "
            "kill_allocator, restart_bus; random also kill_cluster_node, stall_actor, fill_store."
        ),
    ] = "",
    first_step: Annotated[int, typer.Option(help="Learner steps before the first fault.")] = 2,
    steps_between: Annotated[int, typer.Option(help="Learner steps between faults.")] = 2,
    steps_after: Annotated[int, typer.Option(help="Learner steps after the last fault.")] = 2,
    max_delay_s: Annotated[float, typer.Option(help="Longest random delay of a fault after its learner step.")] = 4.0,
    config: ConfigOption = None,
    set_: BenchSetOption = None,
    work_dir: Annotated[Path, typer.Option(help="Where the run directory goes (<work_dir>/chaos-s<seed>).")] = Path(
        "runs/bench-chaos"
    ),
    timeout_s: Annotated[float, typer.Option(help="Limit for the whole run in seconds.")] = 1800.0,
    results_dir: Annotated[
        Path | None,
        typer.Option(help="Where chaos[-random].json and .md go (default bench/results).", show_default=False),
    ] = None,
) -> None:
    """A real run (bus, allocator, 2 actors, learner) under a seeded schedule of SIGKILLs (an actor, replaced
    by a new one; the learner; the allocator) and a nats-server restart; a random schedule also stalls actors,
    fills the store and kills cluster nodes, two faults at once at times. Then every accepted TurnNode is
    reconciled against the CompletedTrees and the allocator's recorded drops, and every tree against what the
    learner trained. Writes bench/results/chaos.{md,json} (random: chaos-random.{md,json}); exits 1 if anything
    was lost or duplicated, a tree trained twice, a token trained past the staleness bound, or a policy version
    went down."""
    from bench.chaos import ChaosOptions, chaos_markdown, random_markdown, run_chaos, run_random_series

    user_overrides = _up_set_args(config, set_)
    try:
        options = ChaosOptions(
            seed=seed,
            schedule=schedule,
            faults=faults,
            actions=tuple(a.strip() for a in actions.split(",") if a.strip()),
            first_step=first_step,
            steps_between=steps_between,
            steps_after=steps_after,
            max_delay_s=max_delay_s,
            timeout_s=timeout_s,
            results_dir=str(results_dir) if results_dir else None,
        )
        if seeds < 1 or (seeds > 1 and schedule != "random"):
            raise ValueError("--seeds must be >= 1, and more than 1 only with --schedule random")
    except ValueError as err:
        typer.echo(f"tracerl bench chaos: {err}", err=True)
        raise typer.Exit(2) from None
    if schedule == "random":
        results = run_random_series(options, seeds, work_dir, user_overrides)
        typer.echo(random_markdown(results, options))
        raise typer.Exit(0 if all(r.ok for r in results) else 1)
    overrides = [f"run.run_id=chaos-s{seed}", f"run.run_dir={work_dir / f'chaos-s{seed}'}", *user_overrides]
    result = run_chaos(options, overrides)
    typer.echo(chaos_markdown(result))
    raise typer.Exit(0 if result.ok else 1)


@bench_app.command("flood")
def bench_flood(
    seed: Annotated[
        int, typer.Option(help="Seeds the hostile messages; both runs train with the configured run.seed.")
    ] = 0,
    messages: Annotated[int, typer.Option(help="Malformed messages spread over every subject of the run.")] = 10_000,
    steps: Annotated[int, typer.Option(help="Learner steps of the flooded run and of the undisturbed one.")] = 10,
    flood_after_step: Annotated[
        int, typer.Option(help="The flood starts after this many learner steps (2 or more before the last).")
    ] = 2,
    oversized_per_subject: Annotated[
        int, typer.Option(help="Messages just over the consumers' size limit, per subject (part of --messages).")
    ] = 4,
    wrong_role_repeats: Annotated[int, typer.Option(help="Times each operation a role is not allowed is tried.")] = 20,
    server_oversized: Annotated[int, typer.Option(help="Raw publishes over the server's own max_payload.")] = 3,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Also run the same config undisturbed and compare.")
    ] = True,
    eval_tasks: Annotated[
        int, typer.Option(help="Held-out tasks per decoding mode for each final policy (0: none).")
    ] = 100,
    config: ConfigOption = None,
    set_: BenchSetOption = None,
    work_dir: Annotated[
        Path, typer.Option(help="Where the run directories go (flood-s<seed>, undisturbed-s<seed>).")
    ] = Path("runs/bench-flood"),
    timeout_s: Annotated[float, typer.Option(help="Limit for each run in seconds.")] = 1800.0,
    results_dir: Annotated[
        Path | None, typer.Option(help="Where flood.json and flood.md go (default bench/results).", show_default=False)
    ] = None,
) -> None:
    """Hostile input against a real run (bus, allocator, 2 actors, learner): once training is under way, a
    separate client publishes --messages malformed messages (random, truncated, oversized, schema-violating, of
    another schema, version or run) over every subject the run uses, tries operations the actor, allocator and
    learner credentials are not allowed (writing weights or the weights KV, taking the learner's trees, ...) and
    publishes over the server's size limit. Then it checks that every process stayed alive, that each role
    counted exactly the rejects the flood predicts (by reason, in its metrics JSONL), that every wrong-role
    operation was a permission violation and that no flood message got into a tree; and compares the final
    policy with the same run undisturbed (held-out success, final loss). Writes bench/results/flood.{md,json};
    exits 1 if a check fails."""
    from bench.flood import FloodOptions, flood_markdown, run_flood

    try:
        options = FloodOptions(
            seed=seed,
            messages=messages,
            steps=steps,
            flood_after_step=flood_after_step,
            oversized_per_subject=oversized_per_subject,
            wrong_role_repeats=wrong_role_repeats,
            server_oversized=server_oversized,
            baseline=baseline,
            eval_tasks=eval_tasks,
            timeout_s=timeout_s,
            work_dir=str(work_dir),
            results_dir=str(results_dir) if results_dir else None,
        )
    except ValueError as err:
        typer.echo(f"tracerl bench flood: {err}", err=True)
        raise typer.Exit(2) from None
    result = run_flood(options, _up_set_args(config, set_))
    typer.echo(flood_markdown(result))
    raise typer.Exit(0 if result.ok else 1)


@bench_app.command("join")
def bench_join(
    buses: Annotated[str, typer.Option(help="Comma-separated: single (one nats-server), cluster (3 local nodes).")] = (
        "single,cluster"
    ),
    joins: Annotated[int, typer.Option(help="New actors started one after another in each run.")] = 1,
    config: ConfigOption = None,
    set_: BenchSetOption = None,
    work_dir: Annotated[Path, typer.Option(help="Where the run directories go (join-<bus>).")] = Path(
        "runs/bench-join"
    ),
    timeout_s: Annotated[
        float, typer.Option(help="Limit for each wait (first learner step, each join) in seconds.")
    ] = 900.0,
    results_dir: Annotated[
        Path | None, typer.Option(help="Where join.json and join.md go (default bench/results).", show_default=False)
    ] = None,
) -> None:
    """Time for a new actor to join a running run and publish its first TurnNode, against one nats-server and
    against a 3-node cluster: a run (bus, learner, allocator, one actor) takes a learner step, then a new
    `tracerl actor` process starts; its log splits the time into process start, vLLM engine start, bus connect,
    weights loaded, registered, and first node. Writes bench/results/join.{md,json}."""
    from bench.join import check_join_args, join_markdown, run_join

    chosen = [b.strip() for b in buses.split(",") if b.strip()]
    try:
        check_join_args(chosen, joins)
    except ValueError as err:
        typer.echo(f"tracerl bench join: {err}", err=True)
        raise typer.Exit(2) from None
    result = run_join(chosen, joins, work_dir, _up_set_args(config, set_), timeout_s, results_dir)
    typer.echo(join_markdown(result))
    raise typer.Exit(0 if result.ok else 1)


# Last, so that `python -m tracerl.cli` runs with every command registered.
if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
