"""Actor metrics arithmetic: cumulative counters in, per-interval rates out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counters:
    """Cumulative totals sampled at ``at`` (monotonic seconds)."""

    at: float
    tokens_generated: int = 0
    turns_generated: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    items_started: int = 0
    queue_wait_s_total: float = 0.0


@dataclass(frozen=True)
class Rates:
    interval_s: float
    tokens_per_s: float
    turns_per_s: float
    prefix_cache_hit_rate: float
    mean_queue_wait_s: float


def rates_between(before: Counters, after: Counters) -> Rates:
    """Rates over the interval; ratios with an empty denominator are 0, not NaN."""
    dt = max(after.at - before.at, 1e-9)
    prompt = after.prompt_tokens - before.prompt_tokens
    items = after.items_started - before.items_started
    return Rates(
        interval_s=dt,
        tokens_per_s=(after.tokens_generated - before.tokens_generated) / dt,
        turns_per_s=(after.turns_generated - before.turns_generated) / dt,
        prefix_cache_hit_rate=(after.cached_tokens - before.cached_tokens) / prompt if prompt > 0 else 0.0,
        mean_queue_wait_s=(after.queue_wait_s_total - before.queue_wait_s_total) / items if items > 0 else 0.0,
    )


def version_lag(latest_announced: int | None, serving: int) -> int:
    """How many versions the served policy is behind the newest announced one (never negative)."""
    if latest_announced is None:
        return 0
    return max(0, latest_announced - serving)


def queue_wait_s(issued_at: float, received_at: float) -> float:
    """Time a work item spent queued; clock skew between hosts can make it negative, so clamp."""
    return max(0.0, received_at - issued_at)


def interval_record(
    rates: Rates,
    *,
    latest_announced: int | None,
    policy_version: int,
    inflight_items: int,
    inflight_turns: int,
    items_completed: int,
    items_rejected: int,
    nodes_published: int,
    weights_loaded: int,
    weights_failures: dict[str, int],
    bus_counters: dict[str, int],
) -> dict[str, float | int]:
    """One metrics record: the interval's rates, the running totals, announced versions not
    loaded under ``weights_failed.<reason>``, and the bus client's counters under ``bus.``
    (``bus.rejected.<reason>`` counts messages refused unread)."""
    record: dict[str, float | int] = {
        "tokens_per_s": round(rates.tokens_per_s, 1),
        "turns_per_s": round(rates.turns_per_s, 2),
        "prefix_cache_hit_rate": round(rates.prefix_cache_hit_rate, 3),
        "queue_wait_s": round(rates.mean_queue_wait_s, 3),
        "version_lag": version_lag(latest_announced, policy_version),
        "policy_version": policy_version,
        "inflight_items": inflight_items,
        "inflight_turns": inflight_turns,
        "items_completed": items_completed,
        "items_rejected": items_rejected,
        "nodes_published": nodes_published,
        "weights_loaded": weights_loaded,
    }
    record.update({f"weights_failed.{reason}": count for reason, count in sorted(weights_failures.items())})
    record.update({f"bus.{name}": count for name, count in sorted(bus_counters.items())})
    return record
