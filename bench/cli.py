"""`tracerl bench`: the benchmarks' commands, mounted by `tracerl.cli`.

Each command imports its bench only when run, so that ``--help`` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tracerl.cli_params import ConfigOption, import_attr, load_role_config
from tracerl.config import flatten_dotted, override_args, parse_override, read_config_file

bench_app = typer.Typer(
    help="Benchmarks; each prints its numbers and records them under bench/results/.", no_args_is_help=True
)

BenchSetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a `tracerl up` config field for every run (repeatable).", show_default=False
    ),
]


def bench_overrides(config: Path | None, set_: list[str] | None, steps: int) -> dict[str, Any]:
    # Fail fast on a bad override, before any run starts.
    load_role_config(import_attr("tracerl.upconfig:UpConfig"), config, set_)
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
    overrides = bench_overrides(config, set_, steps)
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

    run_throughput_bench(bench_overrides(config, set_, steps), work_dir, eta, timeout_s)


@bench_app.command("components")
def bench_components() -> None:
    """The component benchmarks: bus throughput, allocator latency, learner packed vs unpacked, actor over NATS
    vs in-process, environment branch points, the wire codec per message."""
    import subprocess

    failed = []
    for module in (
        "bench.bus_throughput",
        "bench.allocator_latency",
        "bench.learner_throughput",
        "bench.actor_throughput",
        "bench.env_step",
        "bench.codec",
    ):
        typer.echo(f"== {module}")
        if subprocess.run([sys.executable, "-m", module], check=False).returncode != 0:
            failed.append(module)
    if failed:
        typer.echo(f"failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


@bench_app.command("decomposition")
def bench_decomposition(
    results: Annotated[
        list[str],
        typer.Argument(
            help="Learning results to read, by file stem under bench/results/ (the first is the study's base; "
            "the others may differ in any setting but the equal-cost ones, which then name their variants)."
        ),
    ],
) -> None:
    """Why the strategies learn as they do: for every strategy (and setting) in the recorded learning results, the
    paired difference to grpo of the held-out greedy curve mean and final point, mixed root and branch groups per
    100 turns, prompts and leaves trained per step, the share of turns spent on roots, the share of trained tokens
    with a non-zero advantage, and the predictor's AUC and Brier per prefix depth (from the runs' own metrics while
    their directories are still here, and after that from the per-run record the previous decomposition.json kept).
    Writes bench/results/decomposition.{md,json}."""
    from bench.decomposition import run_decomposition

    try:
        md, _ = run_decomposition(results)
    except (FileNotFoundError, ValueError) as err:
        typer.echo(f"tracerl bench decomposition: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(md.read_text())


@bench_app.command("soak")
def bench_soak(
    minutes: Annotated[float, typer.Option(help="How long the whole system runs.")] = 60.0,
    interval_s: Annotated[float, typer.Option(help="Seconds between samples.")] = 60.0,
    warmup_minutes: Annotated[
        float | None,
        typer.Option(
            help="Samples before this are left out of the growth (default: a quarter, at most 10).", show_default=False
        ),
    ] = None,
    max_relative_growth_per_hour: Annotated[
        float, typer.Option(help="Largest growth per hour of memory and descriptors, as a fraction of their level.")
    ] = 0.10,
    config: ConfigOption = None,
    set_: BenchSetOption = None,
    work_dir: Annotated[Path, typer.Option(help="Where the run directory goes (<work_dir>/soak).")] = Path(
        "runs/bench-soak"
    ),
    results_dir: Annotated[
        Path | None, typer.Option(help="Where soak.json and soak.md go (default bench/results).", show_default=False)
    ] = None,
    rejudge: Annotated[
        Path | None,
        typer.Option(
            help="Run nothing: judge a recorded soak.json again from its samples and rewrite it and its markdown.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """The whole system (bus, learner, allocator, 2 actors) for --minutes, sampling each role's memory, open
    descriptors and processes and the JetStream store per stream every --interval-s; each series' growth per hour
    is its Theil-Sen slope (the median of pairwise slopes) after the warm-up, over the whole window and over its
    later half. Writes bench/results/soak.{md,json}; exits 1 if memory, descriptors or a retention-bounded stream
    grow faster than allowed relative to their level over both, a capped stream passes its cap, the learner stalls
    or a role exits."""
    from bench.soak import SoakOptions, rejudge_command, soak_command

    if rejudge is not None:
        try:
            raise typer.Exit(rejudge_command(rejudge))
        except (OSError, ValueError, KeyError, TypeError) as err:
            typer.echo(f"tracerl bench soak: cannot rejudge {rejudge}: {err!r}", err=True)
            raise typer.Exit(2) from None
    try:
        options = SoakOptions(
            minutes=minutes,
            interval_s=interval_s,
            warmup_minutes=warmup_minutes,
            max_relative_growth_per_hour=max_relative_growth_per_hour,
            work_dir=str(work_dir),
            results_dir=str(results_dir) if results_dir else None,
        )
    except ValueError as err:
        typer.echo(f"tracerl bench soak: {err}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(soak_command(options, up_set_args(config, set_)))


@bench_app.command("bus-memory")
def bench_bus_memory(
    cycles: Annotated[int, typer.Option(help="Policy versions published, read back and retired.")] = 1000,
    object_mib: Annotated[float, typer.Option(help="Size of one version.")] = 1.0,
    memory_limits_mib: Annotated[
        str, typer.Option(help="Comma-separated bus.memory_limit_mib to compare, one fresh bus each (0: none).")
    ] = "0,128",
    work_dir: Annotated[Path, typer.Option(help="Where the buses' run directories go.")] = Path(
        "runs/bench-bus-memory"
    ),
    results_dir: Annotated[Path, typer.Option(help="Where bus_memory.json and bus_memory.md go.")] = Path(
        "bench/results"
    ),
) -> None:
    """nats-server's resident memory across --cycles weights versions (put, read back, retention delete) through
    the project's own calls, once per memory limit. Writes bench/results/bus_memory.{md,json}."""
    from bench.bus_memory import bus_memory_command

    limits = [int(part) for part in memory_limits_mib.split(",") if part.strip()]
    raise typer.Exit(bus_memory_command(work_dir, results_dir, cycles, object_mib, limits))


@bench_app.command("scale")
def bench_scale(
    actors: Annotated[str, typer.Option(help="Comma-separated simulated actor counts to sweep.")] = "8,32,128,512",
    seconds: Annotated[float, typer.Option(help="Measured window per point, after the warm-up.")] = 60.0,
    warmup_s: Annotated[float, typer.Option(help="Seconds after every actor registered before measuring.")] = 30.0,
    turn_seconds: Annotated[float, typer.Option(help="Mean seconds a simulated turn takes.")] = 2.0,
    tokens_per_turn: Annotated[int, typer.Option(help="Tokens in each simulated turn.")] = 48,
    learner_step_s: Annotated[float, typer.Option(help="Seconds the simulated learner 'trains' per step.")] = 1.0,
    actors_per_host: Annotated[int, typer.Option(help="Simulated actors per host process.")] = 128,
    shards: Annotated[
        int, typer.Option(help="Allocator shards (processes) sharing the run; results go to scale-k<K>.{md,json}.")
    ] = 1,
    config: ConfigOption = None,
    set_: BenchSetOption = None,
    work_dir: Annotated[Path, typer.Option(help="Where the runs go (<work_dir>/scale-<N>).")] = Path(
        "runs/bench-scale"
    ),
    results_dir: Annotated[
        Path | None, typer.Option(help="Where scale.json and scale.md go (default bench/results).", show_default=False)
    ] = None,
) -> None:
    """The real nats-server and allocator fed by N simulated actors (the real actor service over an engine with no
    model) and a simulated learner, for each N: nodes/s through the allocator, its schedule() p99, work latency,
    allocator memory per open node and CPU per node, and the cores the bus and the actors used. Writes
    bench/results/scale.{md,json} with the ceiling: the first N whose schedule p99 passes 5 ms or whose throughput
    stops growing with N. With --shards K, K allocator shards share the run and each is reported too."""
    from bench.scale import ScaleOptions, run_scale_bench

    try:
        options = ScaleOptions(
            actors=tuple(int(n) for n in actors.split(",") if n.strip()),
            seconds=seconds,
            warmup_s=warmup_s,
            turn_seconds=turn_seconds,
            tokens_per_turn=tokens_per_turn,
            learner_step_s=learner_step_s,
            actors_per_host=actors_per_host,
            shards=shards,
            work_dir=str(work_dir),
            results_dir=str(results_dir) if results_dir else None,
        )
    except ValueError as err:
        typer.echo(f"tracerl bench scale: {err}", err=True)
        raise typer.Exit(2) from None
    payload = run_scale_bench(options, up_set_args(config, set_))
    raise typer.Exit(0 if payload["points"] and not payload["failures"] else 1)


@bench_app.command("scale-actors", hidden=True)
def bench_scale_actors(
    config: Annotated[Path, typer.Option(help="The actor config every simulated actor shares.")],
    actor_ids: Annotated[str, typer.Option(help="Comma-separated ids of the actors this host runs.")],
    turn_seconds: Annotated[float, typer.Option()] = 2.0,
    tokens_per_turn: Annotated[int, typer.Option()] = 48,
    answer_probability: Annotated[float, typer.Option()] = 0.35,
) -> None:
    """One host of `tracerl bench scale`'s simulated actors (started by the bench)."""
    import asyncio

    from actors.config import ActorConfig
    from bench.scale import serve_simulated_actors
    from tracerl.config import load_config
    from tracerl.logs import configure_logging

    actor_config = load_config(ActorConfig, config, [])
    configure_logging("scale-actors", actor_config.run.run_dir, "warning", actor_config.log.json_file)
    ids = [i for i in actor_ids.split(",") if i]
    raise typer.Exit(
        asyncio.run(serve_simulated_actors(config, ids, turn_seconds, tokens_per_turn, answer_probability))
    )


@bench_app.command("scale-learner", hidden=True)
def bench_scale_learner(
    config: Annotated[Path, typer.Option(help="The run's learner config (bus and run).")],
    step_seconds: Annotated[float, typer.Option()] = 1.0,
) -> None:
    """`tracerl bench scale`'s simulated learner (started by the bench)."""
    import asyncio

    from bench.scale import serve_simulated_learner
    from learner.config import LearnerConfig
    from tracerl.config import load_config
    from tracerl.logs import configure_logging

    learner_config = load_config(LearnerConfig, config, [])
    configure_logging(
        "scale-learner", learner_config.run.run_dir, learner_config.log.level, learner_config.log.json_file
    )
    raise typer.Exit(asyncio.run(serve_simulated_learner(config, step_seconds)))


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
        run_predictor_bench(options, load_role_config(import_attr("tracerl.upconfig:UpConfig"), config, set_))
    except BenchInputError as err:
        typer.echo(f"tracerl bench predictor: {err}", err=True)
        raise typer.Exit(2) from None


def up_set_args(config: Path | None, set_: list[str] | None) -> list[str]:
    """A config file's fields and the --set overrides as `tracerl up` --set arguments (checked first)."""
    load_role_config(import_attr("tracerl.upconfig:UpConfig"), config, set_)  # fail fast, before any run starts
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

    user_overrides = up_set_args(config, set_)
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
    result = run_flood(options, up_set_args(config, set_))
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
    result = run_join(chosen, joins, work_dir, up_set_args(config, set_), timeout_s, results_dir)
    typer.echo(join_markdown(result))
    raise typer.Exit(0 if result.ok else 1)


@bench_app.command("weight-sync")
def bench_weight_sync(
    sizes_mib: Annotated[str, typer.Option(help="Comma-separated object sizes in MiB.")] = "256,1024",
    fetchers: Annotated[str, typer.Option(help="Comma-separated counts of concurrent fetcher processes.")] = "1,2,4",
    receivers: Annotated[
        str, typer.Option(help="Comma-separated counts of broadcast receiver processes (gloo; empty skips it).")
    ] = "1,2,4",
    bucket_mib: Annotated[int, typer.Option(help="Bucket size of the broadcast in MiB.")] = 128,
    model_gb: Annotated[float, typer.Option(help="Bytes of one version of the projected model, in GB.")] = 28.0,
    model_params_b: Annotated[float, typer.Option(help="Parameters of the projected model, in billions.")] = 14.0,
    actors: Annotated[str, typer.Option(help="Comma-separated actor counts to project to.")] = "8,64",
    step_tokens: Annotated[int, typer.Option(help="Tokens one learner step trains on (assumed).")] = 1_048_576,
    learner_gpus: Annotated[int, typer.Option(help="Accelerators of the learner (assumed).")] = 8,
    gpu_tflops: Annotated[float, typer.Option(help="bf16 dense peak of one accelerator in TFLOP/s.")] = 989.0,
    mfu: Annotated[float, typer.Option(help="The learner's model FLOPs utilisation (assumed).")] = 0.4,
    broadcast_gbps: Annotated[float, typer.Option(help="A broadcast link's rate in GB/s (assumed).")] = 25.0,
    results_dir: Annotated[
        Path | None,
        typer.Option(help="Where weight_sync.json and .md go (default bench/results).", show_default=False),
    ] = None,
) -> None:
    """Weights at the size of real models: a real nats-server, the learner role puts an object of each size into
    the weights bucket (1 MiB chunks, as the learner publishes), then 1, 2, 4 actor processes fetch it at once and
    check its sha256; put and fetch GB/s. Then the broadcast transport: rank 0 sends a version of each size to
    1, 2, 4 receiver processes over gloo (loopback here), each checking its sha256, timed against the object store.
    Projects the sync time per version of a --model-gb model to --actors actors next to a learner step's time from
    the stated assumptions. Writes bench/results/weight_sync.{md,json}."""
    from bench.weight_sync import SyncAssumptions, markdown, run_weight_sync

    try:
        assumptions = SyncAssumptions(
            model_bytes=model_gb * 1e9,
            model_parameters=model_params_b * 1e9,
            actors=tuple(int(a) for a in actors.split(",") if a.strip()),
            step_tokens=step_tokens,
            learner_gpus=learner_gpus,
            gpu_peak_flops=gpu_tflops * 1e12,
            mfu=mfu,
            broadcast_bytes_per_s=broadcast_gbps * 1e9,
        )
        sizes = [int(s) for s in sizes_mib.split(",") if s.strip()]
        counts = [int(c) for c in fetchers.split(",") if c.strip()]
        receiver_counts = [int(c) for c in receivers.split(",") if c.strip()]
        if not sizes or min(sizes) < 1 or not counts or min(counts) < 1:
            raise ValueError("--sizes-mib and --fetchers must list integers >= 1")
        if (receiver_counts and min(receiver_counts) < 1) or bucket_mib < 1:
            raise ValueError("--receivers and --bucket-mib must be integers >= 1")
    except ValueError as err:
        typer.echo(f"tracerl bench weight-sync: {err}", err=True)
        raise typer.Exit(2) from None
    results = run_weight_sync(
        sizes, counts, assumptions, results_dir or Path(__file__).parent / "results", receiver_counts, bucket_mib
    )
    typer.echo(markdown(results))
