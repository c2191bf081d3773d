"""How many CPUs this process may really use (the default for every process and thread count),
and how the kernel schedules Kiln's processes on them.

`os.cpu_count()` reports the host's CPUs. In a container limited to 2 CPUs on a 64-core node it
says 64, and a worker would fork 64 prefork children, each with ONNX Runtime threads, all
throttled by the 2-CPU quota. So the affinity mask and the cgroup CPU quota both cap it.
"""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)


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


def apply_cpu_policy(policy: str) -> bool:
    """Put this process, and every thread and process it starts later, under `policy`: "batch"
    (Linux SCHED_BATCH) or "normal" (SCHED_OTHER). True when the policy is now in force.

    Why batch: when a thread wakes another (a lock released, a reply handed to the server's
    event loop, a socket read), Linux lets the woken thread preempt the running one. In a Python
    process the running thread usually holds the GIL the woken one needs, so the preemption
    parks the GIL holder and gains nothing: two context switches and a stalled process per
    wake-up. A submit wakes threads several times (server to request thread, request thread to
    the group-commit writer and back, the reply back to the server). Under SCHED_BATCH a woken
    thread waits for the running one to block or for the scheduler tick instead. On the 2-core
    benchmark machine this took `kiln api` from 0.68-0.71 to 0.62-0.66 ms of CPU per submit and
    small-job throughput up by 7-16% (docs/benchmarks.md). Other processes (Postgres, Redis)
    keep their policy: Kiln's threads never preempt them on wake-up, and they still preempt
    Kiln's.

    Lowering one's own policy to SCHED_BATCH needs no privilege. Where the call is missing (not
    Linux) or refused (a seccomp profile), the process keeps its policy and a warning says so.
    """
    wanted = {"batch": getattr(os, "SCHED_BATCH", None), "normal": getattr(os, "SCHED_OTHER", None)}
    if policy not in wanted:
        raise ValueError(f"unknown CPU policy {policy!r}: expected batch or normal")
    if wanted[policy] is None or not hasattr(os, "sched_setscheduler"):
        if policy == "batch":
            log.warning("SCHED_BATCH is not available on this platform; keeping the default policy")
        return False
    for thread in _threads():  # the policy is per thread: also those imports have started
        try:
            if os.sched_getscheduler(thread) != wanted[policy]:
                os.sched_setscheduler(thread, wanted[policy], os.sched_param(0))
        except ProcessLookupError:
            continue  # the thread ended meanwhile
        except OSError as exc:
            log.warning("could not set the %s CPU policy: %s", policy, exc)
            return False
    return True


def _threads() -> list[int]:
    """This process's threads (0, the calling thread, where /proc cannot list them)."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
