"""The Celery application: configuration comes from Django settings (CELERY_*)."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flashsend.settings")

app = Celery("flashsend")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

logger = logging.getLogger(__name__)


@worker_init.connect
def _prepare_worker(**kwargs: Any) -> None:
    """On start a worker declares the whole topology and loads the provider SDKs.

    Celery itself declares only the queues a worker consumes; without this the DLX
    and flashsend.dead would not exist until someone ran flashsend_setup, and dead
    messages would be dropped by RabbitMQ.
    """
    from django.conf import settings

    from flashsend import topology
    from notifications.providers import registry

    try:
        with app.connection_for_write() as connection:
            topology.declare_all(connection, quorum=settings.RABBITMQ_QUORUM_QUEUES)
    except Exception:
        logger.exception("could not declare the broker topology at worker start")
    registry.preload()
