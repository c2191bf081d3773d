"""The lifecycle store: every statement that changes a job, a chunk or a webhook delivery.

Each state change is one named function here, and every transition into a terminal state goes
through `lifecycle.finish`, which writes the state, the webhook outbox rows and calls the
lifecycle hooks. Callers own the session and its transaction; nothing here commits.
"""
