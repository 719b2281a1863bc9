"""The provider used when no vendor is configured: it logs and stores the message.

It makes a fresh checkout deliver something visible without credentials; messages
are appended to var/outbox.jsonl as well as logged.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid

from django.conf import settings
from django.utils import timezone

from notifications.providers.base import OutboundMessage, Provider, SendResult

logger = logging.getLogger("flashsend.outbox")
_write_lock = threading.Lock()


class ConsoleProvider(Provider):
    name = "console"

    def __init__(self, channel: str) -> None:
        self.channel = channel

    def send(self, message: OutboundMessage) -> SendResult:
        message_id = f"console-{uuid.uuid4().hex}"
        record = {
            "id": message_id,
            "notification": message.notification_id,
            "channel": message.channel,
            "to": message.to,
            "subject": message.subject,
            "body": message.body,
            "at": timezone.now().isoformat(),
        }
        logger.info("console %s to %s: %s", message.channel, message.to, message.body[:200])
        with _write_lock, (settings.VAR_DIR / "outbox.jsonl").open("a") as outbox:
            outbox.write(json.dumps(record) + "\n")
        return SendResult(message_id=message_id)
