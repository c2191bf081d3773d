"""The Celery app factory for workers."""

from __future__ import annotations

from celery import Celery

from app.queueing.celery_config import celery_config
from app.settings import Settings


def create_celery(settings: Settings, require_gpu: bool = False) -> Celery:
    survive_broker_restarts()
    celery = Celery("kiln")
    celery.conf.update(celery_config(settings))
    celery.conf.update(task_queues=None, include=["workers.tasks"])
    celery.kiln_settings = settings
    celery.kiln_require_gpu = require_gpu
    celery.set_default()
    return celery


def survive_broker_restarts() -> None:
    """Keep a worker alive when Redis restarts while it holds unacknowledged messages.

    With celery 5.7 / kombu 5.7, after a lost connection the consumer closes its channel a second
    time, once the transport has dropped its client; restoring the unacked messages then fails
    with AttributeError ('NoneType' object has no attribute 'hostname'), which Celery treats as
    unrecoverable, and the worker exits. A connection error instead is ignored there and Celery
    reconnects. The unacked messages stay in Redis until the visibility timeout, and the
    reconciler re-publishes their jobs anyway. Found by tests/chaos (a Redis restart).
    """
    import redis
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "kiln_survives_restarts", False):
        return

    def connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is already closed")
        return original(self, asynchronous=asynchronous)

    connparams.kiln_survives_restarts = True
    kombu_redis.Channel._connparams = connparams
