"""Node ids: one per (work item, sampling, sample index, depth); the chain slot ignores the sampling."""

import pytest

from protocol.messages import chain_slot, node_id_for


def test_samplings_of_one_item_never_share_an_id_but_share_chain_slots():
    first = {node_id_for("s3-1.w7", "a1b2", k, d) for k in range(3) for d in (1, 2)}
    second = {node_id_for("s3-1.w7", "c3d4", k, d) for k in range(3) for d in (1, 2)}
    assert len(first) == len(second) == 6 and not first & second
    assert {chain_slot(i) for i in first} == {chain_slot(i) for i in second} == {0, 1, 2}


def test_a_work_id_with_slashes_still_yields_its_slot():
    assert chain_slot(node_id_for("odd/work/id", "x", 4, 2)) == 4


def test_an_id_made_elsewhere_is_a_slot_of_its_own():
    assert chain_slot("s0-0.w1.0.1") == "s0-0.w1.0.1"
    assert chain_slot("a/b/c/d") == "a/b/c/d"  # not a sample index and depth


def test_a_sampling_with_a_slash_is_refused():
    with pytest.raises(ValueError, match="sampling"):
        node_id_for("w1", "a/b", 0, 1)
