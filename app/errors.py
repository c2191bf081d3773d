"""One rooted error hierarchy. Each class maps to one problem+json type in `app.api.problems`."""

from __future__ import annotations


class KilnError(Exception):
    """Root of every error Kiln raises on purpose."""

    status = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self, detail: str = "", **extra):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


class PermanentError(KilnError):
    """Raised when retrying cannot help: the request or the data is wrong."""


class RetryableError(KilnError):
    """Raised when the operation may succeed later: a service is down or a lease was lost."""

    status = 503
    code = "unavailable"
    title = "Service unavailable"


class BadRequest(PermanentError):
    """Raised when the request body cannot be parsed."""

    status = 400
    code = "bad_request"
    title = "Malformed request"


class Unauthorized(PermanentError):
    """Raised when the API key is missing, unknown or revoked."""

    status = 401
    code = "unauthorized"
    title = "Missing or invalid API key"


class NotFound(PermanentError):
    """Raised when a resource does not exist for the calling tenant."""

    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(PermanentError):
    """Raised when a request conflicts with existing state (idempotency key reuse, bad transition)."""

    status = 409
    code = "conflict"
    title = "Conflict"


class ResultsExpired(PermanentError):
    """Raised when a job's results or errors are read after its retention deleted them."""

    status = 410
    code = "results_expired"
    title = "Results expired"


class PayloadTooLarge(PermanentError):
    """Raised when a request body or an input list is larger than allowed."""

    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class InvalidInput(PermanentError):
    """Raised when a request or record does not match what the model expects."""

    status = 422
    code = "invalid_input"
    title = "Invalid input"


class TooManyRequests(RetryableError):
    """Raised when a limit refuses a request that may be admitted later (a 429 with Retry-After)."""

    status = 429
    code = "too_many_requests"
    title = "Too many requests"

    def __init__(self, detail: str = "", *, retry_after_seconds: int = 1, **extra):
        super().__init__(detail, **extra)
        self.retry_after_seconds = max(1, int(retry_after_seconds))


class QuotaExceeded(TooManyRequests):
    """Raised when a submit or upload would take a tenant or the instance past a quota."""

    code = "quota_exceeded"
    title = "Quota exceeded"


class RateLimited(TooManyRequests):
    """Raised when a tenant submits faster than its rate limit allows."""

    code = "rate_limited"
    title = "Rate limited"


class DatabaseUnavailable(RetryableError):
    """Raised when Postgres could not be reached to record a request."""

    code = "database_unavailable"


class LeaseLost(RetryableError):
    """Raised when a worker's fenced write finds that its attempt no longer owns the job."""

    code = "lease_lost"
    title = "Lease lost"


class ModelLoadError(PermanentError):
    """Raised when a model artifact cannot be loaded or does not match its signature."""

    status = 422
    code = "model_load_error"
    title = "Model cannot be loaded"


def describe_error(exc: BaseException, limit: int = 500) -> str:
    """An exception as one short line for a job's or a row's record: its class and message."""
    return f"{exc.__class__.__name__}: {exc}"[:limit]
