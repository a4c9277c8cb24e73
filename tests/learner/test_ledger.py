"""The learner's ack bookkeeping: which trees to ack after a step, which deliveries to skip."""

import pytest

from learner.ledger import AckLedger, Arrival, TrainedTrees, keep_alive_interval_s


def _ledger(trained: list[str] = (), keep: int = 100) -> AckLedger:
    record = TrainedTrees(keep)
    record.add(trained)
    return AckLedger(record)


def test_trees_of_a_step_are_acked_only_after_the_checkpoint_that_holds_it():
    ledger = _ledger()
    assert [ledger.arrive(t) for t in ("a", "b", "c")] == [Arrival.NEW] * 3
    ledger.step_taken(["a", "b"])
    ledger.trained.add(["a", "b"])  # what the trainer does when it takes the step
    assert ledger.held() == {"a", "b", "c"}
    assert ledger.checkpointed() == ["a", "b"]
    assert ledger.held() == {"c"}
    assert ledger.checkpointed() == []  # a second checkpoint has nothing new to ack


def test_steps_between_checkpoints_are_acked_together_at_the_next():
    ledger = _ledger()
    for tree_id in ("a", "b", "c"):
        ledger.arrive(tree_id)
    ledger.step_taken(["a"])
    ledger.step_taken(["b"])
    assert ledger.held() == {"a", "b", "c"}
    assert ledger.checkpointed() == ["a", "b"]


def test_a_skipped_step_acks_its_trees_at_once_and_they_were_not_trained():
    ledger = _ledger()
    ledger.arrive("a")
    ledger.arrive("b")
    assert ledger.step_skipped(["a", "b"]) == ["a", "b"]
    assert ledger.held() == set()
    assert "a" not in ledger.trained


def test_on_resume_a_redelivered_tree_the_checkpoint_holds_is_skipped_and_the_rest_trained():
    # The predecessor checkpointed a step with s0-0 and s0-1 and died before its acks
    # arrived; s1-0 and s1-1 were buffered and never trained.
    ledger = _ledger(trained=["s0-0", "s0-1"])
    redelivered = ["s1-0", "s0-0", "s1-1", "s0-1"]
    assert [ledger.arrive(t) for t in redelivered] == [Arrival.NEW, Arrival.TRAINED, Arrival.NEW, Arrival.TRAINED]
    assert ledger.held() == {"s1-0", "s1-1"}


def test_a_second_delivery_of_a_held_tree_is_not_buffered_again():
    ledger = _ledger()
    assert ledger.arrive("a") is Arrival.NEW
    assert ledger.arrive("a") is Arrival.HELD
    ledger.step_taken(["a"])
    ledger.trained.add(["a"])
    # Trained but not yet checkpointed: still held, not "already trained" (its ack is pending).
    assert ledger.arrive("a") is Arrival.HELD
    assert ledger.checkpointed() == ["a"]
    assert ledger.arrive("a") is Arrival.TRAINED


def test_at_a_stop_the_unstarted_trees_are_handed_back_and_the_trained_ones_are_not():
    ledger = _ledger()
    for tree_id in ("c", "a", "b"):
        ledger.arrive(tree_id)
    ledger.step_taken(["a"])
    assert ledger.unstarted() == ["b", "c"]
    assert ledger.held() == {"a"}


def test_trained_trees_keep_the_newest_ids_in_order():
    trained = TrainedTrees(keep=3)
    trained.add(["a", "b", "c"])
    trained.add(["a", "d"])  # "a" again: it becomes the newest
    assert trained.ids() == ["c", "a", "d"]
    assert "b" not in trained and len(trained) == 3
    with pytest.raises(ValueError, match="keep"):
        TrainedTrees(keep=0)


def test_keep_alive_fits_three_signals_in_one_ack_wait():
    assert keep_alive_interval_s(30.0) == 10.0
    assert keep_alive_interval_s(2.0) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        keep_alive_interval_s(0.0)
