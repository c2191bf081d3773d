"""The webhook event types: one per final job status, and the opt-in progress event."""

from app.domain.states import JobStatus

EVENT_BY_STATUS = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed",
                   JobStatus.CANCELLED: "job.cancelled", JobStatus.EXPIRED: "job.expired"}
EVENT_TYPES = tuple(EVENT_BY_STATUS.values())
PROGRESS = "job.progress"  # opt-in: only endpoints that list it get it

# An endpoint registered with `event_format: openai` gets the OpenAI dialect's events for its
# batches, `{id, object: "event", type, created_at, data: {id}}`; it is marked by this entry
# in its `events` list (no column of its own), which is never an event type.
OPENAI_FORMAT = "format:openai"
OPENAI_EVENT_BY_STATUS = {JobStatus.SUCCEEDED: "batch.completed", JobStatus.FAILED: "batch.failed",
                          JobStatus.CANCELLED: "batch.cancelled",
                          JobStatus.EXPIRED: "batch.expired"}


def event_format(events: list[str] | None) -> str:
    return "openai" if OPENAI_FORMAT in (events or ()) else "kiln"


def listed_events(events: list[str] | None) -> list[str]:
    """The event types an endpoint listed (empty: every terminal event)."""
    return [event for event in events or () if event != OPENAI_FORMAT]
