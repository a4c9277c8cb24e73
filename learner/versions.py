"""Policy versions across learner restarts: what a resumed learner may announce (pure core).

A version number names one set of weights for the whole run: actors stamp every token
with it and the staleness bound counts in it. So the announced versions must go strictly
up, also across a SIGKILL. A learner resumes from its newest checkpoint, which it wrote
before announcing that version; if the announcement also landed, the version is already
out and announcing it again would only repeat it. A checkpoint behind what was announced
(``training.checkpoint_every_steps`` > 1, or a lost checkpoint directory) cannot continue:
its next versions would give new numbers to old weights or old numbers to new weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tracerl.metrics import metrics_path, read_metrics

#: The learner's log of announced versions, one record each, across restarts.
WEIGHTS_METRICS = "learner_weights"


@dataclass(frozen=True)
class Publication:
    """One announced version: its number and the sha256 of its weights."""

    policy_version: int
    sha256: str


class VersionConflict(RuntimeError):
    """The learner's checkpoint disagrees with what the run has already announced."""


@dataclass(frozen=True)
class ResumePlan:
    # Put the resumed weights in the object store and the KV (actors see them).
    announce: bool
    # Append them to the weights log (a kill between the KV put and the log write leaves it short).
    record: bool


def resume_plan(ours: Publication, announced: Publication | None, recorded: Publication | None) -> ResumePlan:
    """What a learner resuming at ``ours`` does, given the version in the weights KV
    (``announced``) and the last one in its own log (``recorded``); either may be missing.

    Raises ``VersionConflict`` when either source is ahead of the checkpoint, or names the
    same version with other weights.
    """
    for source, seen in (("the weights KV", announced), ("the learner's weights log", recorded)):
        if seen is None:
            continue
        if seen.policy_version > ours.policy_version:
            raise VersionConflict(
                f"{source} already holds policy version {seen.policy_version}, but the newest checkpoint is "
                f"version {ours.policy_version}: resuming would announce versions that go back. Restore the "
                f"checkpoint of version {seen.policy_version} (checkpoints are only guaranteed for every "
                "announced version with training.checkpoint_every_steps: 1), or start a new run id."
            )
        if seen.policy_version == ours.policy_version and seen.sha256 != ours.sha256:
            raise VersionConflict(
                f"{source} holds policy version {seen.policy_version} with weights sha256 {seen.sha256[:16]}…, "
                f"but the checkpoint of that version has sha256 {ours.sha256[:16]}…: two policies under one "
                "version number. Start a new run id."
            )
    return ResumePlan(
        announce=announced is None or announced.policy_version < ours.policy_version,
        record=recorded is None or recorded.policy_version < ours.policy_version,
    )


def read_publications(run_dir: str | Path) -> list[Publication]:
    """Every version the learner's weights log records, in order."""
    return [
        Publication(int(r["policy_version"]), str(r["sha256"]))
        for r in read_metrics(metrics_path(run_dir, WEIGHTS_METRICS))
        if "policy_version" in r
    ]
