"""`tracerl bench flood`: hostile input against a real run, compared with the same run undisturbed.

A real run (bus, allocator, two vLLM actors, learner; bench.harness) trains for a fixed
number of learner steps. Once the learner has taken ``flood_after_step`` steps and every
actor serves, a separate client:

- publishes ``messages`` malformed messages (bench.hostile: random, truncated, oversized,
  schema-violating, of another schema or another run) spread over every subject the run
  uses, with the admin credentials, which may publish anywhere: the bus passes them on and
  the roles must refuse each one, count it under ``bus.rejected.<reason>`` in their
  metrics JSONL, and keep serving;
- tries operations each role's credentials are not allowed (an actor writing weights or
  the weights KV, the allocator taking the learner's trees, ...), each ``wrong_role_repeats``
  times, and counts the server's permission violations on its own connections;
- sends a few messages larger than the server's max_payload over a raw connection, which
  the server must refuse before reading them (and drop that connection).

The run must keep every process alive, count exactly the rejects the flood predicts per
role and reason, and take no flood message into a tree. A second run with the same seed
and config and no flood gives the comparison: held-out success of the final policies and
the final training loss, with what the difference can and cannot be attributed to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from bench.chaos import wait_consumer_drained
from bench.harness import (
    SMALL_RUN,
    BenchRun,
    bench_up_config,
    fresh_run_dir,
    last_record,
    learner_steps,
    read_log_events,
    wait_actors_serving,
)
from bench.hostile import (
    FLOOD_ACTOR,
    FLOOD_ID_PREFIX,
    FloodMessage,
    FloodTarget,
    RejectCheck,
    ViolationCheck,
    WrongRoleAttempt,
    attempt_payload,
    counted_rejects,
    expected_rejects,
    parse_violation,
    plan_flood,
    reconcile_rejects,
    reconcile_violations,
    run_targets,
    sent_by_subject_and_kind,
    wrong_role_attempts,
)
from protocol import Subjects
from tracerl.logs import get_logger

log = get_logger(__name__)

MIB = 1024 * 1024

# The small two-actor run of the chaos bench, on the embedded model `make run` trains (the
# test-size warm start solves no held-out task, which would leave nothing to compare).
# Consumers decode at most 1 MiB (the bus passes up to 8 MiB), which leaves room for
# oversized messages the bus accepts and the roles refuse.
FLOOD_RUN: dict[str, Any] = {
    **{k: v for k, v in SMALL_RUN.items() if not k.startswith("model.")},
    "run.run_id": "flood",
    "actor.bus.max_message_bytes": MIB,
}

RUN_MARKER = ".flood-run"


@dataclass(frozen=True)
class FloodOptions:
    seed: int = 0
    # Malformed messages over all subjects, with the admin credentials.
    messages: int = 10_000
    # Oversized messages per subject (each just over the consumers' limit); the rest of a
    # subject's share is spread evenly over the other kinds.
    oversized_per_subject: int = 4
    wrong_role_repeats: int = 20
    # Raw publishes announcing more than the server's max_payload.
    server_oversized: int = 3
    flood_after_step: int = 2
    # Learner steps of each run (the flooded one and the undisturbed one), at least: the
    # learner trains until the bench stops it, which is once it has taken these steps and,
    # in the flooded run, read the whole flood (it reads, and refuses, messages only while
    # it trains; a learner that ends on its own may end before the flood is sent).
    steps: int = 10
    baseline: bool = True
    # Held-out tasks per decoding mode for each final policy; 0 skips the evaluations.
    eval_tasks: int = 100
    timeout_s: float = 1800.0
    # How long the flood's rejects may take to show in the allocator's and actors' metrics.
    count_timeout_s: float = 120.0
    work_dir: str = "runs/bench-flood"
    results_dir: str | None = None

    def __post_init__(self) -> None:
        if self.messages < 1:
            raise ValueError("messages must be >= 1")
        if not 1 <= self.flood_after_step <= self.steps - 2:
            raise ValueError("flood_after_step must be >= 1 and 2 or more below steps: the flood lands during training")
        if self.oversized_per_subject < 0 or self.wrong_role_repeats < 0 or self.server_oversized < 0:
            raise ValueError("oversized_per_subject, wrong_role_repeats and server_oversized must be >= 0")
        if self.eval_tasks < 0:
            raise ValueError("eval_tasks must be >= 0")


# ---------------------------------------------------------------------------- the client


@dataclass
class FloodSent:
    messages: int
    by_subject_kind: dict[str, dict[str, int]]
    seconds: float
    started_at: float
    violations: list[ViolationCheck]
    # Errors the wrong-role connections reported that were not permission violations.
    other_errors: list[str]
    server_oversized_sent: int
    server_oversized_refused: int
    server_replies: list[str]


def _chunks(items: Sequence[FloodMessage], size: int) -> list[Sequence[FloodMessage]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def publish_plan(admin: Any, plan: Sequence[FloodMessage], core_subjects: set[str]) -> None:
    """Every planned message, in plan order; stream subjects acked by the stream, in batches."""
    for chunk in _chunks(plan, 500):
        stream = [(m.subject, m.payload, None) for m in chunk if m.subject not in core_subjects]
        for m in chunk:
            if m.subject in core_subjects:
                await admin.nc.publish(m.subject, m.payload)
        await admin.publish_encoded(stream)
    await admin.nc.flush()


async def try_wrong_roles(
    run_dir: Path,
    servers: list[str],
    subjects: Subjects,
    attempts: Sequence[WrongRoleAttempt],
    repeats: int,
    seed: int,
) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """Each attempt ``repeats`` times on a connection with its role's credentials; the
    violations each connection saw, parsed, and any other error."""
    import nats

    from bus.server import RoleCredentials, credentials_path

    rng = random.Random(seed)
    observed: dict[str, list[tuple[str, str]]] = {}
    others: list[str] = []
    for role in dict.fromkeys(a.role for a in attempts):
        creds = RoleCredentials.read(credentials_path(run_dir, role))
        errors: list[str] = []

        async def on_error(err: Exception, sink: list[str] = errors) -> None:
            sink.append(str(err))

        nc = await nats.connect(
            servers=servers,
            user=creds.user,
            password=creds.password,
            inbox_prefix=creds.inbox_prefix,
            name=f"flood-{role}",
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=5,
        )
        mine = [a for a in attempts if a.role == role]
        try:
            for attempt in mine:
                for _ in range(repeats):
                    if attempt.action == "publish":
                        await nc.publish(attempt.subject, attempt_payload(attempt, subjects, rng))
                    else:
                        sub = await nc.subscribe(attempt.subject)
                        await sub.unsubscribe()
            await nc.flush()
            # The server answers each refused operation with one -ERR, read by the client's reader task.
            deadline = time.monotonic() + 10
            while len(errors) < len(mine) * repeats and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # any error beyond the expected ones
        finally:
            await nc.close()
        parsed = [(e, parse_violation(e)) for e in errors]
        observed[role] = [p for _, p in parsed if p is not None]
        others += [f"{role}: {e}" for e, p in parsed if p is None]
    return observed, others


async def refused_oversized(url: str, user: str, password: str, subject: str) -> tuple[bool, str]:
    """Announce a publish one byte over the server's max_payload on a raw connection.

    nats-py refuses such a publish itself; a hostile client would not, so the server must.
    True if the server answered with a payload violation and closed the connection.
    """
    host, _, port = url.removeprefix("nats://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = json.loads((await asyncio.wait_for(reader.readline(), 5)).decode().removeprefix("INFO ").strip())
        connect = {
            "user": user,
            "pass": password,
            "verbose": False,
            "pedantic": False,
            "name": "flood-oversized",
            "lang": "python",
            "version": "0",
            "protocol": 1,
        }
        writer.write(f"CONNECT {json.dumps(connect)}\r\nPUB {subject} {int(info['max_payload']) + 1}\r\n".encode())
        await writer.drain()
        reply = b""
        while True:  # until the server closes the connection (EOF)
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            if not chunk:
                break
            reply += chunk
    except (TimeoutError, ConnectionError) as err:
        return False, f"{type(err).__name__}: {err}"
    finally:
        writer.close()
    text = reply.decode(errors="replace").strip()
    return "maximum payload" in text.lower(), text[:200]


async def send_flood(
    run_dir: Path,
    run_id: str,
    servers: list[str],
    plan: Sequence[FloodMessage],
    targets: Sequence[FloodTarget],
    options: FloodOptions,
) -> FloodSent:
    from bus.client import BusClient
    from bus.server import RoleCredentials, credentials_path
    from tracerl.config import BusConfig, RunConfig

    started_at, started = time.time(), time.monotonic()
    admin = await BusClient.connect(
        "admin", BusConfig(servers=servers, request_timeout_s=30.0), RunConfig(run_id=run_id, run_dir=str(run_dir))
    )
    try:
        await publish_plan(admin, plan, {t.subject for t in targets if t.core})
        subjects = admin.subjects
    finally:
        await admin.close()
    attempts = wrong_role_attempts(subjects)
    observed, others = await try_wrong_roles(
        run_dir, servers, subjects, attempts, options.wrong_role_repeats, options.seed
    )
    admin_creds = RoleCredentials.read(credentials_path(run_dir, "admin"))
    replies = [
        await refused_oversized(servers[0], admin_creds.user, admin_creds.password, subjects.nodes_from(FLOOD_ACTOR))
        for _ in range(options.server_oversized)
    ]
    return FloodSent(
        messages=len(plan),
        by_subject_kind=sent_by_subject_and_kind(plan),
        seconds=round(time.monotonic() - started, 2),
        started_at=started_at,
        violations=reconcile_violations(attempts, options.wrong_role_repeats, observed),
        other_errors=others,
        server_oversized_sent=len(replies),
        server_oversized_refused=sum(1 for ok, _ in replies if ok),
        server_replies=sorted({text for _, text in replies}),
    )


# ---------------------------------------------------------------------------- reading a run


def role_records(run_dir: Path, actor_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The last record with bus counters of each consuming role."""
    names = ["allocator", "learner", *(f"actor-{n}" for n in actor_names)]
    return {name: last_record(run_dir, name, "bus.") for name in names}


async def read_trees(run_dir: Path, run_id: str, servers: list[str], max_bytes: int) -> dict[str, Any]:
    """From the streams, as admin: the run's trees by allocator step, and any trace of the flood in them.

    Messages are read under the consumers' rules (run id, size limit): the flood's own
    messages stay on the streams, and only one a consumer would have taken counts.
    """
    from allocator.heldout import is_probe_tree
    from bus.client import BusClient
    from bus.streams import read_stream
    from protocol import CompletedTree, ProtocolError, TurnNode
    from tracerl.config import BusConfig, RunConfig

    admin = await BusClient.connect("admin", BusConfig(servers=servers), RunConfig(run_id=run_id, run_dir=str(run_dir)))
    step_tasks: dict[int, list[str]] = {}
    step_completed_at: dict[int, float] = {}
    flood_in_trees = 0
    flood_work_nodes = 0
    trees = 0
    try:
        s = admin.subjects
        rules: dict[str, Any] = {"run_id": run_id, "max_bytes": max_bytes}
        async for _, _, tree in read_stream(admin.js, s.trees_stream, s.trees, CompletedTree, **rules):
            if isinstance(tree, ProtocolError) or is_probe_tree(tree.tree_id):
                continue
            trees += 1
            step_tasks.setdefault(tree.allocator_step, []).append(tree.task.task_id)
            step_completed_at[tree.allocator_step] = min(
                step_completed_at.get(tree.allocator_step, math.inf), tree.created_at
            )
            ids = [tree.tree_id, tree.task.task_id, *(n.node_id for n in tree.nodes)]
            flood_in_trees += sum(1 for i in ids if i.startswith(FLOOD_ID_PREFIX))
        async for _, _, node in read_stream(admin.js, s.nodes_stream, s.nodes, TurnNode, **rules):
            # A node an actor generated for a flood work item: the item was not refused.
            if not isinstance(node, ProtocolError) and node.work_id.startswith(FLOOD_ID_PREFIX):
                flood_work_nodes += 1
    finally:
        await admin.close()
    return {
        "trees": trees,
        "step_tasks": {k: sorted(v) for k, v in sorted(step_tasks.items())},
        "step_completed_at": dict(sorted(step_completed_at.items())),
        "flood_ids_in_trees": flood_in_trees,
        "nodes_from_flood_work": flood_work_nodes,
    }


# ---------------------------------------------------------------------------- comparison


@dataclass
class RunSummary:
    name: str
    run_dir: str
    flooded: bool
    steps: int
    finished: bool
    wall_seconds: float
    losses: list[float]
    rewards: list[float]
    step_seconds: list[float]
    heldout_greedy: float | None
    heldout_sampled: float | None
    heldout_tasks: int
    step_tasks: dict[int, list[str]]
    step_completed_at: dict[int, float]
    # Allocator steps closed at their timeout without a single turn.
    empty_steps: list[int]
    # 1-, 5- and 15-minute load averages when the run ended.
    load_average: tuple[float, float, float]


def first_divergent_step(a: Mapping[int, Sequence[str]], b: Mapping[int, Sequence[str]]) -> int | None:
    """The first allocator step whose trees are for different prompts in the two runs."""
    for step in sorted(set(a) | set(b)):
        if sorted(a.get(step, ())) != sorted(b.get(step, ())):
            return step
    return None


def difference_se(p: float, q: float, n: int) -> float:
    """Standard error of the difference of two success rates, each measured on ``n`` tasks."""
    return math.sqrt((p * (1 - p) + q * (1 - q)) / n) if n else math.nan


def mean_over(values: Sequence[float], first: int, last: int) -> float | None:
    """Mean of the 1-based items first..last that exist."""
    chosen = values[first - 1 : last]
    return fmean(chosen) if chosen else None


@dataclass
class Comparison:
    final_loss: float | None
    baseline_final_loss: float | None
    mean_loss: float | None
    baseline_mean_loss: float | None
    heldout: dict[str, dict[str, float | None]]
    first_divergent_allocator_step: int | None
    diverged_before_flood: bool | None
    flood_steps: tuple[int, int]
    step_seconds_during_flood: float | None
    baseline_step_seconds_same_steps: float | None
    explanation: list[str]


def _divergence(flooded: RunSummary, base: RunSummary, flood_started_at: float) -> tuple[int | None, bool | None, str]:
    """The first allocator step whose prompts differ, whether the runs had parted before the
    flood began, and a sentence saying so."""
    divergent = first_divergent_step(flooded.step_tasks, base.step_tasks)
    if divergent is None:
        return None, None, "Both runs trained on the same prompts at every allocator step."
    # Steps are emitted in order: the first one the flooded run completed after the flood
    # began is the earliest the flood could have changed.
    after = [step for step, at in flooded.step_completed_at.items() if at >= flood_started_at]
    before = not after or divergent < min(after)
    same = f"the same prompts up to allocator step {divergent - 1}" if divergent else "different prompts from step 0"
    if before:
        return (
            divergent,
            True,
            (
                f"The runs chose {same}, and had parted before the flood began (its first step completed under the "
                f"flood was {min(after) if after else 'none'}): with one seed, which actor takes which work item, "
                "when a step times out and which policy version samples each turn depend on timing, and the "
                "allocator's predictor learns from those outcomes."
            ),
        )
    return (
        divergent,
        False,
        (
            f"The runs chose {same} and differ from step {divergent} on, which was sampled while or after the flood "
            "was absorbed: timing, which the flood's load shifts (see step times), decides which policy version "
            "samples each turn and what the predictor learns, so later prompt choices differ."
        ),
    )


def compare_runs(
    flooded: RunSummary,
    base: RunSummary,
    flood_steps: tuple[int, int],
    flood_started_at: float,
    accepted_flood_messages: int,
) -> Comparison:
    """The flooded run against the undisturbed one, and what their difference means.

    ``flood_steps`` is (learner step when the flood began, learner step when every role
    had read it).
    """
    first, last = flood_steps
    explanation = []
    if accepted_flood_messages == 0:
        explanation.append(
            "No flood message reached training: none is in a CompletedTree and no actor ran a flood work item. "
            "The flood's content cannot explain a difference; only its effect on timing can."
        )
    else:
        explanation.append(f"{accepted_flood_messages} flood message(s) reached the run's trees or actors.")
    divergent, before, sentence = _divergence(flooded, base, flood_started_at)
    explanation.append(sentence)
    for run in (flooded, base):
        if run.empty_steps:
            explanation.append(
                f"In the {'flooded' if run.flooded else 'undisturbed'} run, allocator step(s) "
                f"{', '.join(map(str, run.empty_steps))} closed empty at their timeout: no actor had produced a turn "
                "for them yet (engines still starting on a loaded machine), so that run's prompts shift from there."
            )
    # The steps that ran while the flood was sent and counted (the one in progress included).
    window = (first + 1, min(last + 1, len(flooded.step_seconds), len(base.step_seconds)))
    flood_secs = mean_over(flooded.step_seconds, *window)
    base_secs = mean_over(base.step_seconds, *window)
    if flood_secs is not None and base_secs is not None:
        explanation.append(
            f"Learner steps {window[0]}-{window[1]} (while the flood was sent and read) took {flood_secs:.1f} s on "
            f"average, {base_secs:.1f} s in the undisturbed run."
        )
    explanation.append(
        f"Wall time {flooded.wall_seconds:.0f} s vs {base.wall_seconds:.0f} s, with a 15-minute load average of "
        f"{flooded.load_average[2]:.1f} vs {base.load_average[2]:.1f} at their ends: on a shared machine wall time "
        "measures the other work on it as much as the runs."
    )
    heldout: dict[str, dict[str, float | None]] = {}
    for mode, p, q in (
        ("greedy", flooded.heldout_greedy, base.heldout_greedy),
        ("sampled", flooded.heldout_sampled, base.heldout_sampled),
    ):
        if p is None or q is None:
            continue
        se = difference_se(p, q, flooded.heldout_tasks)
        heldout[mode] = {"flooded": p, "undisturbed": q, "difference": p - q, "se": se}
        within = abs(p - q) <= 2 * se
        explanation.append(
            f"Held-out {mode} success {p:.3f} vs {q:.3f} ({100 * (p - q):+.1f} points); on {flooded.heldout_tasks} "
            f"tasks the standard error of that difference is {100 * se:.1f} points, so it is "
            + (
                "within two standard errors: not distinguishable from evaluation noise."
                if within
                else "outside two standard errors: a real difference between the two policies."
            )
        )
    final, base_final = (flooded.losses[-1] if flooded.losses else None), (base.losses[-1] if base.losses else None)
    mean_loss, base_mean_loss = _finite_mean(flooded.losses), _finite_mean(base.losses)
    if final is not None and base_final is not None:
        explanation.append(
            f"Final training loss {final:.4f} vs {base_final:.4f} (mean over all steps {_fmt(mean_loss)} vs "
            f"{_fmt(base_mean_loss)}; steps with zero loss {sum(1 for x in flooded.losses if x == 0)} vs "
            f"{sum(1 for x in base.losses if x == 0)}): a step's loss is measured on that run's own batch, and is "
            "exactly zero when every group in it had a single outcome (no advantage), so it compares batches more "
            "than policies."
        )
    return Comparison(
        final_loss=final,
        baseline_final_loss=base_final,
        mean_loss=mean_loss,
        baseline_mean_loss=base_mean_loss,
        heldout=heldout,
        first_divergent_allocator_step=divergent,
        diverged_before_flood=before,
        flood_steps=flood_steps,
        step_seconds_during_flood=flood_secs,
        baseline_step_seconds_same_steps=base_secs,
        explanation=explanation,
    )


def _finite_mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return fmean(finite) if finite else None


# ---------------------------------------------------------------------------- the runs


@dataclass
class FloodRun:
    """What the flooded run showed about the flood."""

    sent: FloodSent
    targets: list[dict[str, str]]
    expected_rejects: dict[str, dict[str, int]]
    counted_rejects: dict[str, dict[str, int]]
    reject_checks: list[RejectCheck]
    # Per actor: flood messages sent to its own work subject, and rejects it counted (which
    # also include its share of the shared queue's): counted must not be below sent.
    actor_own_subjects: dict[str, tuple[int, int]]
    seconds_to_count: float | None
    flood_steps: tuple[int, int]
    flood_ids_in_trees: int
    nodes_from_flood_work: int
    nodes_unknown_tree: int


@dataclass
class RunOutcome:
    summary: RunSummary
    alive_after_flood: dict[str, bool]
    # The roles still running when the learner finished, and how each one stopped.
    alive_at_learner_end: dict[str, bool]
    exit_codes: dict[str, int | None]
    failures: list[str]
    flood: FloodRun | None


def _run_one(name: str, options: FloodOptions, overrides: Sequence[str], flooded: bool) -> RunOutcome:
    run_dir = Path(options.work_dir) / name
    up = bench_up_config(
        FLOOD_RUN,
        [f"run.run_id={name}", f"run.run_dir={run_dir}", *overrides],
        # No step limit: the bench stops the learner (see FloodOptions.steps).
        ["learner.training.max_steps=0", "eval_tasks=0"],
    )
    fresh_run_dir(run_dir, RUN_MARKER, "flood")
    failures: list[str] = []
    alive_after_flood: dict[str, bool] = {}
    delivery: FloodDelivery | None = None
    started = time.time()
    run = BenchRun(up, "flood")
    print(
        f"[flood] run {name} in {run_dir}: {options.steps} learner steps" + (", flooded" if flooded else ""), flush=True
    )
    with run:
        run.start()
        deadline = started + options.timeout_s
        failure = run.wait_until(
            lambda: run.step() >= options.flood_after_step,
            deadline - time.time(),
            f"learner step {options.flood_after_step}",
        )
        failure = failure or wait_actors_serving(run, deadline - time.time())
        if failure is None and flooded:
            delivery, alive_after_flood, failure = _flood(run, options)
        failure = failure or run.wait_until(
            lambda: run.step() >= options.steps, deadline - time.time(), f"learner step {options.steps}"
        )
        if failure:
            failures.append(failure.splitlines()[0])
        alive_at_end = run.alive()
        # Its stop ends the step it is in and writes a final record with every count.
        exit_codes = run.stop_each(["learner"], timeout_s=up.run.stop_timeout_s + 30)
        if exit_codes.get("learner") not in (0, None):
            failures.append(f"the learner exited with code {exit_codes['learner']}")
        # Actors and the allocator stop cleanly so their final records hold every count.
        exit_codes.update(run.stop_each([*run.actor_names, "allocator"]))
        trees = None
        if run.supervisor.processes["bus"].alive:
            trees = asyncio.run(read_trees(run_dir, up.run.run_id, run.servers, up.actor.bus.max_message_bytes))
        exit_codes.update(run.stop_each(["bus"]))
    flood = _reconcile(delivery, run_dir, run.actor_names, trees) if delivery is not None else None
    allocator = up.allocator
    summary = _summarise(
        name, run_dir, flooded, options, started, trees, allocator.tasks.env, allocator.heldout.options
    )
    if summary.steps < options.steps:
        failures.append(f"the learner took {summary.steps} of {options.steps} steps")
    return RunOutcome(summary, alive_after_flood, alive_at_end, exit_codes, failures, flood)


@dataclass
class FloodDelivery:
    """The flood as sent into a run, before the run's own counts are read."""

    sent: FloodSent
    targets: list[FloodTarget]
    expected: dict[str, dict[str, int]]
    seconds_to_count: float | None
    flood_steps: tuple[int, int]


def _flood(run: BenchRun, options: FloodOptions) -> tuple[FloodDelivery, dict[str, bool], str | None]:
    """Send the flood into a running run and wait until every role has read it."""
    run_id = run.up.run.run_id
    targets = run_targets(Subjects(run_id), run.actor_names)
    max_bytes = run.up.actor.bus.max_message_bytes
    plan = plan_flood(options.seed, run_id, targets, options.messages, max_bytes, options.oversized_per_subject)
    expected = expected_rejects(plan, targets, run_id, max_bytes)
    first_step = run.step()
    print(
        f"[flood] after learner step {first_step}: {len(plan):,} malformed messages on {len(targets)} subjects, "
        "wrong-role operations, over-limit publishes",
        flush=True,
    )
    sent = asyncio.run(send_flood(run.run_dir, run_id, run.servers, plan, targets, options))
    alive_after = run.alive()
    log.info(
        "flood_sent",
        messages=sent.messages,
        seconds=sent.seconds,
        alive=alive_after,
        violations=sum(v.refused for v in sent.violations),
        server_oversized_refused=sent.server_oversized_refused,
    )
    print(
        f"[flood] sent in {sent.seconds:.1f} s; processes alive: {sum(alive_after.values())}/{len(alive_after)}",
        flush=True,
    )

    def counted_all() -> bool:
        counted = counted_rejects(role_records(run.run_dir, run.actor_names))
        return all(sum(counted.get(g, {}).values()) >= sum(expected[g].values()) for g in ("allocator", "actors"))

    subjects = Subjects(run_id)
    learner = run.supervisor.processes["learner"]

    def learner_read_all() -> bool:
        # The learner writes its reject counts in its step and final records only; its durable's
        # backlog shows it has read everything (the bench stops it only after that). A learner
        # that has died leaves the rest unread, and the reconciliation shows it.
        return not learner.alive or asyncio.run(
            wait_consumer_drained(
                run.run_dir, run_id, run.servers, subjects.learner_consumer, 1.0, stream=subjects.trees_stream
            )
        )

    failure = run.wait_until(
        lambda: counted_all() and learner_read_all(), options.count_timeout_s, "every role to read the flood"
    )
    seconds_to_count = None if failure or not learner.alive else round(time.time() - sent.started_at, 1)
    log.info("flood_read", seconds=seconds_to_count, learner_step=run.step(), failure=failure)
    if failure and failure.startswith("timed out"):
        failure = None  # not a crash: the reconciliation shows what was not counted
    return FloodDelivery(sent, targets, expected, seconds_to_count, (first_step, run.step())), alive_after, failure


def _reconcile(
    delivery: FloodDelivery, run_dir: Path, actor_names: Sequence[str], trees: dict[str, Any] | None
) -> FloodRun:
    """What the run counted, from the final records the roles wrote at their stop."""
    records = role_records(run_dir, actor_names)
    counted = counted_rejects(records)
    sent = delivery.sent.by_subject_kind
    own = {
        a: (
            sum(sent.get(t.subject, {}).values()),
            sum(v for k, v in records[f"actor-{a}"].items() if k.startswith("bus.rejected.")),
        )
        for a in actor_names
        for t in delivery.targets
        if t.consumer == f"actor:{a}"
    }
    return FloodRun(
        sent=delivery.sent,
        targets=[
            {"subject": t.subject, "expects": t.message_type.__name__, "consumer": t.consumer or "none", "note": t.note}
            for t in delivery.targets
        ],
        expected_rejects=delivery.expected,
        counted_rejects=counted,
        reject_checks=reconcile_rejects(delivery.expected, counted),
        actor_own_subjects=own,
        seconds_to_count=delivery.seconds_to_count,
        flood_steps=delivery.flood_steps,
        flood_ids_in_trees=(trees or {}).get("flood_ids_in_trees", 0),
        nodes_from_flood_work=(trees or {}).get("nodes_from_flood_work", 0),
        nodes_unknown_tree=int(records["allocator"].get("core.nodes_unknown_tree") or 0),
    )


def _summarise(
    name: str,
    run_dir: Path,
    flooded: bool,
    options: FloodOptions,
    started: float,
    trees: dict[str, Any] | None,
    env: str,
    heldout_options: Mapping[str, object],
) -> RunSummary:
    from tracerl.up import run_eval

    load = os.getloadavg()  # before the evaluation adds its own
    steps = learner_steps(run_dir)
    final_model = run_dir / "final_model"
    heldout = None
    if options.eval_tasks and (final_model / "config.json").is_file():
        print(f"[flood] evaluating {name}'s final policy on {options.eval_tasks} held-out {env} tasks ...", flush=True)
        out = run_dir / "eval_after.json"
        heldout = run_eval(str(final_model), env, options.eval_tasks, heldout_options, out, [])
    return RunSummary(
        name=name,
        run_dir=str(run_dir),
        flooded=flooded,
        steps=len(steps),
        finished=len(steps) >= options.steps,
        wall_seconds=round(time.time() - started, 1),
        losses=[math.nan if r.get("train.loss") is None else float(r["train.loss"]) for r in steps],
        rewards=[float(r.get("batch.reward_mean") or 0.0) for r in steps],
        step_seconds=[round(float(r.get("step_seconds") or 0.0), 2) for r in steps],
        heldout_greedy=heldout["greedy_success"] if heldout else None,
        heldout_sampled=heldout["sampled_success"] if heldout else None,
        heldout_tasks=options.eval_tasks if heldout else 0,
        step_tasks=(trees or {}).get("step_tasks", {}),
        step_completed_at=(trees or {}).get("step_completed_at", {}),
        empty_steps=sorted(
            int(e["step"])
            for e in read_log_events(run_dir, "allocator")
            if e.get("event") == "allocator_step_closed" and e.get("turns") == 0
        ),
        load_average=load,
    )


# ---------------------------------------------------------------------------- result


@dataclass
class FloodResult:
    seed: int
    options: dict[str, Any]
    flooded: RunOutcome
    baseline: RunOutcome | None
    comparison: Comparison | None
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        out = [f"flooded run: {f}" for f in self.flooded.failures]
        flood = self.flooded.flood
        if flood is None:
            return [*out, "the flood was not sent"]
        dead = sorted(n for n, alive in self.flooded.alive_after_flood.items() if not alive)
        if dead:
            out.append(f"not alive after the flood: {dead}")
        ended = sorted(n for n, alive in self.flooded.alive_at_learner_end.items() if not alive and n != "learner")
        if ended:
            out.append(f"not alive when the learner finished: {ended}")
        for check in flood.reject_checks:
            if not check.ok:
                out.append(f"{check.role} counted {check.counted}, the flood predicts {check.expected}")
        for actor, (sent, counted) in flood.actor_own_subjects.items():
            if counted < sent:
                out.append(f"{actor} counted {counted} rejects, fewer than the {sent} sent to its own subject")
        bad = [v for v in flood.sent.violations if not v.ok]
        if bad:
            out.append(f"{len(bad)} wrong-role operation(s) not refused exactly once per attempt")
        if flood.sent.server_oversized_refused != flood.sent.server_oversized_sent:
            out.append("the server did not refuse every over-limit publish")
        if flood.flood_ids_in_trees or flood.nodes_from_flood_work or flood.nodes_unknown_tree:
            out.append("flood messages got past the consumers")
        if self.baseline is not None:
            out += [f"undisturbed run: {f}" for f in self.baseline.failures]
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()


def run_flood(options: FloodOptions, overrides: Sequence[str]) -> FloodResult:
    flooded = _run_one(f"flood-s{options.seed}", options, overrides, flooded=True)
    baseline = _run_one(f"undisturbed-s{options.seed}", options, overrides, flooded=False) if options.baseline else None
    comparison = None
    if baseline is not None and flooded.flood is not None:
        f = flooded.flood
        comparison = compare_runs(
            flooded.summary,
            baseline.summary,
            f.flood_steps,
            f.sent.started_at,
            f.flood_ids_in_trees + f.nodes_from_flood_work,
        )
    result = FloodResult(options.seed, dataclasses.asdict(options), flooded, baseline, comparison)
    write_flood_results(result, Path(options.results_dir) if options.results_dir else None)
    return result


def flood_markdown(result: FloodResult) -> str:
    run = result.flooded
    flood = run.flood
    lines = [
        "# Flood",
        "",
        f"Seed {result.seed}; flooded run `{run.summary.run_dir}` "
        f"({run.summary.steps} learner steps, {run.summary.wall_seconds:.0f} s).",
    ]
    if flood is None:
        return "\n".join([*lines, "", "The flood was not sent: " + "; ".join(result.failures())]) + "\n"
    sent = flood.sent
    read = (
        f"every role had read all of it {flood.seconds_to_count} s after the flood began, by learner step "
        f"{flood.flood_steps[1]}"
        if flood.seconds_to_count is not None
        else "not every role had read all of it while the learner trained"
    )
    lines += [
        "",
        f"After learner step {flood.flood_steps[0]}, {sent.messages:,} malformed messages in {sent.seconds:.1f} s "
        f"(admin credentials); {read}.",
        "",
        "## Messages sent, by subject and kind",
        "",
    ]
    kinds = sorted({k for by_kind in sent.by_subject_kind.values() for k in by_kind})
    lines += ["| subject | consumer | " + " | ".join(kinds) + " | total |", "|---" * (len(kinds) + 3) + "|"]
    for target in flood.targets:
        by_kind = sent.by_subject_kind.get(target["subject"], {})
        consumer = target["consumer"] if target["consumer"] != "none" else f"none ({target['note']})"
        lines.append(
            f"| `{target['subject']}` | {consumer} | "
            + " | ".join(str(by_kind.get(k, 0)) for k in kinds)
            + f" | {sum(by_kind.values())} |"
        )
    lines += [
        "",
        "The weights object store and the run-state KV bucket are written through `$O.` and `$KV.` subjects; "
        "the wrong-role operations below aim at them. The admin flood leaves them alone: a KV key holds only "
        "its latest value, so garbage written over the announced policy version would be refused by every "
        "reader but would also erase the announcement until the learner's next one: the run's owner destroying "
        "its own state, not input a consumer can defend against.",
    ]
    lines += [
        "",
        "## Rejects counted by the run (`bus.rejected.<reason>` in each role's metrics JSONL)",
        "",
        "| role | reason | predicted | counted | ok |",
        "|---|---|---|---|---|",
    ]
    for check in flood.reject_checks:
        for reason in sorted(set(check.expected) | set(check.counted)):
            predicted, counted = check.expected.get(reason, 0), check.counted.get(reason, 0)
            lines.append(
                f"| {check.role} | {reason} | {predicted} | {counted} | {'yes' if predicted == counted else '**NO**'} |"
            )
        lines.append(
            f"| {check.role} | **total** | {check.sent} | {sum(check.counted.values())} | "
            f"{'yes' if check.ok else '**NO**'} |"
        )
    for actor, (own, counted) in flood.actor_own_subjects.items():
        lines.append(
            f"\n{actor}: {own} sent to its own work subject, {counted} rejects counted (its own plus its "
            "share of the shared queue)."
        )
    lines += [
        "",
        "## Wrong-role operations (refused by the server's permissions, counted on the client)",
        "",
        "| role | operation | subject | attempts | permission violations | ok |",
        "|---|---|---|---|---|---|",
    ]
    for v in sent.violations:
        a = v.attempt
        lines.append(
            f"| {a.role} | {a.what} ({a.action}) | `{a.subject}` | {v.sent} | {v.refused} | "
            f"{'yes' if v.ok else '**NO**'} |"
        )
    total = sum(v.refused for v in sent.violations)
    lines += [
        "",
        f"{total} permission violations for {sum(v.sent for v in sent.violations)} attempts.",
        f"Publishes over the server's max_payload on a raw connection: {sent.server_oversized_refused} of "
        f"{sent.server_oversized_sent} refused by the server (reply: {'; '.join(sent.server_replies) or 'none'}).",
    ]
    if sent.other_errors:
        lines.append(f"Other errors on the wrong-role connections: {sent.other_errors[:5]}")
    lines += ["", "## Processes and training data", "", "| check | value | ok |", "|---|---|---|"]
    dead = [n for n, a in run.alive_after_flood.items() if not a]
    alive = run.alive_after_flood
    lines.append(
        f"| processes alive after the flood | {sum(alive.values())}/{len(alive)} | {'yes' if not dead else '**NO**'} |"
    )
    still = {n: a for n, a in run.alive_at_learner_end.items() if n != "learner"}
    lines.append(
        f"| other processes alive when the learner had taken its {run.summary.steps} steps | "
        f"{sum(still.values())}/{len(still)} | {'yes' if all(still.values()) else '**NO**'} |"
    )
    lines.append(f"| exit codes at the clean stop | {', '.join(f'{n} {c}' for n, c in run.exit_codes.items())} | |")
    lines.append(
        f"| flood ids in CompletedTrees | {flood.flood_ids_in_trees} | "
        f"{'yes' if not flood.flood_ids_in_trees else '**NO**'} |"
    )
    lines.append(
        f"| nodes generated for flood work items | {flood.nodes_from_flood_work} | "
        f"{'yes' if not flood.nodes_from_flood_work else '**NO**'} |"
    )
    lines.append(
        f"| nodes that reached the allocator's core for unknown trees | {flood.nodes_unknown_tree} | "
        f"{'yes' if not flood.nodes_unknown_tree else '**NO**'} |"
    )
    c = result.comparison
    if c is not None and result.baseline is not None:
        base = result.baseline.summary
        lines += [
            "",
            "## Against the same run undisturbed (same seed and config)",
            "",
            "| | flooded | undisturbed |",
            "|---|---|---|",
        ]
        for mode in ("greedy", "sampled"):
            if mode in c.heldout:
                h = c.heldout[mode]
                lines.append(
                    f"| held-out {mode} success ({run.summary.heldout_tasks} tasks) | {h['flooded']:.3f} | "
                    f"{h['undisturbed']:.3f} |"
                )
        lines.append(f"| final training loss | {_fmt(c.final_loss)} | {_fmt(c.baseline_final_loss)} |")
        lines.append(f"| mean training loss over the steps | {_fmt(c.mean_loss)} | {_fmt(c.baseline_mean_loss)} |")
        lines.append(f"| learner steps | {run.summary.steps} | {base.steps} |")
        lines.append(f"| wall time (s) | {run.summary.wall_seconds:.0f} | {base.wall_seconds:.0f} |")
        lines += [
            "",
            "| learner step | loss flooded | loss undisturbed | reward flooded | reward undisturbed |",
            "|---|---|---|---|---|",
        ]
        for i in range(max(len(run.summary.losses), len(base.losses))):
            lines.append(
                f"| {i + 1} | {_fmt(_at(run.summary.losses, i))} | {_fmt(_at(base.losses, i))} | "
                f"{_fmt(_at(run.summary.rewards, i), 3)} | {_fmt(_at(base.rewards, i), 3)} |"
            )
        lines += ["", "What the difference means:", ""] + [f"- {line}" for line in c.explanation]
    for note in result.notes:
        lines.append(f"\nNote: {note}")
    lines += ["", "Every check holds." if result.ok else "FAILED: " + "; ".join(result.failures())]
    return "\n".join(lines) + "\n"


def _at(values: Sequence[float], i: int) -> float | None:
    return values[i] if i < len(values) else None


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def write_flood_results(result: FloodResult, results_dir: Path | None = None) -> tuple[Path, Path]:
    from bench.runs import write_results

    payload = {**dataclasses.asdict(result), "ok": result.ok, "failures": result.failures()}
    return write_results("flood", payload, flood_markdown(result), results_dir)
