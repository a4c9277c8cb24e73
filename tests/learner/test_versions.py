"""What a resumed learner announces: exact answers for every relation between its
checkpoint, the weights KV and its own weights log."""

import pytest

from learner.versions import (
    WEIGHTS_METRICS,
    Publication,
    ResumePlan,
    read_publications,
    resume_plan,
)
from tracerl.metrics import MetricsWriter

OURS = Publication(6, "aa" * 32)


def test_a_fresh_run_announces_and_records_its_first_version():
    assert resume_plan(Publication(0, "00" * 32), None, None) == ResumePlan(0, announce=True, record=True)


def test_a_version_the_run_already_has_is_neither_announced_nor_recorded_again():
    # The chaos bench's case: killed after announcing 6, restarted from the checkpoint of 6.
    assert resume_plan(OURS, OURS, OURS) == ResumePlan(6, announce=False, record=False)


def test_killed_between_checkpoint_and_announcement_it_announces_the_checkpointed_version():
    five = Publication(5, "bb" * 32)
    assert resume_plan(OURS, five, five) == ResumePlan(6, announce=True, record=True)


def test_killed_between_the_kv_put_and_the_log_write_it_only_completes_the_log():
    assert resume_plan(OURS, OURS, Publication(5, "bb" * 32)) == ResumePlan(6, announce=False, record=True)


def test_an_emptied_kv_gets_the_version_again_without_a_second_log_record():
    assert resume_plan(OURS, None, OURS) == ResumePlan(6, announce=True, record=False)


@pytest.mark.parametrize(
    "announced, recorded, resumes_as",
    [
        # Killed after announcing 7 with checkpoints every few steps: the newest is of 6.
        (Publication(7, "cc" * 32), Publication(7, "cc" * 32), 8),
        (Publication(7, "cc" * 32), OURS, 8),
        (OURS, Publication(8, "cc" * 32), 9),
        (None, Publication(9, "cc" * 32), 10),
        # Its own version under other weights (someone else's): neither number is reused.
        (Publication(6, "dd" * 32), None, 7),
        (OURS, Publication(6, "dd" * 32), 7),
    ],
)
def test_a_checkpoint_behind_the_run_goes_on_under_the_next_unused_version(announced, recorded, resumes_as):
    assert resume_plan(OURS, announced, recorded) == ResumePlan(resumes_as, announce=True, record=True)


def test_the_weights_log_is_read_back_in_order_and_skips_other_records(tmp_path):
    writer = MetricsWriter(tmp_path, WEIGHTS_METRICS)
    writer.write({"policy_version": 0, "sha256": "x", "steps_done": 0})
    writer.write({"note": "not a publication"})
    writer.write({"policy_version": 1, "sha256": "y", "steps_done": 1})
    writer.close()
    assert read_publications(tmp_path) == [Publication(0, "x"), Publication(1, "y")]
    assert read_publications(tmp_path / "elsewhere") == []
