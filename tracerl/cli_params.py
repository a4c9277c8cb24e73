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


def role_relative(overrides: list[str] | None, role: str, config_cls: type) -> list[str] | None:
    """``ROLE.key=value`` as ``key=value`` when ``config_cls`` has no field named ``role``: a
    role accepts the keys of its section of `tracerl up`'s config, e.g. ``tracerl allocator
    --set allocator.shard.index=1``."""
    prefix = f"{role}."
    if overrides is None or role in getattr(config_cls, "__struct_fields__", ()):
        return overrides
    return [item[len(prefix) :] if item.startswith(prefix) else item for item in overrides]


def load_role_config(
    config_cls: type, config: Path | None, overrides: list[str] | None, role: str | None = None
) -> Any:
    """``config_cls`` from defaults, ``config`` and ``overrides``; with ``role``, overrides may
    also name fields as ``ROLE.key`` (``role_relative``)."""
    if role is not None:
        overrides = role_relative(overrides, role, config_cls)
    try:
        return load_config(config_cls, config, overrides)
    except ConfigError as err:
        typer.echo(f"tracerl: config error: {err}", err=True)
        raise typer.Exit(2) from None


def import_attr(path: str) -> Any:
    """The attribute a "module:attribute" path names, imported only now (heavy modules stay out of --help)."""
    module_name, attr = path.split(":")
    return getattr(importlib.import_module(module_name), attr)
