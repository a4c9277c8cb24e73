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

from tracerl.config import ConfigError, field_docs, load_config

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
    # Typer collapses single newlines in epilogs; a blank line between rows keeps one per line.
    return "Config fields (file keys or --set):\n\n" + "\n\n".join(lines)


def load_role_config(config_cls: type, config: Path | None, overrides: list[str] | None) -> Any:
    try:
        return load_config(config_cls, config, overrides)
    except ConfigError as err:
        typer.echo(f"tracerl: config error: {err}", err=True)
        raise typer.Exit(2) from None


def role_command(name: str, config_path: str, runner_path: str, help_text: str) -> None:
    """Register ``tracerl NAME`` running ``runner(config)`` for a role's config class.

    Paths are "module:attribute" so that the role's heavy modules load only when run.
    """
    module_name, attr = config_path.split(":")
    config_cls = getattr(importlib.import_module(module_name), attr)

    def command(config: ConfigOption = None, set_: SetOption = None) -> None:
        cfg = load_role_config(config_cls, config, set_)
        runner_module, runner_attr = runner_path.split(":")
        runner: Callable[[Any], int | None] = getattr(importlib.import_module(runner_module), runner_attr)
        code = runner(cfg)
        raise typer.Exit(code or 0)

    command.__doc__ = help_text
    app.command(name, help=help_text, epilog=config_epilog(config_cls))(command)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="tracerl")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
