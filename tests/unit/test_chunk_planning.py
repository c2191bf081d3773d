"""How many rows a file job's chunks get (workers/files/planning.py)."""

import pytest

from workers.files.planning import spread_rows


@pytest.mark.parametrize("total, chunk_rows, processes, floor, expected", [
    (1_000_000, 50_000, 2, 1000, 50_000),   # 20 chunks: as configured
    (200_000, 50_000, 2, 1000, 50_000),     # 4 chunks = two per process: as configured
    (150_000, 50_000, 2, 1000, 37_500),     # 3 chunks: 4 smaller ones
    (4_000, 50_000, 2, 1000, 1_000),        # a few thousand sentences: every process scores
    (4_001, 50_000, 2, 1000, 1_001),        # rounded up: never a fifth chunk of one row
    (3_000, 50_000, 2, 1000, 1_000),        # not below the floor: 3 chunks
    (500, 50_000, 2, 1000, 1_000),          # smaller than the floor: one chunk
    (120, 50, 2, 1000, 50),                 # never larger than chunk_rows
    (0, 50_000, 2, 1000, 50_000),           # an empty file
    (10_000, 50_000, 0, 1000, 5_000),       # no concurrency known: as for one process
])
def test_spread_rows(total, chunk_rows, processes, floor, expected):
    assert spread_rows(total, chunk_rows, processes, floor) == expected


def test_spread_rows_makes_at_least_two_chunks_per_process_when_it_can():
    for total in range(2_000, 200_001, 997):
        rows = spread_rows(total, 50_000, 2, 1000)
        assert -(-total // rows) >= 4 or rows == 1000
