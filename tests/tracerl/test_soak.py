"""The soak bench's pure core: Theil-Sen growth after a warm-up, checked against hand-computed
slopes, and a leak judge that flags a leaking series and passes a flat noisy one."""

from __future__ import annotations

import json
import math
import random

import pytest

from bench.soak import (
    Growth,
    Sample,
    SoakOptions,
    growth_after_warmup,
    hours_to_cap,
    judge_series,
    rejudged,
    stream_bytes,
    summarise,
    theil_sen_slope,
    verdict_failures,
    write_soak_results,
)


def test_theil_sen_slope_matches_hand_computed_medians() -> None:
    assert theil_sen_slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    # Pairs (0,1): 0, (0,2): 1.5, (1,2): 3; the median is 1.5.
    assert theil_sen_slope([0, 1, 2], [0, 0, 3]) == pytest.approx(1.5)
    # Order of the points does not matter; pairs with the same x are left out.
    assert theil_sen_slope([2, 0, 1, 1], [3, 0, 0, 9]) == pytest.approx(theil_sen_slope([0, 1, 2, 1], [0, 0, 3, 9]))
    assert theil_sen_slope([5, 10], [4, 4]) == 0.0
    with pytest.raises(ValueError):
        theil_sen_slope([1], [1])
    with pytest.raises(ValueError):
        theil_sen_slope([2, 2, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        theil_sen_slope([1, 2], [1])


@pytest.mark.parametrize("step_at", [1, 10, 20, 29])
def test_one_step_up_away_from_the_middle_of_the_window_is_no_growth(step_at: int) -> None:
    # 31 samples, one step of 50 at ``step_at``: away from the middle fewer than half the pairs
    # cross the step (220 of 465 at 20, 30 at 1), so the median pairwise slope is 0; right in the
    # middle 240 of 465 would. Least squares reads the same steps as 0.3-2.2 a sample.
    xs = list(range(31))
    ys = [100.0 if x < step_at else 150.0 for x in xs]
    assert theil_sen_slope(xs, ys) == 0.0
    # A steady leak of the same total, a step every sample, reads as itself.
    leak = [100.0 + 50.0 * x / 30 for x in xs]
    assert theil_sen_slope(xs, leak) == pytest.approx(50.0 / 30)


def test_memory_that_settles_inside_the_window_is_not_judged_as_growth_but_a_leak_and_a_late_leak_are() -> None:
    minutes = range(31)
    # 3,000 rising to a plateau of 3,500 by minute 12 (as a vLLM actor's caches fill on a loaded
    # machine), then flat: the whole window rises, the later half (minutes 15-30) does not.
    settling = [(60.0 * m, 3000 + 500 * min(m, 12) / 12) for m in minutes]
    growth = growth_after_warmup("rss_bytes.actor-0", settling, 0)
    assert growth is not None and growth.per_hour > 0
    assert growth.later_half_per_hour == 0.0 and growth.lasting_per_hour == 0.0
    assert judge_series(growth, 0.10, {}).ok
    # A steady leak of 1,000 an hour reads the same over both.
    leak = growth_after_warmup("rss_bytes.actor-0", [(60.0 * m, 3000 + 1000 * m / 60) for m in minutes], 0)
    assert leak is not None
    assert leak.per_hour == pytest.approx(1000.0) and leak.later_half_per_hour == pytest.approx(1000.0)
    assert leak.relative_per_hour == pytest.approx(1000.0 / leak.level)
    # A leak that starts at minute 15: the later half reads all of it, the whole window less, and
    # the smaller (1,800 an hour, 0.56 of the level) still fails a bound of a tenth of the level.
    late = growth_after_warmup("rss_bytes.actor-0", [(60.0 * m, 3000 + 60 * max(0, m - 15)) for m in minutes], 0)
    assert late is not None and late.later_half_per_hour == pytest.approx(3600.0)
    assert 0 < late.per_hour < 3600.0 and late.lasting_per_hour == late.per_hour
    assert late.relative_per_hour == pytest.approx(1800.0 / late.level) and not judge_series(late, 0.10, {}).ok
    # Too few later points to take a slope: the whole window's alone.
    assert Growth("s", 3, 10.0, 10.0, 5.0).lasting_per_hour == 5.0


def test_a_long_series_is_thinned_before_its_pairs_are_taken() -> None:
    xs = [float(x) for x in range(4000)]
    assert theil_sen_slope(xs, [3.0 * x + 7 for x in xs]) == pytest.approx(3.0)


def test_growth_leaves_the_warm_up_out_and_is_per_hour_relative_to_the_level() -> None:
    # A start-up climb, then flat: no growth after a 60 s warm-up.
    flat = growth_after_warmup("rss_bytes.learner", [(0, 100), (60, 200), (120, 200), (180, 200)], 60)
    assert flat == Growth("rss_bytes.learner", 3, 200.0, 200.0, 0.0, later_half_per_hour=0.0)
    assert flat.relative_per_hour == 0.0
    # 1000 + t/3.6: 1000 per hour; level at t = 600..2400 is 1000 + 1500/3.6.
    points = [(t, 1000 + t / 3.6) for t in (0, 600, 1200, 1800, 2400)]
    leak = growth_after_warmup("rss_bytes.actor-0", points, 600)
    assert leak is not None and leak.points == 4
    assert leak.per_hour == pytest.approx(1000.0)
    assert leak.level == pytest.approx(1000 + 1500 / 3.6)
    assert leak.relative_per_hour == pytest.approx(1000 / (1000 + 1500 / 3.6))
    # Too few points after the warm-up say nothing.
    assert growth_after_warmup("x", [(0, 1), (10, 2), (20, 3)], 10) is None
    # From nothing, any growth is infinitely relative.
    assert Growth("s", 3, 0.0, 0.0, 5.0).relative_per_hour == math.inf
    assert Growth("s", 3, 0.0, 0.0, 0.0).relative_per_hour == 0.0


def _series(rng: random.Random, minutes: int, level: float, relative_per_hour: float, noise: float):
    return [
        (60.0 * m, level * (1 + relative_per_hour * m / 60) * (1 + rng.gauss(0, noise))) for m in range(minutes + 1)
    ]


def test_the_judge_flags_a_leaking_series_and_passes_a_flat_noisy_one() -> None:
    rng = random.Random(7)
    # 60 minutes sampled each minute, 10 minutes of warm-up, a 10 %/h limit.
    leaking = growth_after_warmup("rss_bytes.allocator", _series(rng, 60, 3e8, 0.30, 0.02), 600)
    flat = growth_after_warmup("rss_bytes.allocator", _series(rng, 60, 3e8, 0.0, 0.02), 600)
    assert leaking is not None and flat is not None
    assert not judge_series(leaking, 0.10, {}).ok and leaking.relative_per_hour == pytest.approx(0.26, abs=0.05)
    # The later half has half the points: its slope wobbles twice as far, and the smaller of the two can too.
    assert judge_series(flat, 0.10, {}).ok and abs(flat.relative_per_hour) < 0.06
    # The same: a leak of 1 descriptor a minute on 100 is caught; a flat count that wobbles by one is not.
    fds_leak = growth_after_warmup("open_fds.actor-0", [(60.0 * m, 100 + m) for m in range(31)], 300)
    fds_flat = growth_after_warmup("open_fds.actor-0", [(60.0 * m, 100 + m % 2) for m in range(31)], 300)
    assert fds_leak is not None and fds_flat is not None
    assert judge_series(fds_leak, 0.10, {}).ok is False
    assert judge_series(fds_flat, 0.10, {}).ok is True


def test_capped_streams_are_judged_against_their_cap_and_the_rest_reported() -> None:
    caps = {"nodes": 1000}
    growing = Growth("stream_bytes.nodes", 5, 400.0, 500.0, 100.0)
    verdict = judge_series(growing, 0.10, caps)
    assert (verdict.judged_by, verdict.ok, verdict.cap, verdict.hours_to_cap) == ("cap", True, 1000, 5.0)
    assert not judge_series(Growth("stream_bytes.nodes", 5, 1000.0, 1100.0, 10.0), 0.10, caps).ok
    # Retention-bounded streams by slope; step counts, process counts and the total reported only.
    weights = Growth("stream_bytes.weights", 5, 25 * 2.0**20, 30 * 2.0**20, 5 * 2.0**20)
    assert judge_series(weights, 0.10, caps).ok is False
    assert judge_series(weights, 0.10, caps).relative_per_hour == pytest.approx(0.2)
    for name in ("learner_step", "processes.actor-0", "disk_bytes.total"):
        reported = judge_series(Growth(name, 5, 100.0, 150.0, 500.0), 0.10, caps)
        assert (reported.judged_by, reported.ok) == ("", True)
    assert hours_to_cap(Growth("stream_bytes.trees", 3, 1.0, 1.0, 0.0), 10.0) is None
    assert hours_to_cap(Growth("stream_bytes.trees", 3, 1.0, 20.0, 1.0), 10.0) == 0.0


def test_a_stalled_or_broken_run_fails_whatever_its_slopes() -> None:
    assert verdict_failures([], 5, [], 0.1) == []
    assert "stalled" in verdict_failures([], 0, [], 0.1)[0]
    assert verdict_failures([], 3, ["learner exited with code 3 on its stop"], 0.1) == [
        "learner exited with code 3 on its stop"
    ]


def test_summarise_turns_samples_into_verdicts() -> None:
    options = SoakOptions(minutes=4, interval_s=30, warmup_minutes=1)
    samples = [
        Sample(
            at_s=30.0 * i,
            values={
                "rss_bytes.learner": 5e8 if i else 1e8,
                "open_fds.learner": 40.0 + i,  # one more each sample: 120 an hour on about 45
                "learner_step": float(2 * i),
                "stream_bytes.nodes": 1000.0 * i,
            },
        )
        for i in range(9)
    ]
    # The first step at 30 s: the warm-up ends at 90 s, so samples 3..8 count.
    result = summarise(options, "run", 240.0, samples, 30.0, {"nodes": 10**6})
    by_series = {v.growth.series: v for v in result.verdicts}
    assert result.steps_after_warmup == 10
    assert by_series["rss_bytes.learner"].ok and by_series["rss_bytes.learner"].growth.per_hour == 0.0
    assert not by_series["open_fds.learner"].ok
    assert by_series["open_fds.learner"].growth.per_hour == pytest.approx(120.0)
    assert by_series["stream_bytes.nodes"].ok and by_series["stream_bytes.nodes"].growth.per_hour == pytest.approx(
        120_000
    )
    assert not result.ok and len(result.failures()) == 1
    # A learner that never stepped leaves nothing to judge, and the soak fails.
    never = summarise(options, "run", 240.0, samples, None, {"nodes": 10**6})
    assert never.verdicts == [] and never.steps_after_warmup == 0 and not never.ok


def test_a_recorded_soak_rejudged_from_its_samples_gives_the_same_verdicts(tmp_path) -> None:
    options = SoakOptions(minutes=4, interval_s=30, warmup_minutes=1, results_dir=str(tmp_path), results_name="old")
    samples = [
        Sample(at_s=30.0 * i, values={"open_fds.learner": 40.0 + i, "learner_step": float(2 * i)}) for i in range(9)
    ]
    recorded = summarise(options, "run", 240.0, samples, 30.0, {"nodes": 10**6}, ["actor-0 exited"], ["a note"])
    json_path, _ = write_soak_results(recorded)
    again = rejudged(json.loads(json_path.read_text()), tmp_path / "soak-again.json")
    assert again.verdicts == recorded.verdicts and again.failures() == recorded.failures()
    assert (again.samples, again.caps, again.exited, again.notes) == (
        samples,
        {"nodes": 10**6},
        ["actor-0 exited"],
        ["a note"],
    )
    assert (again.options.results_dir, again.options.results_name) == (str(tmp_path), "soak-again")
    assert again.options.warmup_s == options.warmup_s and again.first_step_s == 30.0


def test_options_need_enough_samples_after_the_warm_up() -> None:
    assert SoakOptions(minutes=60).warmup_s == 600
    assert SoakOptions(minutes=8, interval_s=30).warmup_s == 120
    with pytest.raises(ValueError, match="fewer than"):
        SoakOptions(minutes=3, interval_s=60)
    with pytest.raises(ValueError, match="warmup"):
        SoakOptions(minutes=3, interval_s=5, warmup_minutes=3)


def test_a_small_stream_is_judged_against_one_file_store_block_not_its_few_kilobytes() -> None:
    # 50 KB of pending work growing 1 MiB an hour is 20x its level, but 1/8 of one 8 MiB block.
    work = Growth("stream_bytes.work", 10, 50_000.0, 60_000.0, float(2**20))
    verdict = judge_series(work, 0.2, {})
    assert verdict.ok and verdict.relative_per_hour == pytest.approx(1 / 8)
    assert not judge_series(work, 0.1, {}).ok
    # Memory has no floor.
    assert judge_series(Growth("rss_bytes.bus", 10, 100.0, 100.0, 50.0), 0.2, {}).relative_per_hour == 0.5


def test_stream_bytes_reads_the_labelled_streams_of_a_jsz_report() -> None:
    jsz = {
        "account_details": [
            {
                "name": "$G",
                "stream_detail": [
                    {"name": "TRACERL_r_NODES", "state": {"messages": 3, "bytes": 450}},
                    {"name": "OBJ_tracerl_r_weights", "state": {"messages": 0, "bytes": 0}},
                    {"name": "SOMEONE_ELSES", "state": {"bytes": 9}},
                ],
            }
        ]
    }
    labels = {"TRACERL_r_NODES": "nodes", "OBJ_tracerl_r_weights": "weights"}
    assert stream_bytes(jsz, labels) == {"stream_bytes.nodes": 450.0, "stream_bytes.weights": 0.0}
    assert stream_bytes({}, labels) == {}


def test_directory_bytes_adds_up_files_and_can_leave_one_folder_out(tmp_path) -> None:
    from bench.soak import directory_bytes

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.jsonl").write_bytes(b"x" * 100)
    (tmp_path / "nats" / "jetstream").mkdir(parents=True)
    (tmp_path / "nats" / "jetstream" / "blk").write_bytes(b"y" * 1000)
    (tmp_path / "top").write_bytes(b"z" * 10)
    assert directory_bytes(tmp_path) == 1110
    assert directory_bytes(tmp_path, exclude=tmp_path / "nats") == 110
    assert directory_bytes(tmp_path / "missing") == 0
