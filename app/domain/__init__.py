"""Pure domain logic: no Flask, Celery or SQLAlchemy here."""
