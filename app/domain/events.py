"""The webhook event types: one per final job status, and the opt-in progress event."""

from app.domain.states import JobStatus

EVENT_BY_STATUS = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed",
                   JobStatus.CANCELLED: "job.cancelled", JobStatus.EXPIRED: "job.expired"}
EVENT_TYPES = tuple(EVENT_BY_STATUS.values())
PROGRESS = "job.progress"  # opt-in: only endpoints that list it get it
