"""The small-jobs benchmark's report: how rounds are pooled and batch sizes bucketed."""

import pytest

from bench.run import histogram, percentile, pooled


def test_pooled_rate_is_all_jobs_over_all_seconds():
    # two rounds of the same number of jobs: 1,000 jobs/s and 500 jobs/s take 1 s and 2 s per
    # 1,000 jobs, so together 2,000 jobs in 3 s, not the 750 an average of rates would give
    rounds = [{"kiln": {"jobs_per_s": 1000.0}}, {"kiln": {"jobs_per_s": 500.0}}]
    assert pooled(rounds, "kiln", "jobs_per_s") == pytest.approx(2000 / 3)


def test_one_round_pools_to_itself():
    assert pooled([{"baseline": {"http_jobs_per_s": 812.5}}], "baseline",
                  "http_jobs_per_s") == pytest.approx(812.5)


def test_histogram_puts_each_batch_in_one_bucket():
    counts = histogram([1, 1, 2, 8, 9, 64, 65, 256, 257, 1024, 1025, 5000])
    assert counts == {"1-1": 2, "2-8": 2, "9-64": 2, "65-256": 2, "257-1024": 2, ">1024": 2}
    assert sum(counts.values()) == 12


def test_percentile_picks_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 51.0  # rank round(49.5) = 50 (round half to even)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
