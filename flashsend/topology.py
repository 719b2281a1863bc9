"""The RabbitMQ topology, declared in code.

One topic exchange ``flashsend`` routes each task to ``<channel>.<priority>``; every
work queue dead-letters to the ``flashsend.dlx`` exchange, whose only queue is
``flashsend.dead``. Declaring is idempotent: the worker declares what it consumes on
start, and ``manage.py flashsend_setup`` declares everything.
"""

from __future__ import annotations

from typing import Any

from kombu import Connection, Exchange, Queue

EXCHANGE_NAME = "flashsend"
DLX_NAME = "flashsend.dlx"
DEAD_QUEUE = "flashsend.dead"
DEFAULT_QUEUE = "flashsend.default"
CHANNELS = ("sms", "email")
PRIORITIES = ("high", "medium", "low")
WORK_QUEUES = tuple(f"{c}.{p}" for c in CHANNELS for p in PRIORITIES)


def queue_arguments(*, quorum: bool) -> dict[str, Any]:
    arguments: dict[str, Any] = {"x-dead-letter-exchange": DLX_NAME}
    if quorum:
        arguments["x-queue-type"] = "quorum"
    return arguments


def exchange() -> Exchange:
    return Exchange(EXCHANGE_NAME, type="topic", durable=True)


def dead_letter_exchange() -> Exchange:
    return Exchange(DLX_NAME, type="topic", durable=True)


def task_queues(*, quorum: bool) -> list[Queue]:
    """Work queues plus the maintenance queue, as Celery's task_queues."""
    arguments = queue_arguments(quorum=quorum)
    return [
        Queue(name, exchange(), routing_key=name, durable=True, queue_arguments=arguments)
        for name in (*WORK_QUEUES, DEFAULT_QUEUE)
    ]


def dead_queue(*, quorum: bool) -> Queue:
    # Bound with "#" so that a dead message keeps the routing key of the queue it
    # came from, which tells an operator its channel and priority.
    arguments = {"x-queue-type": "quorum"} if quorum else {}
    return Queue(
        DEAD_QUEUE,
        dead_letter_exchange(),
        routing_key="#",
        durable=True,
        queue_arguments=arguments,
    )


def declare_all(connection: Connection, *, quorum: bool) -> list[str]:
    """Declare exchanges and queues; returns the names of the declared queues."""
    names: list[str] = []
    with connection.channel() as channel:
        for queue in (*task_queues(quorum=quorum), dead_queue(quorum=quorum)):
            queue.bind(channel).declare()
            names.append(str(queue.name))
    return names
