"""`python -m actors --config FILE --set key=value ...`: the actor role without the CLI wrapper."""

from __future__ import annotations

import argparse
import sys

from actors.config import ActorConfig
from tracerl.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors", description="Run one TRACE-RL actor.")
    parser.add_argument("--config", "-c", default=None, help="YAML or TOML ActorConfig file")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], help="key=value override")
    args = parser.parse_args(argv)
    try:
        config = load_config(ActorConfig, args.config, args.overrides)
    except ConfigError as err:
        print(f"actor: config error: {err}", file=sys.stderr)
        return 2
    from actors.service import run

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
