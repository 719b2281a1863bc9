"""Delivery rounds: claim, send through the chain, record.

A worker's delivery engine (notifications.engine) runs the three steps for many
notifications at once: one claim statement for what it holds, the sends on its
threads, one statement for a group of verdicts. ``notification_deliver`` runs them for
one notification (the task's own body, used by pools the engine does not drive).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from notifications import lifecycle
from notifications.models import AttemptOutcome, DeliveryAttempt, Notification, Status
from notifications.providers import registry
from notifications.providers.base import OutboundMessage, ProviderError
from notifications.providers.chain import AttemptRecord, ChainOutcome, send_with_failover

logger = logging.getLogger(__name__)


class Verdict(Enum):
    SKIPPED = "skipped"  # not ours to send: final already, canceled, or claimed elsewhere
    SENT = "sent"
    FAILED = "failed"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True)
class DeliveryResult:
    verdict: Verdict
    retry_in: float | None = None
    error: str = ""


def notification_deliver(*, notification_id: int) -> DeliveryResult:
    """One notification, start to end: claim, send, record."""
    claimed = claim([notification_id])
    if not claimed:
        # Redelivered or duplicate message: the row says it is done, canceled or
        # in another worker's hands. Acknowledge without calling any provider.
        return DeliveryResult(Verdict.SKIPPED)
    _release_database_connection()
    [notification] = claimed
    return record_verdict(notification, send(notification))


def claim(notification_ids: Sequence[int]) -> list[Notification]:
    """The rows of these ids this worker may send now (one statement)."""
    lease = timedelta(seconds=settings.DELIVERY_CLAIM_LEASE_SECONDS)
    return lifecycle.claim_many(notification_ids, lease=lease)


def send(notification: Notification) -> ChainOutcome:
    """One round through the channel's providers. Never raises: a provider's
    failure, expected or not, is an attempt in the outcome, and so is a failure to
    build the chain or the message (a bug: the round is retried, not lost)."""
    try:
        chain = registry.chain_for(notification.channel)
        message = _message(notification)
    except Exception as exc:
        logger.exception("preparing notification %s for its providers failed", notification.pk)
        error = ProviderError(f"{type(exc).__name__}: {exc}", code="unexpected")
        return ChainOutcome([AttemptRecord("", timezone.now(), 0, error=error)])
    return send_with_failover(chain, message)


# Waits before each new try at recording a verdict: about a minute, enough for a
# database restart or a failover.
RECORD_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def record_verdict(
    notification: Notification,
    outcome: ChainOutcome,
    delays: tuple[float, ...] = RECORD_RETRY_DELAYS,
) -> DeliveryResult:
    return record_verdicts([(notification, outcome)], delays)[notification.pk]


def record_verdicts(
    deliveries: Sequence[tuple[Notification, ChainOutcome]],
    delays: tuple[float, ...] = RECORD_RETRY_DELAYS,
) -> dict[int, DeliveryResult]:
    """Store the attempts and the verdicts, in one statement, whatever it takes.

    The providers have already been called. If this failed up to Celery, the
    message would come back, its claim be refused, and the row left processing
    until the sweeper hands it out again after the lease: a second send. So a
    database that is briefly away is waited for here, by whoever made the calls.
    """
    concluded = [_conclude(notification, outcome) for notification, outcome in deliveries]
    for delay in (*delays, None):
        try:
            # The attempts and the verdicts are written together: a row never says
            # "sent" without the attempt that sent it, nor the other way round.
            ours = lifecycle.leave_processing([verdict for verdict, _ in concluded])
            break
        except (OperationalError, InterfaceError) as exc:
            if delay is None:
                raise
            logger.warning(
                "recording %d verdicts failed (%s); again in %s s", len(concluded), exc, delay
            )
            if not connection.in_atomic_block:
                connection.close()  # a broken connection is replaced on next use
            time.sleep(delay)
    # A row no longer ours (its lease ran out and another worker took it) keeps the
    # other worker's verdict: this one neither retries nor dead-letters it.
    results = {
        verdict.notification_id: result
        if verdict.notification_id in ours
        else DeliveryResult(Verdict.SKIPPED, error=result.error)
        for verdict, result in concluded
    }
    for notification_id, result in results.items():
        if result.verdict is Verdict.DEAD:
            logger.error("notification %s is dead: %s", notification_id, result.error)
    return results


def _release_database_connection() -> None:
    """Give the connection back to the pool while the providers are called.

    A provider call takes tens of milliseconds to seconds; holding a pooled
    connection through it would make the pool, not the providers, the limit on how
    many deliveries run at once. Without a pool the connection is kept: reopening
    it would cost more than it saves.
    """
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


def _message(notification: Notification) -> OutboundMessage:
    return OutboundMessage(
        notification_id=notification.pk,
        channel=notification.channel,
        to=notification.recipient,
        subject=notification.subject,
        body=notification.body,
        metadata=notification.metadata,
    )


def _attempt_row(notification: Notification, record: AttemptRecord) -> DeliveryAttempt:
    if record.result is not None:
        outcome, code, message = AttemptOutcome.SUCCESS, "", ""
    else:
        error = record.error
        outcome = (
            AttemptOutcome.PERMANENT if error and error.permanent else AttemptOutcome.TRANSIENT
        )
        code = (error.code if error else "")[:64]
        message = (error.message if error else "")[:2000]
    return DeliveryAttempt(
        notification_id=notification.pk,  # the id, not the row: cheaper, the same column
        round=notification.attempt_count,
        provider=record.provider,
        outcome=outcome,
        error_code=code,
        error_message=message,
        provider_message_id=(record.result.message_id if record.result else "")[:128],
        latency_ms=record.latency_ms,
        started_at=record.started_at,
    )


def _conclude(
    notification: Notification, outcome: ChainOutcome
) -> tuple[lifecycle.RowVerdict, DeliveryResult]:
    # One INSERT for the whole round's attempts, however many providers it tried,
    # written with the verdict.
    attempts = [_attempt_row(notification, record) for record in outcome.attempts]
    delivered = outcome.delivered
    if delivered is not None and delivered.result is not None:
        message_id = delivered.result.message_id[:128]
        verdict = lifecycle.sent(notification.pk, delivered.provider, message_id, attempts)
        return verdict, DeliveryResult(Verdict.SENT)
    error = _describe(outcome)
    last_provider = outcome.attempts[-1].provider if outcome.attempts else ""
    if outcome.permanent:
        failed = lifecycle.ended(notification.pk, Status.FAILED, error, last_provider, attempts)
        return failed, DeliveryResult(Verdict.FAILED, error=error)
    if notification.attempt_count > settings.DELIVERY_MAX_RETRIES:
        dead = lifecycle.ended(notification.pk, Status.DEAD, error, last_provider, attempts)
        return dead, DeliveryResult(Verdict.DEAD, error=error)
    delay = backoff_seconds(notification.attempt_count)
    next_attempt_at = timezone.now() + timedelta(seconds=delay)
    retrying = lifecycle.retrying(notification.pk, error, next_attempt_at, attempts)
    return retrying, DeliveryResult(Verdict.RETRY, retry_in=delay, error=error)


def _describe(outcome: ChainOutcome) -> str:
    parts = [f"{a.provider}: {a.error.message}" for a in outcome.attempts if a.error is not None]
    return " | ".join(parts) or outcome.last_error.message


def backoff_seconds(rounds_done: int) -> float:
    """Exponential backoff with equal jitter: half fixed, half random.

    The fixed half keeps the delay growing; the random half spreads the retries of
    a burst that failed together so they do not hit the recovering provider at once.
    """
    ceiling: float = min(
        settings.DELIVERY_RETRY_BACKOFF_MAX_SECONDS,
        settings.DELIVERY_RETRY_BACKOFF_SECONDS * 2 ** max(0, rounds_done - 1),
    )
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))  # noqa: S311 - jitter, not security
