"""Publishing delivery tasks to the broker.

The row is the source of truth and the broker only triggers work, so a failed
publish is never an error for the client: the row stays queued with no
``published_at`` and the sweeper publishes it later. After a failure the publisher
stays quiet for a short while instead of making every request wait on a broker
that is down.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import connection as db_connection

from flashsend.celery import app as celery_app
from notifications import lifecycle
from notifications.models import Notification

logger = logging.getLogger(__name__)

# Seconds to skip publishing from the request path after a broker failure.
BROKER_BACKOFF_SECONDS = 5.0


class _BrokerHealth:
    lock = threading.Lock()
    down_until = 0.0


def broker_recently_failed() -> bool:
    return time.monotonic() < _BrokerHealth.down_until


def _note_failure() -> None:
    with _BrokerHealth.lock:
        _BrokerHealth.down_until = time.monotonic() + BROKER_BACKOFF_SECONDS


def _note_success() -> None:
    _BrokerHealth.down_until = 0.0


def publish_one(notification_id: int, queue: str, producer: Any = None) -> bool:
    """Publish the delivery task; True when the broker accepted it."""
    try:
        _send_task(
            notification_id,
            queue,
            producer,
            retry=True,
            retry_policy=settings.CELERY_TASK_PUBLISH_RETRY_POLICY,
        )
    except Exception as exc:  # any broker failure: the sweeper will publish it
        _note_failure()
        logger.warning("publish of notification %s failed: %s", notification_id, exc)
        return False
    _note_success()
    return True


def _send_task(notification_id: int, queue: str, producer: Any, **options: Any) -> None:
    """The delivery task's message: task id = notification id, routed to its queue."""
    from notifications.tasks import deliver_notification

    deliver_notification.apply_async(
        args=(notification_id,),
        task_id=str(notification_id),
        queue=queue,
        routing_key=queue,
        producer=producer,
        **options,
    )


def publish_after_commit(notification: Notification) -> None:
    """The on-commit hook of an accepted notification."""
    if broker_recently_failed():
        logger.info("broker recently failed; notification %s left to the sweeper", notification.pk)
        return
    if settings.API_PUBLISH_IN_BACKGROUND:
        background_publisher.add(notification.pk, notification.queue_name)
    elif publish_one(notification.pk, notification.queue_name):
        lifecycle.mark_published([notification.pk])


# How often the publishing thread writes the marks of what the broker confirmed
# (well under SWEEPER_GRACE_SECONDS), and how long it lets a kept connection idle.
_MARK_INTERVAL_SECONDS = 0.2
_IDLE_CONNECTION_SECONDS = 30.0


class BackgroundPublisher:
    """Publishes the API's accepted notifications from a thread of this process.

    The request appends (id, queue) and answers at once. On RabbitMQ the thread keeps
    one channel in confirm mode: it publishes each notification as it arrives without
    waiting, collects RabbitMQ's confirms as they come (often one frame for many
    messages) and marks the confirmed ones published in one UPDATE every 0.2 s. No
    request waits for the broker, and the per-message cost is the message itself.
    A notification whose publish is lost here (the process dies first, the broker is
    down or never confirms, more than API_PUBLISH_MAX_PENDING wait) keeps no
    ``published_at`` and the sweeper publishes it after its grace period: late, never
    lost, and never sent twice (the claim lets one delivery through).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[int, str]] = []
        self._wake = threading.Event()
        self._owner_pid: int | None = None

    def add(self, notification_id: int, queue: str) -> None:
        with self._lock:
            if len(self._pending) >= settings.API_PUBLISH_MAX_PENDING:
                logger.warning(
                    "%d notifications wait to be published; %s left to the sweeper",
                    len(self._pending),
                    notification_id,
                )
                return
            self._pending.append((notification_id, queue))
            self._ensure_thread()
        self._wake.set()

    def flush(self) -> int:
        """Publish and mark everything waiting, in the calling thread (at exit, in
        tests); how many were marked."""
        marked = 0
        while batch := self._take():
            if broker_recently_failed():
                logger.info("broker recently failed; %d left to the sweeper", len(batch))
                continue
            marked += _mark(publish_batch(batch))
        return marked

    def _take(self) -> list[tuple[int, str]]:
        with self._lock:
            batch = self._pending[: settings.API_PUBLISH_BATCH_SIZE]
            del self._pending[: len(batch)]
        return batch

    def _ensure_thread(self) -> None:
        # Per process: gunicorn forks its workers after the app may have been loaded.
        if self._owner_pid == os.getpid():
            return
        self._owner_pid = os.getpid()
        threading.Thread(target=self._run, name="notification-publisher", daemon=True).start()
        atexit.register(self.flush)

    def _run(self) -> None:
        stream: _ConfirmStream | None = None
        confirmed: list[int] = []
        marked_at = time.monotonic()
        while True:
            waiting = stream is not None and stream.unanswered > 0
            woke = self._wake.wait(0.02 if waiting or confirmed else _IDLE_CONNECTION_SECONDS)
            self._wake.clear()
            if not (woke or waiting or confirmed) and stream is not None:
                stream.close()  # idle: a connection kept for hours is not to be trusted
                stream = None
            try:
                stream = self._publish_waiting(stream, confirmed)
            except Exception as exc:  # never let the thread die: the sweeper covers a loss
                _note_failure()
                logger.warning("background publish failed, left to the sweeper: %s", exc)
                if stream is not None:
                    stream.close()
                stream = None
            if confirmed and time.monotonic() - marked_at >= _MARK_INTERVAL_SECONDS:
                _mark(confirmed)
                db_connection.close()  # this thread's connection goes back to the pool
                confirmed = []
                marked_at = time.monotonic()

    def _publish_waiting(
        self, stream: _ConfirmStream | None, confirmed: list[int]
    ) -> _ConfirmStream | None:
        """Publish what is waiting and collect what was confirmed into ``confirmed``."""
        while batch := self._take():
            if broker_recently_failed():
                logger.info("broker recently failed; %d left to the sweeper", len(batch))
            elif not _uses_batch_confirms():
                confirmed.extend(publish_batch(batch))  # the other brokers: Celery's pool
            else:
                stream = stream or _ConfirmStream()
                stream.publish(batch)
                _note_success()
        if stream is not None:
            confirmed.extend(stream.collect())
        return stream


def _mark(published: list[int]) -> int:
    try:
        return lifecycle.mark_published(published)
    except Exception:  # the marks are an optimisation; the sweeper covers a loss
        logger.exception("could not record %d published marks", len(published))
        return 0


class _ConfirmStream:
    """A connection and confirm-mode channel kept open: publish now, confirms later."""

    # Messages unconfirmed with no confirm at all for this long are given up (the
    # connection with them): RabbitMQ is blocked or the connection is dead.
    CONFIRM_TIMEOUT_SECONDS = 30.0

    def __init__(self) -> None:
        self.connection: Any = celery_app.connection_for_write()
        self.connection.connect()
        self.channel: Any = self.connection.channel()
        self.confirms = _Confirms(self.channel)
        self.producer = celery_app.amqp.Producer(self.channel)
        self.ids: dict[int, int] = {}  # delivery tag -> notification id, until answered
        self.progress_at = time.monotonic()  # the last confirm, or the last idle moment

    @property
    def unanswered(self) -> int:
        return self.confirms.unanswered

    def publish(self, rows: list[tuple[int, str]]) -> None:
        if not self.unanswered:
            self.progress_at = time.monotonic()
        for notification_id, queue in rows:
            _send_task(notification_id, queue, self.producer, retry=False)
            self.confirms.sent += 1
            self.ids[self.confirms.sent] = notification_id

    def collect(self) -> list[int]:
        """Read the confirms that have arrived; the ids RabbitMQ acknowledged."""
        try:
            while self.unanswered:
                self.connection.drain_events(timeout=0.001)
        except TimeoutError:
            pass  # nothing more has arrived yet
        acked = [self.ids.pop(tag) for tag in self.confirms.acknowledged]
        self.confirms.acknowledged.clear()
        if acked or not self.unanswered:
            self.progress_at = time.monotonic()
        if not self.unanswered:
            self.ids.clear()  # what is left was nacked: the sweeper's
        elif time.monotonic() - self.progress_at > self.CONFIRM_TIMEOUT_SECONDS:
            raise TimeoutError(f"{self.unanswered} publishes unconfirmed")
        return acked

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # already broken: nothing to close cleanly
            logger.debug("closing the publisher's broker connection failed", exc_info=True)


def _uses_batch_confirms() -> bool:
    # The batch path maps the channel's n-th confirm to the n-th row: it needs one
    # message per task, and Celery's task-sent events would add a second.
    conf = celery_app.conf
    return bool(conf.broker_transport_options.get("confirm_publish")) and not (
        conf.task_send_sent_event
    )


background_publisher = BackgroundPublisher()


def publish_many(rows: Iterable[tuple[int, str]]) -> list[int]:
    """Publish (id, queue) pairs, stopping at the first broker failure; mark what the
    broker took as published and return those ids."""
    published = publish_batch(list(rows))
    lifecycle.mark_published(published)
    return published


def publish_batch(rows: list[tuple[int, str]]) -> list[int]:
    """Publish (id, queue) pairs; the ids the broker took, without touching the rows."""
    if not rows:
        return []
    if _uses_batch_confirms():
        return _publish_batch_confirmed(rows)
    return _publish_each(rows)


def _publish_each(rows: list[tuple[int, str]]) -> list[int]:
    published: list[int] = []
    try:
        # One producer (one channel) for the whole batch instead of a pool checkout
        # per message: the scheduler and the sweeper publish thousands at a time.
        with celery_app.producer_or_acquire() as producer:
            for notification_id, queue in rows:
                if not publish_one(notification_id, queue, producer):
                    break
                published.append(notification_id)
    except Exception as exc:  # acquiring the producer failed: the broker is away
        _note_failure()
        logger.warning("publishing %d notifications failed: %s", len(rows), exc)
    return published


# How long a batch waits for RabbitMQ to confirm what it was sent.
BATCH_CONFIRM_TIMEOUT_SECONDS = 30.0


def _publish_batch_confirmed(rows: list[tuple[int, str]]) -> list[int]:
    """Publish a batch on a channel in confirm mode, then wait for the confirms once.

    With a synchronous confirm per message (what ``confirm_publish`` does for a
    single publish) a batch runs at one broker round trip per message, about 500 a
    second here; the scheduler, the sweeper and replays publish thousands at once.
    RabbitMQ numbers the messages of a confirm-mode channel 1, 2, 3… and acknowledges
    them, often several at a time; only the ids it acknowledged count as published.
    Anything else stays unpublished for the sweeper.
    """
    confirms: _Confirms | None = None
    try:
        # A connection of its own, closed afterwards: a pooled one that failed
        # mid-batch (the broker restarting) stayed unusable in the pool. One
        # handshake per batch is small beside hundreds of messages.
        with celery_app.connection_for_write() as connection:
            confirms = _publish_on(connection, rows)
    except _BatchFailed as failed:  # the broker went away: what it confirmed still counts
        confirms = failed.confirms
        _note_failure()
        logger.warning("publishing %d notifications failed: %s", len(rows), failed.__cause__)
    else:
        _note_success()
    acknowledged = confirms.acknowledged if confirms is not None else set()
    return [row[0] for tag, row in enumerate(rows, start=1) if tag in acknowledged]


class _BatchFailed(Exception):
    def __init__(self, confirms: _Confirms | None) -> None:
        super().__init__("batch publish failed")
        self.confirms = confirms


def _publish_on(connection: Any, rows: list[tuple[int, str]]) -> _Confirms:
    confirms: _Confirms | None = None
    try:
        channel: Any = connection.channel()
        try:
            confirms = _Confirms(channel)
            producer = celery_app.amqp.Producer(channel)
            for notification_id, queue in rows:
                # No retry: a reconnect would start a new channel's numbering.
                _send_task(notification_id, queue, producer, retry=False)
                confirms.sent += 1
            confirms.wait(connection, BATCH_CONFIRM_TIMEOUT_SECONDS)
        finally:
            channel.close()
    except Exception as exc:
        raise _BatchFailed(confirms) from exc
    return confirms


class _Confirms:
    """The broker's acks and nacks for one confirm-mode channel's messages."""

    def __init__(self, channel: Any) -> None:
        self.sent = 0
        self.acknowledged: set[int] = set()
        self._answered: set[int] = set()  # answered tags above the floor
        self._floor = 0  # every tag up to here is answered
        # Publish without waiting for each confirm; collect them as they come.
        channel.basic_publish = channel._basic_publish
        channel.confirm_select()
        channel._confirm_selected = True
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)

    @property
    def unanswered(self) -> int:
        return self.sent - self._floor - len(self._answered)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        tags = self._tags(delivery_tag, multiple)
        self.acknowledged.update(tags)
        self._answer(tags)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._answer(self._tags(delivery_tag, multiple))

    def _tags(self, delivery_tag: int, multiple: bool) -> list[int]:
        if not multiple:
            return [delivery_tag]
        # "multiple": every tag up to this one that had no answer yet.
        return [t for t in range(self._floor + 1, delivery_tag + 1) if t not in self._answered]

    def _answer(self, tags: list[int]) -> None:
        self._answered.update(tags)
        while self._floor + 1 in self._answered:
            self._floor += 1
            self._answered.discard(self._floor)  # a kept channel's tags grow without end

    def wait(self, connection: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.unanswered:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.unanswered} publishes unconfirmed")
            connection.drain_events(timeout=remaining)
