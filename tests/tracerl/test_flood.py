"""The flood bench's pure parts: hostile messages from a seed, the permission table, and the
reconciliation of what was sent against what the run counted."""

import math
import random
import re

import msgspec
import pytest

from bench.flood import RunSummary, compare_runs, difference_se, first_divergent_step, mean_over
from bench.hostile import (
    FLOOD_ID_PREFIX,
    KINDS,
    FloodMessage,
    RejectCheck,
    WrongRoleAttempt,
    attempt_payload,
    counted_rejects,
    expected_rejects,
    hostile_payload,
    kind_counts,
    kinds_for,
    padded,
    parse_violation,
    plan_flood,
    reconcile_rejects,
    reconcile_violations,
    rejection_reason,
    run_targets,
    sent_by_subject_and_kind,
    split_evenly,
    template,
    wrong_role_attempts,
)
from bus.permissions import role_permissions
from protocol import MESSAGE_TYPES, ProtocolError, Subjects, TurnNode, WeightsAnnouncement, decode, encode, plain_body

RUN = "r1"
S = Subjects(RUN)
LIMIT = 4096

# The reason a consumer gives for each kind (protocol.codec). Random bytes are refused as
# "malformed" unless they happen to be one msgpack value, which is then no envelope.
EXPECTED_REASON: dict[str, tuple[str, ...]] = {
    "random_bytes": ("malformed", "bad_envelope"),
    "truncated": ("malformed",),
    "oversized": ("oversized",),
    "wrong_type": ("schema_violation",),
    "missing_field": ("schema_violation",),
    "extra_field": ("schema_violation",),
    "bad_envelope": ("bad_envelope",),
    "wrong_version": ("unsupported_version",),
    "wrong_schema": ("wrong_schema",),
    "wrong_run": ("wrong_run",),
    "invalid_value": ("schema_violation",),
}


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return i == len(want) - 1 and len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


def permitted(role: str, action: str, subject: str, run_ids: list[str]) -> bool:
    """Whether ``role`` may publish to / subscribe to ``subject`` under bus.permissions."""
    perms = role_permissions(role, run_ids)
    allowed = perms.publish if action == "publish" else perms.subscribe
    return any(subject_matches(pattern, subject) for pattern in allowed)


def test_split_evenly_gives_the_remainder_to_the_first_names():
    assert split_evenly(10, ["a", "b", "c"]) == {"a": 4, "b": 3, "c": 3}
    assert split_evenly(2, ["a", "b", "c"]) == {"a": 1, "b": 1, "c": 0}


def test_kind_counts_cap_the_oversized_and_spread_the_rest():
    counts = kind_counts(100, KINDS, oversized_cap=4)
    assert counts["oversized"] == 4 and sum(counts.values()) == 100
    # 96 over the 10 other kinds: 6 of them get 10, 4 get 9, in KINDS order.
    others = [counts[k] for k in KINDS if k != "oversized"]
    assert others == [10, 10, 10, 10, 10, 10, 9, 9, 9, 9]
    assert kind_counts(3, KINDS, oversized_cap=4)["oversized"] == 3
    no_invalid = kinds_for(WeightsAnnouncement)
    assert "invalid_value" not in no_invalid and kind_counts(21, no_invalid, 1) == {
        "random_bytes": 3,
        "truncated": 3,
        "oversized": 1,
        "wrong_type": 2,
        "missing_field": 2,
        "extra_field": 2,
        "bad_envelope": 2,
        "wrong_version": 2,
        "wrong_schema": 2,
        "wrong_run": 2,
    }


def test_run_targets_cover_every_subject_of_the_run():
    targets = run_targets(S, ["actor-0", "actor-1"])
    assert [(t.subject, t.consumer) for t in targets] == [
        ("tracerl.r1.nodes.flood-actor", "allocator"),
        ("tracerl.r1.work.shared", "actors"),
        ("tracerl.r1.work.actor.actor-0", "actor:actor-0"),
        ("tracerl.r1.work.actor.actor-1", "actor:actor-1"),
        ("tracerl.r1.trees", "learner"),
        ("tracerl.r1.weights", ""),
        ("tracerl.r1.dlq", ""),
    ]
    assert [t.subject for t in targets if t.core] == ["tracerl.r1.weights"]


@pytest.mark.parametrize("cls", sorted(MESSAGE_TYPES.values(), key=lambda c: c.SCHEMA), ids=lambda c: c.__name__)
def test_templates_are_valid_messages_of_the_run_with_flood_ids(cls):
    message = template(cls, RUN, random.Random(0))
    assert decode(encode(message), cls, run_id=RUN) == message
    ids = [
        v for k, v in msgspec.structs.asdict(message).items() if k.endswith(("_id", "_name")) and k != "run_id" and v
    ]
    assert ids and all(i.startswith(FLOOD_ID_PREFIX) for i in ids)


@pytest.mark.parametrize("cls", sorted(MESSAGE_TYPES.values(), key=lambda c: c.SCHEMA), ids=lambda c: c.__name__)
def test_every_kind_is_refused_for_the_reason_it_is_meant_to_provoke(cls):
    for kind in kinds_for(cls):
        for seed in range(25):
            payload = hostile_payload(kind, cls, RUN, random.Random(seed), LIMIT)
            assert rejection_reason(payload, cls, RUN, LIMIT) in EXPECTED_REASON[kind], (kind, seed)


@pytest.mark.parametrize("cls", sorted(MESSAGE_TYPES.values(), key=lambda c: c.SCHEMA), ids=lambda c: c.__name__)
def test_wrong_types_and_missing_fields_reach_every_field(cls):
    fields = set(plain_body(template(cls, RUN, random.Random(0))))
    for kind in ("wrong_type", "missing_field"):
        hit = set()
        for seed in range(400):
            payload = hostile_payload(kind, cls, RUN, random.Random(seed), LIMIT)
            try:
                decode(payload, cls)
            except ProtocolError as err:  # its detail names the field, "<schema>.<field>..."
                hit.add(re.match(rf"{cls.SCHEMA}\.(\w+)", err.detail)[1])
        assert hit == fields, (kind, fields - hit)


def test_padded_messages_are_just_over_the_limit():
    rng = random.Random(3)
    for cls in MESSAGE_TYPES.values():
        for limit in (100, 5000, 70_000):
            size = len(padded(template(cls, RUN, rng), limit, rng))
            assert limit < size <= limit + 4096 + 16


def test_a_plan_is_a_function_of_its_seed_and_hits_each_subject_as_counted():
    targets = run_targets(S, ["actor-0"])
    plan = plan_flood(7, RUN, targets, 601, LIMIT, oversized_per_subject=2)
    assert plan == plan_flood(7, RUN, targets, 601, LIMIT, oversized_per_subject=2)
    assert [m.payload for m in plan] != [m.payload for m in plan_flood(8, RUN, targets, 601, LIMIT, 2)]
    sent = sent_by_subject_and_kind(plan)
    assert {s: sum(k.values()) for s, k in sent.items()} == {
        "tracerl.r1.nodes.flood-actor": 101,
        "tracerl.r1.work.shared": 100,
        "tracerl.r1.work.actor.actor-0": 100,
        "tracerl.r1.trees": 100,
        "tracerl.r1.weights": 100,
        "tracerl.r1.dlq": 100,
    }
    assert sent["tracerl.r1.nodes.flood-actor"] == kind_counts(101, kinds_for(TurnNode), 2)
    assert [m.subject for m in plan[:6]] != sorted(m.subject for m in plan[:6])  # shuffled, not by subject
    with pytest.raises(ValueError, match="cannot reach"):
        plan_flood(0, RUN, targets, 5, LIMIT, 0)


def test_expected_rejects_sum_the_consumed_subjects_per_role_and_refuse_a_valid_message():
    targets = run_targets(S, ["actor-0", "actor-1"])
    plan = plan_flood(1, RUN, targets, 700, LIMIT, oversized_per_subject=3)
    expected = expected_rejects(plan, targets, RUN, LIMIT)
    assert {g: sum(r.values()) for g, r in expected.items()} == {"actors": 300, "allocator": 100, "learner": 100}
    assert expected["allocator"]["oversized"] == 3 and expected["actors"]["oversized"] == 9
    assert expected["learner"]["wrong_run"] == kind_counts(100, KINDS, 3)["wrong_run"]
    valid = FloodMessage(S.nodes_from("flood-actor"), "valid", encode(template(TurnNode, RUN, random.Random(0))))
    with pytest.raises(ValueError, match="would be accepted"):
        expected_rejects([valid], targets, RUN, LIMIT)


def test_counted_rejects_sum_the_actors_and_ignore_other_counters():
    records = {
        "allocator": {"bus.rejected.malformed": 3, "bus.handled": 50, "time": 1.0},
        "learner": {"bus.handled": 4},
        "actor-actor-0": {"bus.rejected.malformed": 1, "bus.rejected.oversized": 0},
        "actor-actor-1": {"bus.rejected.malformed": 1, "bus.rejected.wrong_run": 2},
    }
    assert counted_rejects(records) == {
        "actors": {"malformed": 2, "wrong_run": 2},
        "allocator": {"malformed": 3},
        "learner": {},
    }


def test_reconcile_rejects_reports_each_role_and_the_differences():
    checks = reconcile_rejects(
        {"allocator": {"malformed": 3, "wrong_run": 1}, "learner": {"malformed": 2}},
        {
            "allocator": {"malformed": 3, "wrong_run": 1},
            "learner": {"malformed": 1, "oversized": 1},
            "actors": {"malformed": 4},
        },
    )
    assert checks == [
        RejectCheck("actors", 0, {}, {"malformed": 4}),
        RejectCheck("allocator", 4, {"malformed": 3, "wrong_run": 1}, {"malformed": 3, "wrong_run": 1}),
        RejectCheck("learner", 2, {"malformed": 2}, {"malformed": 1, "oversized": 1}),
    ]
    assert [c.ok for c in checks] == [False, True, False]
    assert checks[2].differences() == {"malformed": -1, "oversized": 1}


def test_subject_matching_follows_nats_wildcards():
    assert subject_matches("a.*.c", "a.b.c") and subject_matches("a.>", "a.b.c") and subject_matches("a.b", "a.b")
    assert not subject_matches("a.>", "a") and not subject_matches("a.b", "a.b.c")
    assert not subject_matches("a.*", "a.b.c") and not subject_matches("a.b.c", "a.b")


def test_every_wrong_role_attempt_is_outside_that_roles_permissions():
    attempts = wrong_role_attempts(S)
    assert {a.role for a in attempts} == {"actor", "allocator", "learner"}
    assert {a.action for a in attempts} == {"publish", "subscribe"}
    for a in attempts:
        assert not permitted(a.role, a.action, a.subject, [RUN]), a
        assert permitted("admin", a.action, a.subject, [RUN])
    # What each role does in a run is permitted: the table is not vacuously denied.
    assert permitted("actor", "publish", S.nodes_from("a1"), [RUN]) and permitted(
        "actor", "subscribe", S.weights_announce, [RUN]
    )
    assert permitted("allocator", "publish", S.trees, [RUN])
    assert permitted("learner", "publish", f"$O.{S.weights_bucket}.C.abc", [RUN])
    assert permitted("learner", "publish", f"$KV.{S.state_bucket}.{Subjects.POLICY_VERSION_KEY}", [RUN])


def test_wrong_role_publishes_carry_a_well_formed_message_where_the_subject_takes_one():
    attempts = {(a.role, a.subject): a for a in wrong_role_attempts(S)}
    rng = random.Random(0)
    announce = attempt_payload(attempts[("actor", S.weights_announce)], S, rng)
    assert decode(announce, WeightsAnnouncement, run_id=RUN).policy_version == 10**6
    kv = attempts[("actor", f"$KV.{S.state_bucket}.{Subjects.POLICY_VERSION_KEY}")]
    assert decode(attempt_payload(kv, S, rng), WeightsAnnouncement, run_id=RUN)
    purge = next(a for a in attempts.values() if "PURGE" in a.subject)
    assert attempt_payload(purge, S, rng) == b""


def test_permission_violations_are_parsed_and_reconciled_per_attempt():
    assert parse_violation('nats: permissions violation for publish to "tracerl.r1.trees"') == (
        "publish",
        "tracerl.r1.trees",
    )
    assert parse_violation('nats: Permissions Violation for Subscription to "TRACERL.R1.NODES"') == (
        "subscribe",
        "tracerl.r1.nodes",
    )
    assert parse_violation("nats: timeout") is None
    attempts = [
        WrongRoleAttempt("actor", "publish", "$JS.API.STREAM.DELETE.TRACERL_r1_NODES", "delete"),
        WrongRoleAttempt("actor", "subscribe", "tracerl.r1.trees", "read"),
        WrongRoleAttempt("learner", "publish", "tracerl.r1.nodes.flood-actor", "nodes"),
    ]
    observed = {
        "actor": [("publish", "$js.api.stream.delete.tracerl_r1_nodes")] * 3 + [("subscribe", "tracerl.r1.trees")],
        "learner": [("publish", "tracerl.r1.nodes.flood-actor")] * 3,
    }
    checks = reconcile_violations(attempts, 3, observed)
    assert [(c.sent, c.refused, c.ok) for c in checks] == [(3, 3, True), (3, 1, False), (3, 3, True)]


def _summary(name, losses, tasks, completed, greedy=None, sampled=None, step_seconds=None, empty=()):
    return RunSummary(
        name=name,
        run_dir=name,
        flooded=name == "f",
        steps=len(losses),
        finished=True,
        wall_seconds=100.0,
        losses=losses,
        rewards=[0.5] * len(losses),
        step_seconds=step_seconds or [10.0] * len(losses),
        heldout_greedy=greedy,
        heldout_sampled=sampled,
        heldout_tasks=100 if greedy is not None else 0,
        step_tasks=tasks,
        step_completed_at=completed,
        empty_steps=list(empty),
        load_average=(1.0, 2.0, 3.0),
    )


def test_divergence_step_standard_error_and_step_means():
    assert first_divergent_step({0: ["a", "b"], 1: ["c"]}, {0: ["b", "a"], 1: ["c"]}) is None
    assert first_divergent_step({0: ["a"], 1: ["c"], 2: ["d"]}, {0: ["a"], 1: ["e"]}) == 1
    assert first_divergent_step({0: ["a"]}, {0: ["a"], 1: ["b"]}) == 1
    assert difference_se(0.5, 0.5, 100) == pytest.approx(math.sqrt(0.005))
    assert difference_se(0.0, 1.0, 10) == 0.0
    assert mean_over([1.0, 2.0, 3.0, 4.0], 2, 3) == 2.5 and mean_over([1.0], 2, 3) is None


def test_comparison_explains_a_divergence_before_the_flood_and_noise_sized_gaps():
    # The flood began at t=30: step 2 of the flooded run is the first one completed under it.
    flooded = _summary(
        "f",
        [0.5, 0.4, 0.0],
        {0: ["a"], 1: ["b"], 2: ["c"]},
        {0: 10.0, 1: 20.0, 2: 40.0},
        greedy=0.30,
        sampled=0.20,
        step_seconds=[10.0, 14.0, 12.0],
    )
    base = _summary(
        "b",
        [0.5, 0.45, 0.35],
        {0: ["a"], 1: ["x"], 2: ["y"]},
        {0: 11.0, 1: 21.0, 2: 41.0},
        greedy=0.27,
        sampled=0.40,
        step_seconds=[10.0, 9.0, 11.0],
    )
    c = compare_runs(flooded, base, flood_steps=(1, 2), flood_started_at=30.0, accepted_flood_messages=0)
    assert c.first_divergent_allocator_step == 1 and c.diverged_before_flood is True
    assert c.final_loss == 0.0 and c.baseline_final_loss == 0.35
    assert c.mean_loss == pytest.approx(0.3) and c.baseline_mean_loss == pytest.approx(1.3 / 3)
    assert c.step_seconds_during_flood == 13.0 and c.baseline_step_seconds_same_steps == 10.0
    assert c.heldout["greedy"]["difference"] == pytest.approx(0.03)
    text = " ".join(c.explanation)
    assert "No flood message reached training" in text and "had parted before the flood began" in text
    assert "first step completed under the flood was 2" in text and "steps with zero loss 1 vs 0" in text
    # 3 points on 100 tasks is within noise; 20 points is not.
    assert "+3.0 points" in text and "within two standard errors" in text
    assert "-20.0 points" in text and "outside two standard errors" in text
    assert "15-minute load average of 3.0 vs 3.0" in text
    late = compare_runs(flooded, base, (1, 2), flood_started_at=15.0, accepted_flood_messages=2)
    assert late.diverged_before_flood is False
    assert "sampled while or after the flood" in " ".join(late.explanation)
    assert "2 flood message(s) reached" in late.explanation[0]


def test_comparison_names_steps_a_run_closed_empty():
    flooded = _summary("f", [0.1, 0.2], {2: ["c"], 3: ["d"]}, {2: 50.0, 3: 60.0}, empty=[0, 1])
    base = _summary("b", [0.1, 0.2], {0: ["a"], 1: ["b"]}, {0: 5.0, 1: 6.0})
    c = compare_runs(flooded, base, (1, 1), flood_started_at=55.0, accepted_flood_messages=0)
    assert c.first_divergent_allocator_step == 0 and c.diverged_before_flood is True
    assert any("flooded run, allocator step(s) 0, 1 closed empty" in line for line in c.explanation)
