"""What a resumed learner announces: exact answers for every relation between its
checkpoint, the weights KV and its own weights log."""

import pytest

from learner.versions import (
    WEIGHTS_METRICS,
    Publication,
    ResumePlan,
    VersionConflict,
    read_publications,
    resume_plan,
)
from tracerl.metrics import MetricsWriter

OURS = Publication(6, "aa" * 32)


def test_a_fresh_run_announces_and_records_its_first_version():
    assert resume_plan(Publication(0, "00" * 32), None, None) == ResumePlan(announce=True, record=True)


def test_a_version_the_run_already_has_is_neither_announced_nor_recorded_again():
    # The chaos bench's case: killed after announcing 6, restarted from the checkpoint of 6.
    assert resume_plan(OURS, OURS, OURS) == ResumePlan(announce=False, record=False)


def test_killed_between_checkpoint_and_announcement_it_announces_the_checkpointed_version():
    five = Publication(5, "bb" * 32)
    assert resume_plan(OURS, five, five) == ResumePlan(announce=True, record=True)


def test_killed_between_the_kv_put_and_the_log_write_it_only_completes_the_log():
    assert resume_plan(OURS, OURS, Publication(5, "bb" * 32)) == ResumePlan(announce=False, record=True)


def test_an_emptied_kv_gets_the_version_again_without_a_second_log_record():
    assert resume_plan(OURS, None, OURS) == ResumePlan(announce=True, record=False)


@pytest.mark.parametrize(
    "announced, recorded, source, says",
    [
        (Publication(7, "cc" * 32), OURS, "the weights KV", "already holds policy version 7"),
        (OURS, Publication(8, "cc" * 32), "the learner's weights log", "already holds policy version 8"),
        (None, Publication(9, "cc" * 32), "the learner's weights log", "newest checkpoint is version 6"),
        (Publication(6, "dd" * 32), None, "the weights KV", "two policies under one version number"),
        (OURS, Publication(6, "dd" * 32), "the learner's weights log", "sha256 dddddddddddddddd"),
    ],
)
def test_a_run_ahead_of_the_checkpoint_or_with_other_weights_under_its_version_is_refused(
    announced, recorded, source, says
):
    with pytest.raises(VersionConflict) as err:
        resume_plan(OURS, announced, recorded)
    assert str(err.value).startswith(source) and says in str(err.value)


def test_the_weights_log_is_read_back_in_order_and_skips_other_records(tmp_path):
    writer = MetricsWriter(tmp_path, WEIGHTS_METRICS)
    writer.write({"policy_version": 0, "sha256": "x", "steps_done": 0})
    writer.write({"note": "not a publication"})
    writer.write({"policy_version": 1, "sha256": "y", "steps_done": 1})
    writer.close()
    assert read_publications(tmp_path) == [Publication(0, "x"), Publication(1, "y")]
    assert read_publications(tmp_path / "elsewhere") == []
