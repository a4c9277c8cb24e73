"""Command-line parameters shared by `tracerl`'s commands and its `bench` sub-app."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer

from tracerl.config import ConfigError, load_config

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


def load_role_config(config_cls: type, config: Path | None, overrides: list[str] | None) -> Any:
    try:
        return load_config(config_cls, config, overrides)
    except ConfigError as err:
        typer.echo(f"tracerl: config error: {err}", err=True)
        raise typer.Exit(2) from None


def import_attr(path: str) -> Any:
    """The attribute a "module:attribute" path names, imported only now (heavy modules stay out of --help)."""
    module_name, attr = path.split(":")
    return getattr(importlib.import_module(module_name), attr)
