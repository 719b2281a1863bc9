"""The Celery application: configuration comes from Django settings (CELERY_*)."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from celery import Celery, bootsteps
from celery.signals import celeryd_after_setup, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flashsend.settings")


class _CelerySettings(Mapping[str, Any]):
    """Django's CELERY_* settings, read once into a plain dict.

    Celery looks its configuration up on every publish (routes, protocol, defaults:
    six lookups per message), trying several spellings of each key in each source.
    Against django.conf.settings each miss is an AttributeError raised through
    LazySettings; against a dict it is a cheap KeyError. Read at first use, not at
    import, because Django's settings import this package.
    """

    def __init__(self) -> None:
        self._values: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._values is None:
            from django.conf import settings

            self._values = {
                k: getattr(settings, k) for k in dir(settings) if k.startswith("CELERY_")
            }
        return self._values

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


app = Celery("flashsend")
app.config_from_object(_CelerySettings(), namespace="CELERY")
app.autodiscover_tasks()


class DrainDeliveriesOnStop(bootsteps.StartStopStep):
    """A worker step that stops after the consumer and before the pool: the delivery
    engine's deliveries in hand (notifications/engine.py) end with their verdicts
    recorded and their messages acknowledged while the connection is still open."""

    requires = ("celery.worker.components:Pool",)

    def stop(self, worker: Any) -> None:
        engine = getattr(getattr(worker, "consumer", None), "flashsend_engine", None)
        if engine is not None:
            engine.drain()

    def terminate(self, worker: Any) -> None:
        """A cold shutdown waits for nothing: the lease brings claimed rows back."""


app.steps["worker"].add(DrainDeliveriesOnStop)

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
    # What is loaded now lives as long as the worker: out of the cyclic collector's
    # reach, a full collection no longer walks it (tens of milliseconds with Django
    # and the provider SDKs loaded, during which every thread of the worker waits).
    gc.collect()
    gc.freeze()


@celeryd_after_setup.connect
def _namespaced_settings_are_current(conf: Any, **kwargs: Any) -> None:
    """Keep the worker from calling FlashSend's settings deprecated at every start.

    Under the CELERY namespace, CELERY_TASK_SERIALIZER is read as task_serializer, as
    meant. Celery's check for Celery 3 setting names takes such names for the old
    ones unless the configuration source is the string "django.conf:settings"
    (celery#6366), and FlashSend's source is a mapping read once (_CelerySettings).
    """
    # Only the namespaced names: a true Celery 3 name set some other way still warns.
    found = conf.deprecated_settings or set()
    conf.deprecated_settings = {name for name in found if not name.startswith("CELERY_")}
