"""Who is in the broadcast group at each version (``weightsync.membership``), by hand."""

from __future__ import annotations

from protocol import BroadcastJoin, Heartbeat
from tests.heartbeats import idle_heartbeat
from weightsync.membership import EpochPlan, plan_epoch, split_check_ins, wanted_members

RUN = "r1"
TIMEOUT = 60.0


def join(actor_id: str, at: float) -> BroadcastJoin:
    return BroadcastJoin(run_id=RUN, actor_id=actor_id, sent_at=at)


def beat(actor_id: str, at: float) -> Heartbeat:
    return idle_heartbeat(RUN, actor_id, at)


def test_wanted_are_the_live_actors_that_asked_sorted_by_id():
    joins = {a: join(a, 10.0) for a in ("b", "a", "c", "d")}
    beats = {"b": beat("b", 95.0), "a": beat("a", 40.0), "c": beat("c", 39.0), "e": beat("e", 99.0)}
    # now = 100: a's beat is 60 s old (live), c's 61 s (gone), d has none, e never asked.
    assert wanted_members(joins, beats, {}, 100.0, TIMEOUT) == ("a", "b")


def test_an_actor_left_out_is_wanted_again_only_once_it_asks_after():
    beats = {"a": beat("a", 100.0), "b": beat("b", 100.0)}
    left_out = {"a": 50.0, "b": 50.0}
    joins = {"a": join("a", 50.0), "b": join("b", 50.5)}
    assert wanted_members(joins, beats, left_out, 100.0, TIMEOUT) == ("b",)


def test_plan_keeps_a_group_with_the_same_members_and_forms_one_otherwise():
    assert plan_epoch(("a", "b"), ("a", "b")) == EpochPlan("keep", ("a", "b"))
    assert plan_epoch(("a", "b"), ("a", "b", "c")) == EpochPlan("form", ("a", "b", "c"))  # a late joiner
    assert plan_epoch(("a", "b"), ("b",)) == EpochPlan("form", ("b",))  # a member gone
    assert plan_epoch(None, ("a", "b")) == EpochPlan("form", ("a", "b"))  # no working group
    assert plan_epoch(("a",), ()) == EpochPlan("none")
    assert plan_epoch(None, ()) == EpochPlan("none")


def test_check_ins_split_in_member_order():
    assert split_check_ins(("a", "b", "c"), ["c", "a", "x"]) == (("a", "c"), ("b",))
    assert split_check_ins(("a",), []) == ((), ("a",))
