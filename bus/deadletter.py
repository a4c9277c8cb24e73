"""How a dead letter is described: the original bytes plus these headers.

A dead letter is never re-encoded as a protocol message, because the reason it is dead
is usually that it is not a valid one; the raw payload is kept byte for byte.
"""

from __future__ import annotations

REASON = "Tracerl-Dlq-Reason"
DETAIL = "Tracerl-Dlq-Detail"
SOURCE_SUBJECT = "Tracerl-Dlq-Source-Subject"
SOURCE_STREAM = "Tracerl-Dlq-Source-Stream"
SOURCE_SEQUENCE = "Tracerl-Dlq-Source-Sequence"
CONSUMER = "Tracerl-Dlq-Consumer"
ROLE = "Tracerl-Dlq-Role"

# Reason used when the server gave up redelivering (the handler failed max_deliver times).
MAX_DELIVERIES = "max_deliveries"

_DETAIL_LIMIT = 512


def dead_letter_headers(
    *,
    reason: str,
    detail: str,
    source_subject: str,
    source_stream: str = "",
    source_sequence: int | None = None,
    consumer: str = "",
    role: str = "",
) -> dict[str, str]:
    # Header values must be single-line; details come from exception text.
    flat_detail = " ".join(detail.split())[:_DETAIL_LIMIT]
    headers = {REASON: reason, DETAIL: flat_detail, SOURCE_SUBJECT: source_subject}
    if source_stream:
        headers[SOURCE_STREAM] = source_stream
    if source_sequence is not None:
        headers[SOURCE_SEQUENCE] = str(source_sequence)
    if consumer:
        headers[CONSUMER] = consumer
    if role:
        headers[ROLE] = role
    return headers
