"""Kiln data plane: Celery app, tasks, executors and the inference runtime."""
