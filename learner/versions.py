"""Policy versions across learner restarts: what a resumed learner announces (pure core).

A version number names one set of weights for the whole run: actors stamp every token
with it and the staleness bound counts in it. So the announced versions must go strictly
up, also across a SIGKILL. A learner resumes from its newest checkpoint, which it wrote
before announcing that version; if the announcement also landed, the version is already
out and announcing it again would only repeat it.

A checkpoint can also be *behind* the run: with ``training.checkpoint_every_steps`` > 1 the
versions announced after the last checkpoint die with the learner. The learner then rewinds:
it goes on from the checkpoint's weights under the next unused number. Versions still only go
up; tokens sampled by the lost versions keep their behaviour log-probabilities, so the
importance weights still correct for them, and the staleness bound counts them as older than
the rewound policy, which errs on the side of dropping.
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


@dataclass(frozen=True)
class ResumePlan:
    # The version the learner continues under: its checkpoint's, or the next unused one.
    policy_version: int
    # Put the resumed weights in the object store and the KV (actors see them).
    announce: bool
    # Append them to the weights log (a kill between the KV put and the log write leaves it short).
    record: bool


def resume_plan(ours: Publication, announced: Publication | None, recorded: Publication | None) -> ResumePlan:
    """What a learner resuming at checkpoint ``ours`` does, given the version in the weights KV
    (``announced``) and the last one in its own log (``recorded``); either may be missing.

    If either source is ahead of the checkpoint, or names the checkpoint's version with other
    weights, the checkpoint's weights go out under the next version after everything seen.
    """
    seen = [p for p in (announced, recorded) if p is not None]
    if any(
        p.policy_version > ours.policy_version or (p.policy_version == ours.policy_version and p != ours) for p in seen
    ):
        return ResumePlan(max(p.policy_version for p in seen) + 1, announce=True, record=True)
    return ResumePlan(
        ours.policy_version,
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
