"""Publishing delivery tasks to the broker.

The row is the source of truth and the broker only triggers work, so a failed
publish is never an error for the client: the row stays queued with no
``published_at`` and the sweeper publishes it later. The API's requests hand their
notifications to a publishing thread of their process (``BackgroundPublisher``); the
scheduler, the sweeper and replays publish batches (``publish_many``). After a failure
publishing stays quiet for a short while instead of trying a broker that is down
again and again.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import connection as db_connection
from kombu.entity import maybe_delivery_mode

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


def publish_retry(notification_id: int, queue: str, *, countdown: float) -> bool:
    """Publish the next round of a notification, due after ``countdown`` seconds."""
    try:
        _send_task(
            notification_id,
            queue,
            None,
            countdown=countdown,
            retry=True,
            retry_policy=settings.CELERY_TASK_PUBLISH_RETRY_POLICY,
        )
    except Exception as exc:  # the sweeper publishes overdue retries
        logger.warning("publish of the retry of notification %s failed: %s", notification_id, exc)
        return False
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


class _DeliveryMessage:
    """The delivery task's message as ``apply_async`` publishes it, made for less.

    ``apply_async`` costs about 0.7 ms of CPU per message here (routing, options,
    ``saferepr`` of the arguments, the protocol's headers), this 0.2 ms: the web
    processes publish every accepted notification, and that CPU is the API's. The
    headers are Celery's protocol 2, the same as ``apply_async`` sends (a test
    compares them field by field); used where no task-sent event is wanted.
    """

    EMBED = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'

    def __init__(self) -> None:
        from celery.utils.nodenames import anon_nodename

        from notifications.tasks import deliver_notification as task

        self.static_headers: dict[str, Any] = {
            "lang": "py",
            "task": task.name,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [task.time_limit, task.soft_time_limit],
            "parent_id": None,
            "kwargsrepr": "{}",
            "origin": anon_nodename(),
            "ignore_result": task.ignore_result,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        self.queues = celery_app.amqp.queues
        # 2 or "persistent" alike, as Celery reads it
        self.delivery_mode = maybe_delivery_mode(celery_app.conf.task_default_delivery_mode)

    def publish(self, producer: Any, notification_id: int, queue: str) -> None:
        task_id = str(notification_id)
        producer.publish(
            f"[[{notification_id}], {{}}, {self.EMBED}]",
            exchange=self.queues[queue].exchange.name,
            routing_key=queue,
            content_type="application/json",
            content_encoding="utf-8",
            headers={
                **self.static_headers,
                "id": task_id,
                "root_id": task_id,
                "argsrepr": f"({notification_id},)",
            },
            correlation_id=task_id,
            delivery_mode=self.delivery_mode,
            # As apply_async does: the queue and its binding exist before the message
            # goes out (declared once per connection), or RabbitMQ would drop it.
            declare=[self.queues[queue]],
            retry=False,
        )


@functools.cache
def _delivery_message() -> _DeliveryMessage:
    return _DeliveryMessage()  # built on first use: it needs the task registered


def publish_delivery(producer: Any, notification_id: int, queue: str) -> None:
    """Publish one delivery task on ``producer``'s channel, without retrying."""
    _delivery_message().publish(producer, notification_id, queue)


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
        self._confirmed: list[int] = []  # confirmed by RabbitMQ, not marked yet
        self._wake = threading.Event()
        self._owner_pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stream: _ConfirmStream | None = None  # the thread's own; no one else's

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
        """Mark what was confirmed, then publish and mark everything waiting, in the
        calling thread (at exit, in tests); how many were marked."""
        marked = self._mark_confirmed()
        while batch := self._take():
            if broker_recently_failed():
                logger.info("broker recently failed; %d left to the sweeper", len(batch))
                continue
            marked += _mark(publish_batch(batch))
        return marked

    def stop(self, timeout: float = 5.0) -> None:
        """Let the thread publish what waits, mark what was confirmed and end; then
        publish anything left from here (process exit, tests)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        self.flush()
        db_connection.close()

    def _take(self) -> list[tuple[int, str]]:
        with self._lock:
            batch = self._pending[: settings.API_PUBLISH_BATCH_SIZE]
            del self._pending[: len(batch)]
        return batch

    def _mark_confirmed(self) -> int:
        with self._lock:
            confirmed, self._confirmed = self._confirmed, []
        return _mark(confirmed) if confirmed else 0

    def _ensure_thread(self) -> None:
        # Per process (gunicorn forks its workers after the app may have been loaded),
        # and again if the thread ever died.
        if self._owner_pid == os.getpid() and self._thread is not None:
            if self._thread.is_alive():
                return
            logger.error("the publishing thread had stopped; starting it again")
        if self._owner_pid != os.getpid():
            atexit.register(self.stop)
        self._owner_pid = os.getpid()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="notification-publisher")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        marked_at = time.monotonic()
        while not self._stopping.is_set():
            busy = bool(self._confirmed) or (self._stream is not None and self._stream.unanswered)
            woke = self._wake.wait(0.02 if busy else _IDLE_CONNECTION_SECONDS)
            self._wake.clear()
            if not (woke or busy):
                self._drop_stream(gracefully=True)  # idle: not to be trusted for hours
            self._publish_safely()
            if time.monotonic() - marked_at >= _MARK_INTERVAL_SECONDS:
                if self._mark_confirmed():
                    _release_db_connection()
                marked_at = time.monotonic()
        # Stopping: the last confirms get a moment to arrive, then everything is marked.
        deadline = time.monotonic() + 1.0
        while self._stream is not None and self._stream.unanswered:
            if time.monotonic() > deadline:
                break
            self._publish_safely()
        self._drop_stream(gracefully=True)
        self._mark_confirmed()
        db_connection.close()

    def _publish_safely(self) -> None:
        try:
            self._publish_waiting()
        except Exception as exc:
            if self._stream is None:
                self._give_up(exc)
                return
            # A kept connection fails first after a broker restart: what it had not
            # had confirmed goes out again at once on a new one. A message that did
            # arrive twice is harmless (the claim lets one delivery through).
            unconfirmed = self._stream.unconfirmed()
            self._drop_stream(gracefully=False)
            logger.info("broker connection lost (%s); publishing on a new one", exc)
            try:
                self._stream = _ConfirmStream()
                self._stream.publish(unconfirmed)
            except Exception as again:
                self._drop_stream(gracefully=False)
                self._give_up(again)

    def _publish_waiting(self) -> None:
        """Publish what is waiting and keep what was confirmed for marking."""
        while batch := self._take():
            if broker_recently_failed():
                logger.info("broker recently failed; %d left to the sweeper", len(batch))
            elif not _uses_batch_confirms():
                self._keep(publish_batch(batch))  # the other brokers: Celery's pool
            else:
                self._stream = self._stream or _ConfirmStream()
                try:
                    self._stream.publish(batch)
                except Exception:
                    self._put_back(batch[self._stream.published :])
                    raise
                _note_success()
        if self._stream is not None:
            self._keep(self._stream.collect())

    def _drop_stream(self, *, gracefully: bool) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            self._keep(stream.salvage())  # what RabbitMQ confirmed still counts
            if gracefully:
                stream.close()
            else:
                stream.abandon()

    @staticmethod
    def _give_up(exc: Exception) -> None:
        # Never let the thread die: the sweeper publishes what was lost here.
        _note_failure()
        logger.warning("background publish failed, left to the sweeper: %s", exc)

    def _keep(self, confirmed: list[int]) -> None:
        if confirmed:
            with self._lock:
                self._confirmed.extend(confirmed)

    def _put_back(self, rows: list[tuple[int, str]]) -> None:
        """Rows a failed publish did not send go first in line again."""
        with self._lock:
            self._pending[:0] = rows
        self._wake.set()


def _mark(published: list[int]) -> int:
    try:
        return lifecycle.mark_published(published)
    except Exception:  # the marks are an optimisation; the sweeper covers a loss
        logger.exception("could not record %d published marks", len(published))
        return 0


def _release_db_connection() -> None:
    """Give the thread's database connection back between marks (0.2 s apart).

    With the pool, closing returns it; without one, a connection is kept (opening
    one five times a second would cost more than it saves) unless it is broken or
    past its age.
    """
    if db_connection.settings_dict.get("OPTIONS", {}).get("pool"):
        db_connection.close()
    else:
        db_connection.close_if_unusable_or_obsolete()


class _ConfirmStream:
    """A connection and confirm-mode channel kept open: publish now, confirms later."""

    # A message unconfirmed for this long is given up with the connection (RabbitMQ
    # is blocked, or the connection is dead); so are more than this many outstanding.
    CONFIRM_TIMEOUT_SECONDS = 30.0
    MAX_UNANSWERED = 20_000
    # A write RabbitMQ does not take within this long (a memory or disk alarm blocks
    # publishers) fails instead of hanging the thread.
    WRITE_TIMEOUT_SECONDS = 10.0

    def __init__(self) -> None:
        self.connection: Any = celery_app.connection_for_write(
            transport_options={"write_timeout": self.WRITE_TIMEOUT_SECONDS}
        )
        try:
            self.connection.connect()
            self.channel: Any = self.connection.channel()
            self.confirms = _Confirms(self.channel)
        except Exception:
            self.abandon()
            raise
        self.producer = celery_app.amqp.Producer(self.channel)
        # delivery tag -> (notification id, queue, when it went out), until answered
        self.ids: dict[int, tuple[int, str, float]] = {}
        self.published = 0

    @property
    def unanswered(self) -> int:
        return self.confirms.unanswered

    def publish(self, rows: list[tuple[int, str]]) -> None:
        """Send the rows without waiting; ``published`` counts those sent, if it fails."""
        now = time.monotonic()
        self.published = 0
        for notification_id, queue in rows:
            publish_delivery(self.producer, notification_id, queue)
            self.confirms.sent += 1
            self.ids[self.confirms.sent] = (notification_id, queue, now)
            self.published += 1

    def collect(self) -> list[int]:
        """Read the confirms that have arrived; the ids RabbitMQ acknowledged."""
        try:
            while self.unanswered:
                self.connection.drain_events(timeout=0.001)
        except TimeoutError:
            pass  # nothing more has arrived yet
        acked = self.salvage()
        # Tags at or below the floor are all answered: those left were nacked.
        for tag in [tag for tag in self.ids if tag <= self.confirms.floor]:
            del self.ids[tag]
        oldest = self.ids.get(self.confirms.floor + 1)
        if oldest is not None and time.monotonic() - oldest[2] > self.CONFIRM_TIMEOUT_SECONDS:
            raise TimeoutError(f"{self.unanswered} publishes unconfirmed for too long")
        if self.unanswered > self.MAX_UNANSWERED:
            raise TimeoutError(f"{self.unanswered} publishes unconfirmed")
        return acked

    def salvage(self) -> list[int]:
        """The ids acknowledged since the last call, with no network call."""
        acked = [self.ids.pop(tag)[0] for tag in self.confirms.acknowledged if tag in self.ids]
        self.confirms.acknowledged.clear()
        return acked

    def unconfirmed(self) -> list[tuple[int, str]]:
        """What went out with no answer yet, as (id, queue), oldest first."""
        return [
            (row[0], row[1])
            for tag, row in sorted(self.ids.items())
            if not self.confirms.answered(tag)
        ]

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # already broken: drop it without a goodbye
            self.abandon()

    def abandon(self) -> None:
        """Drop the connection without talking to the broker (it may not answer)."""
        try:
            self.connection.collect()
        except Exception:  # nothing more can be done about a connection gone bad
            logger.debug("dropping the publisher's broker connection failed", exc_info=True)


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
            channel: Any = connection.channel()
            try:
                confirms = _Confirms(channel)
                producer = celery_app.amqp.Producer(channel)
                for notification_id, queue in rows:
                    # No retry: a reconnect would start a new channel's numbering.
                    publish_delivery(producer, notification_id, queue)
                    confirms.sent += 1
                confirms.wait(connection, BATCH_CONFIRM_TIMEOUT_SECONDS)
            finally:
                channel.close()
    except Exception as exc:  # the broker went away: what it confirmed still counts
        _note_failure()
        logger.warning("publishing %d notifications failed: %s", len(rows), exc)
    else:
        _note_success()
    acknowledged = confirms.acknowledged if confirms is not None else set()
    return [row[0] for tag, row in enumerate(rows, start=1) if tag in acknowledged]


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

    def answered(self, tag: int) -> bool:
        return tag <= self._floor or tag in self._answered

    @property
    def floor(self) -> int:
        """Every tag up to this one has been answered."""
        return self._floor

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
