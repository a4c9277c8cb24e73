"""Held-out success of a model on an environment, greedy and sampled, through the one episode loop.

Episodes run through ``actors.episode`` exactly as actors run them, on either the vLLM
``PolicyEngine`` (the default, and what `tracerl eval` uses) or the transformers generator
(no engine start-up; used to score a build right after its warm start). A run's learner
checkpoints are scored on one engine that reloads each one's weights in place, as an actor
loads a new policy version, so a learning curve costs one engine start-up.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from environments.base import solved
from protocol.messages import TaskSpec, WorkItem
from tracerl.logs import get_logger

log = get_logger(__name__)

Backend = Literal["vllm", "transformers"]
EVAL_MAX_MODEL_LEN = 2048
MAX_TOKENS_PER_TURN = 64
#: Episodes in flight at once; vLLM batches them, the transformers generator takes them in turn.
CONCURRENT_EPISODES = 64


@dataclass(frozen=True)
class DifficultyStats:
    episodes: int
    success_rate: float


@dataclass(frozen=True)
class EvalResult:
    env: str
    split: str
    mode: Literal["greedy", "sampled"]
    num_tasks: int
    success_rate: float
    #: Equals ``success_rate`` for 0/1 rewards; below it for partial credit (webshop).
    mean_reward: float
    by_difficulty: dict[str, DifficultyStats]
    mean_turns: float
    mean_generated_tokens: float
    seconds: float


@dataclass(frozen=True)
class EpisodeSummary:
    difficulty: str
    reward: float
    turns: int
    generated_tokens: int


class EvalInputError(ValueError):
    """A bad model directory, environment name, task count or task option; the message is one line."""


def check_env_name(env_name: str) -> str:
    from environments import env_names

    if env_name not in env_names():
        raise EvalInputError(f"unknown environment {env_name!r}; valid names: {', '.join(env_names())}")
    return env_name


def parse_task_options(items: Sequence[str]) -> dict[str, Any]:
    """`tracerl eval --option KEY=VALUE` arguments as the task generator's keywords; values
    read as ``--set`` values do (``tracerl.config.parse_override``), and a later key wins."""
    from tracerl.config import ConfigError, parse_override

    try:
        return dict(parse_override(item, "--option") for item in items)
    except ConfigError as err:
        raise EvalInputError(str(err)) from None


def eval_tasks(
    env_name: str, split: str, num_tasks: int, seed: int, options: Mapping[str, object] | None = None
) -> list[TaskSpec]:
    """The tasks an eval scores: ``num_tasks`` of ``split`` drawn with ``seed``, from the task
    generator given ``options`` (a run's ``allocator.heldout.options``: difficulty knobs, or a
    real dataset's files). An option the generator does not take or refuses (a value out of
    range, a missing file) is an ``EvalInputError``."""
    from environments import make_tasks
    from environments.registry import check_task_options

    options = options or {}
    try:
        check_task_options(env_name, options)
    except ValueError as err:
        raise EvalInputError(str(err)) from None
    try:
        return make_tasks(env_name, split, num_tasks, seed, **options)
    except (ValueError, TypeError, OSError) as err:
        shown = " ".join(f"{key}={value!r}" for key, value in options.items()) or "none"
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise EvalInputError(f"task options ({shown}): {first_line}") from None


def check_inputs(
    model_dir: str | Path,
    env_name: str,
    num_tasks: int,
    options: Mapping[str, object] | None = None,
    split: str = "heldout",
    seed: int = 0,
) -> Path:
    """The model directory, or an ``EvalInputError`` for a bad directory, environment, count or
    task option (the tasks are drawn once here, before any engine starts)."""
    from modelkit.export import ModelDirError, check_model_dir

    try:
        directory = check_model_dir(model_dir)
    except ModelDirError as err:
        raise EvalInputError(str(err)) from None
    check_env_name(env_name)
    if num_tasks < 1:
        raise EvalInputError(f"number of tasks must be >= 1, got {num_tasks}")
    eval_tasks(env_name, split, num_tasks, seed, options)
    return directory


def difficulty_label(task: TaskSpec) -> str:
    """Hops for question answering; calculator steps for word problems; the turn cap (optimal
    moves + slack) for grid puzzles."""
    if "path" in task.params:
        return f"hops={len(task.params['path'])}"
    if "steps" in task.params:
        return f"steps={len(task.params['steps'])}"
    if "max_turns" in task.params:
        return f"max_turns={task.params['max_turns']}"
    return "all"


def summarise(
    env_name: str, split: str, greedy: bool, episodes: Sequence[EpisodeSummary], seconds: float
) -> EvalResult:
    n = len(episodes)
    groups: dict[str, list[float]] = {}
    for episode in episodes:
        groups.setdefault(episode.difficulty, []).append(episode.reward)
    return EvalResult(
        env=env_name,
        split=split,
        mode="greedy" if greedy else "sampled",
        num_tasks=n,
        success_rate=sum(solved(e.reward) for e in episodes) / n if n else 0.0,
        mean_reward=sum(e.reward for e in episodes) / n if n else 0.0,
        by_difficulty={
            label: DifficultyStats(len(rewards), sum(solved(r) for r in rewards) / len(rewards))
            for label, rewards in sorted(groups.items())
        },
        mean_turns=sum(e.turns for e in episodes) / n if n else 0.0,
        mean_generated_tokens=sum(e.generated_tokens for e in episodes) / n if n else 0.0,
        seconds=round(seconds, 2),
    )


def eval_work_item(task: TaskSpec, index: int, greedy: bool, seed: int, max_turns: int) -> WorkItem:
    """A root item for one episode; sampled episodes get distinct, reproducible seeds."""
    mode = "greedy" if greedy else "sampled"
    return WorkItem.single_episode(
        run_id="eval",
        tree_id=f"eval-{mode}-{index}",
        task=task,
        temperature=0.0 if greedy else 1.0,
        seed=seed * 100_003 + index,
        max_tokens_per_turn=MAX_TOKENS_PER_TURN,
        max_turns=max_turns,
        min_policy_version=0,
        issued_at=time.time(),
    )


async def run_episodes(
    generator: Any,
    env_name: str,
    tasks: Sequence[TaskSpec],
    greedy: bool,
    seed: int,
    on_episode: Callable[[], None] | None = None,
) -> list[EpisodeSummary]:
    from actors.episode import EpisodeContext, collect_work_item
    from environments import make_env

    ctx = EpisodeContext(actor_id="eval", max_model_len=EVAL_MAX_MODEL_LEN, sampling="eval")
    limit = asyncio.Semaphore(CONCURRENT_EPISODES)

    async def one(index: int, task: TaskSpec) -> EpisodeSummary:
        probe = make_env(env_name)
        probe.reset(task)
        item = eval_work_item(task, index, greedy, seed, probe.max_turns)
        async with limit:
            nodes = await collect_work_item(generator, lambda: make_env(env_name), item, ctx)
        if on_episode is not None:
            on_episode()
        last = max(nodes, key=lambda node: node.depth)
        return EpisodeSummary(
            difficulty=difficulty_label(task),
            reward=float(last.reward or 0.0),
            turns=len(nodes),
            generated_tokens=sum(len(node.action_token_ids) for node in nodes),
        )

    return list(await asyncio.gather(*(one(i, task) for i, task in enumerate(tasks))))


async def evaluate_modes_async(
    generator: Any,
    env_name: str,
    num_tasks: int,
    split: str,
    modes: Sequence[bool],
    seed: int,
    on_episode: Callable[[], None] | None = None,
    options: Mapping[str, object] | None = None,
) -> list[EvalResult]:
    """One result per entry of ``modes`` (True = greedy), all on the same held-out tasks
    (``eval_tasks``: ``options`` are the task generator's keywords)."""
    tasks = eval_tasks(env_name, split, num_tasks, seed, options)
    results = []
    for greedy in modes:
        started = time.monotonic()
        episodes = await run_episodes(generator, env_name, tasks, greedy, seed, on_episode)
        results.append(summarise(env_name, split, greedy, episodes, time.monotonic() - started))
    return results


async def _with_backend(model_dir: Path, backend: Backend, work: Callable[[Any], Any]) -> Any:
    if backend == "transformers":
        from modelkit.hf_generator import TransformersTurnGenerator

        return await work(TransformersTurnGenerator.from_dir(model_dir, EVAL_MAX_MODEL_LEN))
    from actors.config import EngineSettings
    from actors.engine import PolicyEngine

    engine = await PolicyEngine.start(model_dir, EngineSettings(max_model_len=EVAL_MAX_MODEL_LEN))
    try:
        return await work(engine)
    finally:
        engine.shutdown()


def evaluate_modes(
    model_dir: str | Path,
    env_name: str,
    num_tasks: int,
    split: str = "heldout",
    modes: Sequence[bool] = (True, False),
    seed: int = 0,
    backend: Backend = "vllm",
    on_episode: Callable[[], None] | None = None,
    options: Mapping[str, object] | None = None,
) -> list[EvalResult]:
    """Several decoding modes with one engine start-up."""
    directory = check_inputs(model_dir, env_name, num_tasks, options, split, seed)
    return asyncio.run(
        _with_backend(
            directory,
            backend,
            lambda generator: evaluate_modes_async(
                generator, env_name, num_tasks, split, modes, seed, on_episode, options
            ),
        )
    )


def evaluate(
    model_dir: str | Path,
    env_name: str,
    num_tasks: int,
    split: str = "heldout",
    greedy: bool = True,
    seed: int = 0,
    backend: Backend = "vllm",
) -> EvalResult:
    return evaluate_modes(model_dir, env_name, num_tasks, split, (greedy,), seed, backend)[0]


@dataclass(frozen=True)
class CheckpointResult:
    """Held-out success of one learner checkpoint; ``seconds`` includes loading its weights."""

    policy_version: int
    checkpoint: str
    results: list[EvalResult]
    seconds: float


def find_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(policy version, directory) of every complete learner checkpoint under ``root``, oldest first."""
    from learner.trainer import checkpoint_version, complete_checkpoints

    found = [(checkpoint_version(path), path) for path in complete_checkpoints(root)]
    if not found:
        raise EvalInputError(f"no complete learner checkpoint under {root}")
    return found


async def evaluate_checkpoints_async(
    engine: Any,
    checkpoints: Sequence[tuple[int, Path]],
    env_name: str,
    num_tasks: int,
    split: str,
    seed: int,
    on_episode: Callable[[], None] | None = None,
    options: Mapping[str, object] | None = None,
) -> list[CheckpointResult]:
    scored = []
    for version, directory in checkpoints:
        started = time.monotonic()
        await engine.reload_weights(directory, version)
        results = await evaluate_modes_async(
            engine, env_name, num_tasks, split, (True, False), seed, on_episode, options
        )
        scored.append(CheckpointResult(version, str(directory), results, round(time.monotonic() - started, 2)))
    return scored


def evaluate_checkpoints(
    model_dir: str | Path,
    checkpoints: Sequence[tuple[int, Path]],
    env_name: str,
    num_tasks: int,
    split: str = "heldout",
    seed: int = 0,
    on_episode: Callable[[], None] | None = None,
    options: Mapping[str, object] | None = None,
) -> list[CheckpointResult]:
    """Greedy and sampled success of each checkpoint on the same held-out tasks. The engine starts
    on ``model_dir``, which gives the architecture and tokenizer the checkpoints' weights fit."""
    directory = check_inputs(model_dir, env_name, num_tasks, options, split, seed)
    return asyncio.run(
        _with_backend(
            directory,
            "vllm",
            lambda engine: evaluate_checkpoints_async(
                engine, checkpoints, env_name, num_tasks, split, seed, on_episode, options
            ),
        )
    )


def default_engine_log() -> Path:
    """A new engine log of `tracerl eval` in the temp directory, named by start time and pid."""
    return Path(tempfile.gettempdir()) / "tracerl" / f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def format_table(results: Sequence[EvalResult]) -> str:
    """Greedy and sampled side by side, overall and per difficulty."""
    by_mode = {r.mode: r for r in results}
    modes = [m for m in ("greedy", "sampled") if m in by_mode]
    labels = sorted({label for r in results for label in r.by_difficulty})
    first = results[0]
    lines = [f"{first.env} ({first.split}, {first.num_tasks} tasks)", f"{'':<14}" + "".join(f"{m:>10}" for m in modes)]
    lines.append(f"{'success':<14}" + "".join(f"{by_mode[m].success_rate:>10.1%}" for m in modes))
    lines.append(f"{'mean reward':<14}" + "".join(f"{by_mode[m].mean_reward:>10.3f}" for m in modes))
    for label in labels:
        cells = []
        for m in modes:
            stats = by_mode[m].by_difficulty.get(label)
            cells.append(f"{stats.success_rate:>10.1%}" if stats else f"{'-':>10}")
        count = next(r.by_difficulty[label].episodes for r in results if label in r.by_difficulty)
        lines.append(f"{label + f' (n={count})':<14}" + "".join(cells))
    lines.append(f"{'mean turns':<14}" + "".join(f"{by_mode[m].mean_turns:>10.2f}" for m in modes))
    lines.append(f"{'gen tokens':<14}" + "".join(f"{by_mode[m].mean_generated_tokens:>10.1f}" for m in modes))
    return "\n".join(lines)


def eval_command(
    model: str,
    env: str,
    tasks: int,
    json_output: bool,
    seed: int,
    json_file: str | None = None,
    checkpoints: str | None = None,
    log_file: str | None = None,
    option_args: Sequence[str] = (),
) -> int:
    """`tracerl eval`: greedy and sampled held-out success side by side; exit code 2 on bad input.

    With ``checkpoints`` (a learner checkpoint directory), every checkpoint in it is scored
    instead of ``model`` itself, one record per policy version. ``option_args`` (``KEY=VALUE``)
    are the task generator's keywords, as a run's ``allocator.heldout.options``. The console
    shows progress and results; the engine's logs go to ``log_file`` (by default a new file in
    the temp directory)."""
    from tqdm import tqdm

    from actors.engine import route_engine_logs
    from tracerl.logs import configure_logging

    try:
        options = parse_task_options(option_args)
        check_inputs(model, env, tasks, options, "heldout", seed)
        found = find_checkpoints(checkpoints) if checkpoints else []
        configure_logging("eval", level="info", json_file=False)
        engine_log = route_engine_logs(log_file or default_engine_log())
        log.info("eval_engine_log", path=str(engine_log))
        episodes = 2 * tasks * max(1, len(found))
        bar = tqdm(total=episodes, desc=f"eval {env}", unit="episode", file=sys.stderr, disable=json_output)
        with bar:  # one tick per episode (tqdm's update counts 1 by default)
            if found:
                scored = evaluate_checkpoints(model, found, env, tasks, "heldout", seed, bar.update, options)
            else:
                results = evaluate_modes(model, env, tasks, "heldout", (True, False), seed, "vllm", bar.update, options)
    except EvalInputError as err:
        print(f"tracerl eval: {err}", file=sys.stderr)
        return 2
    if found:
        records: list[dict[str, Any]] = [asdict(c) for c in scored]
        table = "\n\n".join(
            f"policy version {c.policy_version} ({c.checkpoint}):\n{format_table(c.results)}" for c in scored
        )
    else:
        records = [asdict(r) for r in results]
        table = format_table(results)
    if json_file:
        Path(json_file).write_text(json.dumps(records, indent=2))
    if json_output:
        print(json.dumps(records, indent=2))
    else:
        print(table)
    return 0
