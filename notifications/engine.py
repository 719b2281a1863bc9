"""How a worker delivers: claims and verdicts for many notifications at once.

Every notification still travels as one Celery message (task id = notification id)
on its ``<channel>.<priority>`` queue, and its message is acknowledged only after
its verdict is stored. What changes is the work per message. Run as one Celery task
per message, a delivery costs a claim statement, a verdict statement and Celery's
bookkeeping each time; here, in each worker process:

- the consumer hands each delivery message to the engine (``handle``), which holds
  it, unacknowledged, highest priority first;
- a claimer thread claims what is held, up to twice the pool's size, in one UPDATE,
  and gives each claimed row to a pool thread, which calls the providers;
- a recorder thread stores the verdicts of every delivery that finished meanwhile in
  one statement, then acknowledges each message, dead-letters the dead ones to
  ``flashsend.dead`` and publishes each retry, delayed by its backoff.

The pool's size (``--concurrency``) is still the number of provider calls at once.
Holding at most twice that many claimed rows keeps a high-priority message from
waiting behind more than about two provider calls per thread. A killed worker loses
nothing: its messages were not acknowledged, and its claimed rows come back after the
lease; only rows claimed and not yet recorded may be sent again. A worker that stops
warmly first lets the deliveries in hand finish and records them, while its connection
can still acknowledge (``flashsend.celery.DrainDeliveriesOnStop``).

The engine runs under the thread pool (the production setting) and the solo pool.
Under other pools the task runs one message at a time (``notification_deliver``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from queue import Empty, SimpleQueue
from typing import Any

from celery import signals
from celery.concurrency import solo, thread
from django.db import InterfaceError, OperationalError, connection
from kombu.asynchronous.timer import to_timestamp

from notifications import delivery, lifecycle
from notifications.delivery import DeliveryResult, Verdict
from notifications.models import Notification
from notifications.providers.chain import ChainOutcome
from notifications.publishing import publish_retry

logger = logging.getLogger(__name__)

PRIORITY_RANK = {"high": 0, "medium": 1, "low": 2}
# Rows claimed and not yet recorded, per pool thread.
CLAIMED_PER_THREAD = 2
# How long a stopping worker waits for the deliveries in hand to be recorded.
DRAIN_SECONDS = 60.0
# How long the claimer and the recorder wait for the rest of a burst.
GATHER_SECONDS = 0.002
# The most verdicts one statement records.
MAX_GROUP = 500
# Waits between tries at claiming while the database is away (then the last one, again).
CLAIM_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
# While the database stays away the recorder keeps trying, this often (well inside
# the sweeper's interval, so a lease that ran out meanwhile is rarely lost to it).
RECORD_RETRY_SECONDS = 5.0


def supported(pool: Any) -> bool:
    """Pools whose threads can share the engine's state (not prefork's processes)."""
    return isinstance(pool, thread.TaskPool | solo.TaskPool)


@dataclass
class Held:
    """A delivery message in the engine's hands, not acknowledged yet."""

    notification_id: int
    rank: int
    ack: Callable[..., Any]
    reject: Callable[..., Any]
    message: Any
    connection_errors: tuple[type[BaseException], ...]

    # The consumer's promises, called as Celery's own requests call them: from any
    # thread, they send the frame from the consumer's thread.
    def acknowledge(self) -> None:
        self.ack(logger, self.connection_errors)

    def dead_letter(self) -> None:
        # Rejected without requeue: RabbitMQ dead-letters it to flashsend.dead.
        self.reject(logger, self.connection_errors, False)


class DeliveryEngine:
    """One per worker consumer; see the module's docstring."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._pool = consumer.pool
        self._lock = threading.Condition()
        self._waiting: tuple[deque[Held], ...] = (deque(), deque(), deque())
        self._claimed = 0  # claimed or being claimed, verdict not recorded yet
        self._finished: SimpleQueue[tuple[Held, Notification, ChainOutcome] | None] = SimpleQueue()
        self._stopping = False
        self._not_started: set[int] = set()  # claimed, handed to the pool, not begun
        self._threads: dict[str, threading.Thread] = {}
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
        signals.worker_shutdown.connect(self._on_shutdown, weak=False)

    # --- the consumer's thread ---------------------------------------------------

    def handle(self, message: Any, ack: Any, reject: Any) -> None:
        """A delivery message arrived: hold it, or wait for its ETA (a retry)."""
        errors = self._consumer.connection_errors
        try:
            held = _parse(message, ack, reject, errors)
            eta = message.headers.get("eta")
            due = _due_at(eta) if eta else None
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            # (json.JSONDecodeError is a ValueError.)
            logger.error("delivery message %r is malformed (%s); dead-lettered", message, exc)
            reject(logger, errors, False)
            return
        if due is not None and due > time.monotonic():
            # As Celery does for its own ETA tasks: the message does not take one of
            # the prefetch window's places while it waits for its time.
            qos = self._consumer.qos
            qos.increment_eventually()
            self._consumer.timer.call_at(due, self._due, (held, qos), priority=6)
            return
        self._hold(held)

    def _due(self, held: Held, qos: Any) -> None:
        qos.decrement_eventually()
        self._hold(held)

    def _hold(self, held: Held) -> None:
        with self._lock:
            self._ensure_threads()
            self._waiting[held.rank].append(held)
            # Wake the claimer only if it could claim: while the claimed rows fill
            # its room, waking it for each arriving message costs a thread switch
            # each (the recorder wakes it when room is made).
            if self._room() >= self._threads_in_pool():
                self._lock.notify_all()

    def _ensure_threads(self) -> None:
        """Start the claimer and the recorder, or whichever of them died."""
        if self._stopping:
            return
        for name, target in (("claimer", self._claim_loop), ("recorder", self._record_loop)):
            current = self._threads.get(name)
            if current is None or not current.is_alive():
                started = threading.Thread(target=target, name=f"flashsend-{name}", daemon=True)
                self._threads[name] = started
                started.start()

    # --- the claimer ---------------------------------------------------------------

    def _threads_in_pool(self) -> int:
        return max(1, int(getattr(self._pool, "limit", 1) or 1))

    def _room(self) -> int:
        """How many more rows may be claimed now (call with the lock held)."""
        return self._threads_in_pool() * CLAIMED_PER_THREAD - self._claimed

    def _take(self) -> list[Held]:
        """Wait for held messages and room to claim; take them, high priority first.

        A claim is made once no more than a pool's worth of rows is claimed, and takes
        up to the room left (at least a pool's worth): every thread stays busy, and a
        backlog is claimed a pool's worth at a time rather than row by row.
        """
        with self._lock:
            gather_until: float | None = None
            while not self._stopping:
                threads, room = self._threads_in_pool(), self._room()
                if room >= threads and any(self._waiting):
                    # Messages come in bursts: a moment's wait lets one claim take the
                    # burst instead of its first message. A sleep, not a wait on the
                    # lock, which every arriving message would cut short.
                    gather_until = gather_until or time.monotonic() + GATHER_SECONDS
                    left = gather_until - time.monotonic()
                    if left > 0 and sum(map(len, self._waiting)) < room:
                        self._lock.release()
                        try:
                            time.sleep(left)
                        finally:
                            self._lock.acquire()
                        continue
                    taken: list[Held] = []
                    for waiting in self._waiting:
                        while waiting and len(taken) < room:
                            taken.append(waiting.popleft())
                    self._claimed += len(taken)
                    return taken
                self._lock.wait(timeout=1.0)
        return []

    def _claim_loop(self) -> None:
        try:
            self._claim_until_stopped()
        finally:
            connection.close()

    def _claim_until_stopped(self) -> None:
        failures = 0
        while not self._stopping:
            taken = self._take()
            if not taken:
                continue
            try:
                self._claim_and_start(taken)
                failures = 0
            except Exception:
                # Nothing was claimed (the database away, mostly): the messages go back,
                # unacknowledged, to the front of the line, and claiming pauses a
                # little longer each time.
                failures += 1
                delay = CLAIM_RETRY_DELAYS[min(failures, len(CLAIM_RETRY_DELAYS)) - 1]
                logger.exception(
                    "claiming %d notifications failed; again in %s s", len(taken), delay
                )
                self._put_back(taken)
                connection.close()
                time.sleep(delay)

    def _put_back(self, taken: list[Held]) -> None:
        with self._lock:
            for held in reversed(taken):
                self._waiting[held.rank].appendleft(held)
            self._claimed -= len(taken)
            self._lock.notify_all()

    def _claim_and_start(self, taken: list[Held]) -> None:
        live = [held for held in taken if _channel_open(held)]
        # Held messages of a connection that has closed come back by redelivery.
        self._release(len(taken) - len(live))
        claimed = {row.pk: row for row in delivery.claim([h.notification_id for h in live])}
        for held in live:
            row = claimed.pop(held.notification_id, None)
            if row is None:
                # Done, canceled, in another worker's hands, not due yet, or a second
                # message for a row this batch already has: acknowledged, not sent.
                held.acknowledge()
                self._release(1)
                continue
            with self._lock:
                self._not_started.add(row.pk)
            try:
                self._pool.apply_async(self._send, (held, row), callback=_ignore)
            except RuntimeError:  # the pool is shut down: the row is handed back
                with self._lock:
                    self._not_started.discard(row.pk)
                lifecycle.unclaim([row.pk])
                self._release(1)

    def _release(self, count: int) -> None:
        if count:
            with self._lock:
                self._claimed -= count
                self._lock.notify_all()

    # --- a pool thread ---------------------------------------------------------------

    def _send(self, held: Held, row: Notification) -> None:
        with self._lock:
            self._not_started.discard(row.pk)
        self._finished.put((held, row, delivery.send(row)))

    # --- the recorder ----------------------------------------------------------------

    def _record_loop(self) -> None:
        try:
            while (group := self._next_group()) is not None:
                if group:
                    try:
                        self._record(group)
                    finally:
                        self._release(len(group))
        finally:
            connection.close()

    def _next_group(self) -> list[tuple[Held, Notification, ChainOutcome]] | None:
        try:
            first = self._finished.get(timeout=1.0)
        except Empty:
            return None if self._stopping and not self._claimed else []
        if first is None:
            return None
        time.sleep(GATHER_SECONDS)  # the other sends of a burst finish meanwhile
        group = [first]
        while len(group) < MAX_GROUP:
            try:
                item = self._finished.get_nowait()
            except Empty:
                break
            if item is None:
                self._finished.put(None)  # seen again after this group
                break
            group.append(item)
        return group

    def _record(self, group: list[tuple[Held, Notification, ChainOutcome]]) -> None:
        """Store the group's verdicts, then tell RabbitMQ about each message."""
        try:
            results = self._record_waiting_for_database(group)
        except Exception:
            if len(group) > 1:
                # One row the statement cannot take (deleted meanwhile, say) must not
                # hold up the others: each is recorded alone.
                for item in group:
                    self._record([item])
                return
            held, row, _ = group[0]
            logger.exception("the verdict of notification %s cannot be stored", row.pk)
            held.acknowledge()  # the provider was called; sending again is worse
            return
        for held, row, _ in group:
            _settle(held, row, results[row.pk])

    @staticmethod
    def _record_waiting_for_database(
        group: list[tuple[Held, Notification, ChainOutcome]],
    ) -> dict[int, DeliveryResult]:
        deliveries = [(row, outcome) for _, row, outcome in group]
        while True:
            try:
                # The engine's own loop does the waiting, however long it takes.
                return delivery.record_verdicts(deliveries, delays=())
            except (OperationalError, InterfaceError) as exc:
                # Giving up would send these again after the lease: keep waiting.
                logger.error("database away: %d verdicts wait (%s)", len(group), exc)
                connection.close()
                time.sleep(RECORD_RETRY_SECONDS)

    # --- stopping --------------------------------------------------------------------

    def drain(self, timeout: float = DRAIN_SECONDS) -> None:
        """Claim nothing more; wait until every claimed row's verdict is recorded.

        Runs while the worker stops, after the consumer stopped taking messages and
        before the pool and the connection stop: the sends in hand finish, and their
        acknowledgements still reach RabbitMQ. What is held but not claimed comes back
        by redelivery.
        """
        deadline = time.monotonic() + timeout
        self._on_shutting_down()
        with self._lock:
            while self._claimed > 0 and time.monotonic() < deadline:
                self._lock.wait(timeout=0.1)
            left = self._claimed
        if left:
            logger.warning("%d claimed notifications still in flight at shutdown", left)

    def _on_shutting_down(self, **kwargs: Any) -> None:
        """Warm shutdown began: claim nothing more."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()

    def _on_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        """The worker stopped and its pool finished the sends in hand: record them."""
        if sender is not None and getattr(self._consumer, "controller", None) not in (
            None,
            sender,
        ):
            return
        self._on_shutting_down()
        self._finished.put(None)
        for worker_thread in self._threads.values():
            worker_thread.join(timeout=30.0)
        with self._lock:
            never_sent, self._not_started = sorted(self._not_started), set()
        if never_sent:
            # Claimed, but the pool stopped before their turn: queued again at once
            # (their messages, unacknowledged, come back to the next worker) instead
            # of waiting for the lease.
            lifecycle.unclaim(never_sent)
            logger.info("%d claimed notifications handed back at shutdown", len(never_sent))
        signals.worker_shutting_down.disconnect(self._on_shutting_down)
        signals.worker_shutdown.disconnect(self._on_shutdown)


def _parse(message: Any, ack: Any, reject: Any, errors: Any) -> Held:
    args = _arguments(message)
    routing_key = str(message.delivery_info.get("routing_key") or "")
    return Held(
        notification_id=int(args[0]),
        rank=PRIORITY_RANK.get(routing_key.rpartition(".")[2], 1),
        ack=ack,
        reject=reject,
        message=message,
        connection_errors=tuple(errors),
    )


def _arguments(message: Any) -> Any:
    """The task's positional arguments (protocol 2: the body is [args, kwargs, embed]).

    A JSON body, as every publisher of FlashSend's sends, is read with the standard
    library's shared decoder: kombu's ``decode`` builds a decoder for every message,
    a tenth of the consumer thread's CPU. Other content types go through kombu.
    """
    if message.content_type == "application/json":
        return json.loads(message.body)[0]
    return message.decode()[0]


def _due_at(eta: str) -> float:
    """The ETA on the clock of Celery's timer (monotonic)."""
    return float(to_timestamp(datetime.fromisoformat(eta)))


def _channel_open(held: Held) -> bool:
    """A message from a connection that has since closed comes back by redelivery;
    its old copy is dropped, not claimed."""
    channel = getattr(held.message, "channel", None)
    return channel is None or getattr(channel, "is_open", True) is not False


def _ignore(result: object) -> None:
    """The pool's callback: the send reports through the engine's queue instead."""


def _settle(held: Held, row: Notification, result: DeliveryResult) -> None:
    """Tell RabbitMQ what became of the message, now that the row says it."""
    if result.verdict is Verdict.DEAD:
        held.dead_letter()
        return
    if result.verdict is Verdict.RETRY:
        # If this publish fails the row waits in retrying, and the sweeper publishes
        # it once it is overdue: acknowledged either way, never sent twice.
        publish_retry(row.pk, row.queue_name, countdown=result.retry_in or 0.0)
    held.acknowledge()


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """The delivery task's Celery strategy: the engine, or Celery's default."""
    from celery.worker.strategy import default

    if not supported(consumer.pool):
        return default(task, app, consumer, **kwargs)
    # Celery asks for the strategy again after every reconnect: one engine per
    # consumer, which drops what it held from the closed connection.
    engine: DeliveryEngine | None = getattr(consumer, "flashsend_engine", None)
    if engine is None:
        engine = consumer.flashsend_engine = DeliveryEngine(consumer)

    def task_message_handler(
        message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any
    ) -> None:
        engine.handle(message, ack, reject)

    return task_message_handler
