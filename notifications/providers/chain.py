"""Failover: try each provider of a channel in order within one delivery round."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from notifications.providers.base import OutboundMessage, Provider, ProviderError, SendResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttemptRecord:
    provider: str
    started_at: datetime
    latency_ms: int
    result: SendResult | None = None
    error: ProviderError | None = None


@dataclass
class ChainOutcome:
    attempts: list[AttemptRecord] = field(default_factory=list)

    @property
    def delivered(self) -> AttemptRecord | None:
        last = self.attempts[-1] if self.attempts else None
        return last if last is not None and last.result is not None else None

    @property
    def last_error(self) -> ProviderError:
        for attempt in reversed(self.attempts):
            if attempt.error is not None:
                return attempt.error
        return ProviderError("no provider is configured for this channel", code="no_provider")

    @property
    def permanent(self) -> bool:
        return self.delivered is None and self.last_error.permanent


def send_with_failover(providers: Sequence[Provider], message: OutboundMessage) -> ChainOutcome:
    outcome = ChainOutcome()
    for provider in providers:
        record = _attempt(provider, message)
        outcome.attempts.append(record)
        if record.result is not None:
            return outcome
        if record.error is not None and record.error.permanent:
            # The recipient or message is at fault: another vendor would refuse it too.
            return outcome
        logger.warning(
            "notification %s: %s failed (%s), failing over",
            message.notification_id,
            provider.name,
            record.error.message if record.error else "",
        )
    return outcome


def _attempt(provider: Provider, message: OutboundMessage) -> AttemptRecord:
    started_at = timezone.now()
    began = time.perf_counter()
    try:
        result = provider.send(message)
    except ProviderError as exc:
        return AttemptRecord(provider.name, started_at, _elapsed_ms(began), error=exc)
    except Exception as exc:
        # A bug or an SDK surprise must not lose the message: record it and treat it
        # as transient, so the round fails over and the notification is retried.
        logger.exception("provider %s raised unexpectedly", provider.name)
        error = ProviderError(f"{type(exc).__name__}: {exc}", code="unexpected")
        provider.close()
        return AttemptRecord(provider.name, started_at, _elapsed_ms(began), error=error)
    return AttemptRecord(provider.name, started_at, _elapsed_ms(began), result=result)


def _elapsed_ms(began: float) -> int:
    return max(0, round((time.perf_counter() - began) * 1000))
