"""The project's one multi-turn rollout loop (actors and evaluation both run it).

A work item with ``num_samples = k`` runs k chains concurrently from the same prefix. Each
chain alternates: generate the action ids from the context, decode them, step the
environment, encode the observation on its own, append both to the context. Every
finished turn becomes a ``TurnNode`` as soon as the environment has answered, so that the
allocator can branch from it while the chain goes on.

Node ids are (work id, sampling, sample index, depth) (``protocol.messages.node_id_for``).
The sampling names this run of the item: a redelivered item is another sampling, whose
tokens differ, so its nodes get new ids and chain only to each other; the allocator counts
a chain slot done once any sampling has ended it (``protocol.messages.chain_slot``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from actors.engine import Generation, derive_turn_seed
from modelkit.formatting import observation_token_ids, prompt_token_ids, stop_token_ids
from protocol.messages import SamplingSpec, TurnNode, WorkItem, node_id_for

if TYPE_CHECKING:
    # Importing the environments package pulls in bm25s -> numba -> llvmlite; a process whose
    # __main__ module imports llvmlite makes vLLM's CPU worker fail at start-up, so entry
    # modules that import this one must stay importable without it.
    from environments.base import Environment, StepResult


class TurnGenerator(Protocol):
    """What the loop needs from an engine (``actors.engine.PolicyEngine`` provides it)."""

    tokenizer: Any

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingSpec,
        *,
        stop_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Generation: ...


def new_sampling() -> str:
    """A fresh sampling name: two runs of one item must not share one (2^-32 odds that they do)."""
    return secrets.token_hex(4)


class EpisodeError(ValueError):
    """A work item that cannot be started (bad snapshot, impossible depth); ``reason`` is a short category."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def parent_id_for(item: WorkItem, sampling: str, sample_index: int, depth: int) -> str | None:
    """A chain's first node hangs under the item's parent (None under the root); later nodes
    chain to their own sampling's."""
    if depth == item.prefix_depth + 1:
        return item.parent_id
    return node_id_for(item.work_id, sampling, sample_index, depth - 1)


@dataclass(frozen=True)
class TurnOutcome:
    done: bool
    reward: float | None
    truncated: bool


def turn_outcome(
    step: StepResult, depth: int, max_turns: int, next_context_len: int, max_model_len: int
) -> TurnOutcome:
    """Whether a turn ends the episode, and with what reward.

    The last allowed turn ends the episode, and so does a context with no room for one more
    generated token; an episode the environment did not finish earns 0.
    """
    if step.done:
        return TurnOutcome(done=True, reward=float(step.reward), truncated=False)
    if depth >= max_turns or next_context_len >= max_model_len:
        return TurnOutcome(done=True, reward=0.0, truncated=True)
    return TurnOutcome(done=False, reward=None, truncated=False)


def pack_snapshot(env: Environment) -> bytes:
    return msgpack.packb(env.snapshot(), use_bin_type=True)


def restore_environment(env: Environment, snapshot: bytes) -> None:
    """Load a branch's state; any decoding or validation failure is an ``EpisodeError``."""
    try:
        state = msgpack.unpackb(snapshot, raw=False, strict_map_key=True)
    except Exception as err:  # noqa: BLE001 - msgpack raises several unrelated types for bad input
        raise EpisodeError("corrupt_snapshot", f"not valid msgpack ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise EpisodeError("corrupt_snapshot", f"snapshot is a {type(state).__name__}, not a mapping")
    try:
        env.restore(state)
    except Exception as err:  # noqa: BLE001 - environments signal corruption with EnvironmentError_; trust none blindly
        raise EpisodeError("corrupt_snapshot", f"{type(err).__name__}: {err}") from None


@dataclass(frozen=True)
class EpisodeContext:
    """Who is running the item and under which limits.

    ``sampling`` names this run of the item and goes into every node id: an actor gives
    each item it takes a new one (``new_sampling``), so that a redelivered item's nodes are
    never mistaken for an earlier run's.
    """

    actor_id: str
    max_model_len: int
    sampling: str


def _stop_tokens(tokenizer: Any, env: Environment) -> tuple[list[int] | None, list[str] | None]:
    if not env.stop_strings:
        return [], None
    ids = stop_token_ids(tokenizer, env.stop_strings)
    if ids is not None:
        return ids, None
    return None, list(env.stop_strings)


def prepare_chain(item: WorkItem, env: Environment, tokenizer: Any) -> list[int]:
    """Put a fresh environment at the item's starting state; returns the starting context ids."""
    if item.kind == "root":
        try:
            prompt = env.reset(item.task)
        except Exception as err:  # noqa: BLE001 - environments signal bad tasks with EnvironmentError_; trust none blindly
            raise EpisodeError("unknown_task", f"{type(err).__name__}: {err}") from None
        return prompt_token_ids(tokenizer, prompt)
    restore_environment(env, item.env_snapshot)
    if item.prefix_depth >= env.max_turns:
        raise EpisodeError("no_turns_left", f"prefix depth {item.prefix_depth} >= the task's cap {env.max_turns}")
    return list(item.prefix_token_ids)


async def run_chain(
    engine: TurnGenerator,
    env: Environment,
    context_ids: list[int],
    item: WorkItem,
    sample_index: int,
    ctx: EpisodeContext,
    emit: Callable[[TurnNode], Any],
) -> None:
    """One chain from the item's prefix to a terminal turn; ``emit`` receives each node in order."""
    tokenizer = engine.tokenizer
    stop_ids, stop_strings = _stop_tokens(tokenizer, env)
    # item.max_turns is what each chain of this item may generate (the allocator reserves budget
    # for exactly that); the environment's cap, narrowed to the task's on reset/restore, is a depth.
    # Only the latter ends the episode: a chain that has used up its item stops with an open
    # node, which search strategies continue from in their next item.
    episode_cap = env.max_turns
    item_limit = min(item.prefix_depth + item.max_turns, episode_cap)
    context = list(context_ids)
    prompt_ids = list(context_ids) if item.kind == "root" else []
    depth = item.prefix_depth
    while True:
        depth += 1
        generation = await engine.generate(
            context,
            item.sampling,
            stop_token_ids=stop_ids,
            stop_strings=stop_strings,
            seed=derive_turn_seed(item.sampling.seed, sample_index, depth),
        )
        step = env.step(generation.text)
        obs_ids = observation_token_ids(tokenizer, step.observation)
        context.extend(generation.token_ids)
        context.extend(obs_ids)
        outcome = turn_outcome(step, depth, episode_cap, len(context), ctx.max_model_len)
        node = TurnNode(
            run_id=item.run_id,
            tree_id=item.tree_id,
            node_id=node_id_for(item.work_id, ctx.sampling, sample_index, depth),
            parent_id=parent_id_for(item, ctx.sampling, sample_index, depth),
            work_id=item.work_id,
            actor_id=ctx.actor_id,
            task=item.task,
            depth=depth,
            policy_version=generation.policy_version,
            prompt_token_ids=prompt_ids if depth == 1 else [],
            action_token_ids=generation.token_ids,
            behaviour_logprobs=generation.behaviour_logprobs,
            observation_token_ids=obs_ids,
            action_text=generation.text,
            observation_text=step.observation,
            env_snapshot=pack_snapshot(env),
            env_score=float(env.score()),
            done=outcome.done,
            reward=outcome.reward,
            created_at=time.time(),
        )
        result = emit(node)
        if asyncio.iscoroutine(result):
            await result
        if outcome.done or depth >= item_limit:
            return


async def run_work_item(
    engine: TurnGenerator,
    make_env: Callable[[], Environment],
    item: WorkItem,
    ctx: EpisodeContext,
) -> AsyncIterator[TurnNode]:
    """All ``num_samples`` chains of ``item`` concurrently; yields nodes as turns finish.

    Every chain's environment is made and positioned before any generation starts, so a bad
    item fails with ``EpisodeError`` before a single node is yielded. If one chain fails
    later, the others are cancelled and the error propagates.
    """
    starts: list[tuple[Environment, list[int]]] = []
    for _ in range(item.num_samples):
        env = make_env()
        context = prepare_chain(item, env, engine.tokenizer)
        if len(context) >= ctx.max_model_len:
            raise EpisodeError("context_too_long", f"{len(context)} tokens >= max_model_len {ctx.max_model_len}")
        starts.append((env, context))

    finished: asyncio.Queue[TurnNode | BaseException | None] = asyncio.Queue()

    async def chain(index: int, env: Environment, context: list[int]) -> None:
        try:
            await run_chain(engine, env, context, item, index, ctx, finished.put_nowait)
            finished.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            finished.put_nowait(err)

    tasks = [asyncio.create_task(chain(i, env, context)) for i, (env, context) in enumerate(starts)]
    try:
        remaining = len(tasks)
        while remaining:
            got = await finished.get()
            if got is None:
                remaining -= 1
            elif isinstance(got, BaseException):
                raise got
            else:
                yield got
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect_work_item(
    engine: TurnGenerator, make_env: Callable[[], Environment], item: WorkItem, ctx: EpisodeContext
) -> list[TurnNode]:
    """Convenience for evaluation and tests: every node of the item, in completion order."""
    return [node async for node in run_work_item(engine, make_env, item, ctx)]
