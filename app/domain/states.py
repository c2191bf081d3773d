"""Job and chunk status values and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})
ACTIVE = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.FINALIZING})

# Every status change the store makes (each store function declares its own; a unit test checks
# them against this table, both ways).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED,
                                     JobStatus.EXPIRED}),
    # a small claim is scored and ended in the transaction that claims it: queued -> succeeded
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.CANCELLED,
                                 JobStatus.EXPIRED}),
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, JobStatus.FINALIZING, JobStatus.SUCCEEDED,
                                  JobStatus.FAILED, JobStatus.CANCELLING, JobStatus.CANCELLED,
                                  JobStatus.EXPIRED}),
    JobStatus.FINALIZING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.EXPIRED}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.EXPIRED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
}


def can_transition(current: str, target: str) -> bool:
    return JobStatus(target) in TRANSITIONS[JobStatus(current)]


def ending_status(current: str, wanted: str) -> JobStatus:
    """Where a job ends when asked to end `wanted`: a job whose cancel was requested ends
    `cancelled` (keeping what it wrote) instead of succeeding or failing."""
    if JobStatus(current) is JobStatus.CANCELLING and JobStatus(wanted) in (
            JobStatus.SUCCEEDED, JobStatus.FAILED):
        return JobStatus.CANCELLED
    return JobStatus(wanted)


def cancel_target(current: str) -> JobStatus | None:
    """Where a cancel request moves a job: at once when nobody runs it, via `cancelling` otherwise."""
    status = JobStatus(current)
    if status in (JobStatus.QUEUED, JobStatus.VALIDATING):
        return JobStatus.CANCELLED
    if status is JobStatus.RUNNING:
        return JobStatus.CANCELLING
    return None


def is_terminal(status: str) -> bool:
    return JobStatus(status) in TERMINAL
