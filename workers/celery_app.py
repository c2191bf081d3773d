"""The Celery app factory for workers."""

from __future__ import annotations

from celery import Celery

from app.queueing import celery_config
from app.settings import Settings


def create_celery(settings: Settings, require_gpu: bool = False) -> Celery:
    celery = Celery("kiln")
    celery.conf.update(celery_config(settings))
    celery.conf.update(task_queues=None, include=["workers.tasks"])
    celery.kiln_settings = settings
    celery.kiln_require_gpu = require_gpu
    celery.set_default()
    return celery
