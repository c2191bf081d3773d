"""Use cases over the ORM. Callers own the session; nothing here knows HTTP or Celery."""
