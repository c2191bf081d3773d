"""How many CPUs this process may really use: the default for every process and thread count.

`os.cpu_count()` reports the host's CPUs. In a container limited to 2 CPUs on a 64-core node it
says 64, and a worker would fork 64 prefork children, each with ONNX Runtime threads, all
throttled by the 2-CPU quota. So the affinity mask and the cgroup CPU quota both cap it.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 `cpu.max`, else v1 CFS), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: affinity mask, capped by the cgroup quota (rounded up)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


@lru_cache(maxsize=1)
def cpus() -> int:
    return usable_cpus()
