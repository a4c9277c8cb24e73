"""`tracerl`: one entrypoint per role, each with one typed config.

Every role command takes ``--config FILE`` (YAML or TOML) and repeatable
``--set section.field=value`` overrides; ``tracerl ROLE --help`` lists every config
field with its type and default. Heavy imports (torch, vLLM) happen inside the
commands so that ``--help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from bench.cli import bench_app
from tracerl.cli_params import ConfigOption, SetOption, import_attr, load_role_config
from tracerl.config import field_docs

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


def config_epilog(config_cls: type) -> str:
    rows = field_docs(config_cls)
    width = max(len(name) for name, _, _ in rows)
    # Escaped: Rich would read "[str]" in "list[str]" as markup and drop it.
    lines = [escape(f"{name.ljust(width)}  {tp} = {default}") for name, tp, default in rows]
    # Rich markup mode "rich" keeps single newlines, so the table stays one field per line.
    return "Config fields (file keys or --set):\n" + "\n".join(lines)


class _LazyEpilog:
    """Renders the config-field table only when --help asks for it.

    Importing every role's config at start-up would pull torch, transformers and numba into
    every process, and vLLM's spawned workers re-import the parent's main module.
    """

    config_path = ""
    _static_epilog: str | None = None

    @property
    def epilog(self) -> str | None:
        return config_epilog(import_attr(self.config_path)) if self.config_path else self._static_epilog

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        self._static_epilog = value


class _LazyEpilogCommand(_LazyEpilog, TyperCommand):
    pass


def role_command(name: str, config_path: str, runner_path: str, help_text: str) -> None:
    """Register ``tracerl NAME`` running ``runner(config)`` for a role's config class.

    Paths are "module:attribute" so that a role imports only its own modules, and only when run.
    """

    def command(config: ConfigOption = None, set_: SetOption = None) -> None:
        cfg = load_role_config(import_attr(config_path), config, set_, role=name)
        runner: Callable[[Any], int | None] = import_attr(runner_path)
        raise typer.Exit(runner(cfg) or 0)

    command.__doc__ = help_text
    command_class = type(f"{name.title()}Command", (_LazyEpilogCommand,), {"config_path": config_path})
    app.command(name, help=help_text, cls=command_class)(command)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="tracerl")


class _BusGroup(_LazyEpilog, TyperGroup):
    config_path = "bus.config:BusServerConfig"


bus_app = typer.Typer(cls=_BusGroup, invoke_without_command=True)
app.add_typer(bus_app, name="bus")


@bus_app.callback()
def bus(ctx: typer.Context, config: ConfigOption = None, set_: SetOption = None) -> None:
    """Start a real nats-server with JetStream for a run: writes per-role credentials (mode 0600) into
    <run_dir>/credentials, provisions the run's streams, object store and KV bucket, and serves until
    SIGINT/SIGTERM. Beyond loopback it serves TLS from a CA made for the run, and each actor needs a
    credential of its own (`bus.actors`, or `tracerl bus add-actor` while it runs)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = load_role_config(import_attr("bus.config:BusServerConfig"), config, set_)
    raise typer.Exit(import_attr("bus.entry:run")(cfg) or 0)


@bus_app.command("add-actor")
def bus_add_actor(
    actor_id: Annotated[str, typer.Argument(help="The id the actor runs as (actor.actor_id).")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Give one actor a credential of its own on the running bus of this run directory, without a
    restart: writes <run_dir>/credentials/actor-<id>.json and hot-reloads every nats-server this host's
    `tracerl bus` runs. Takes the same config as `tracerl bus`. On a cluster across hosts, copy the file
    into each other bus host's credentials directory and run the same command there."""
    cfg = load_role_config(import_attr("bus.config:BusServerConfig"), config, set_)
    from bus.server import BusServerError, add_actor_to_running_bus

    try:
        cred = add_actor_to_running_bus(cfg, actor_id)
    except (BusServerError, ValueError, OSError) as err:
        typer.echo(f"tracerl bus add-actor: {err}", err=True)
        raise typer.Exit(1) from None
    from bus.server import credentials_path

    typer.echo(f"actor {cred.actor_id}: credentials {credentials_path(cfg.run.run_dir, 'actor', cred.actor_id)}")


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
            help="Where the vLLM engine's logs go "
            "(default: a new file under the temp directory, named on the console).",
            show_default=False,
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="A keyword of the environment's task generator for the held-out tasks, as a run's "
            "allocator.heldout.options: a difficulty knob or a real dataset's file, e.g. --option min_hops=3, or "
            "--option train_file=a.jsonl --option heldout_file=b.jsonl for --env math (repeatable; values parse "
            "as --set values do).",
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
            list(option or []),
        )
    )


app.add_typer(bench_app, name="bench")

# Last, so that `python -m tracerl.cli` runs with every command registered.
if __name__ == "__main__":  # pragma: no cover
    main()
