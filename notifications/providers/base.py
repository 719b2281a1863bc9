"""The provider interface, and the one error type every vendor class raises."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OutboundMessage:
    notification_id: int
    channel: str
    to: str
    body: str
    subject: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    message_id: str


class ProviderError(Exception):
    """A provider could not take the message.

    ``permanent`` means the message itself is at fault (an invalid number, a rejected
    address): no other provider and no retry will do better, so the chain stops and
    the notification fails. Everything else (outages, timeouts, rate limits, a
    misconfigured account) is transient: the chain fails over, and the notification
    is retried later if every provider failed.
    """

    def __init__(self, message: str, *, permanent: bool = False, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.code = code


class Provider(abc.ABC):
    """One vendor. Instances are used by one thread at a time and reused across
    messages, so they keep their HTTP or SMTP connections open."""

    name: str = ""
    channel: str = ""

    @abc.abstractmethod
    def send(self, message: OutboundMessage) -> SendResult:
        """Hand the message over or raise ProviderError."""

    def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release connections; the next send opens them again."""
