"""structlog set-up: JSON lines into the run directory, readable lines on the console."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog
import structlog.tracebacks
from structlog.typing import Processor

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(
    role: str, run_dir: str | Path | None = None, level: str = "info", json_file: bool = True
) -> None:
    """Route structlog through stdlib logging so both sinks share one level and one pipeline."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    # Tracebacks are rendered plainly and without local variables. Logging runs on a role's
    # event loop, and a rich traceback with locals costs CPU seconds each (syntax colouring,
    # the repr of every frame's locals): when an actor's engine died with 33 items in flight,
    # a loaded machine spent minutes per traceback and the stop the death had set never ran.
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(
                    colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
                ),
            ],
            foreign_pre_chain=shared,
        )
    )
    root.addHandler(console)
    if run_dir is not None and json_file:
        log_dir = Path(run_dir) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_dir / f"{role}.jsonl")
        file_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.ExceptionRenderer(
                        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
                    ),
                    structlog.processors.JSONRenderer(),
                ],
                foreign_pre_chain=shared,
            )
        )
        root.addHandler(file_handler)
    root.setLevel(_LEVELS[level])
    # nats-py and vLLM are chatty at INFO (bm25s even at DEBUG); their warnings still come through.
    for noisy in ("nats", "vllm", "asyncio", "httpx", "urllib3", "filelock", "bm25s"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, _LEVELS[level]))
    structlog.contextvars.bind_contextvars(role=role)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
