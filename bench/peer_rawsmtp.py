"""The same-run ceiling for `bench/peer.py`: a bare Celery task per email.

No database, no claim, no attempt rows, no Django: one message built with the standard
library and sent over an SMTP connection kept per worker thread (reopened only if the
relay drops it). Run as ``celery -A bench.peer_rawsmtp worker -Q bench.peer.raw``.
"""

from __future__ import annotations

import os
import smtplib
import threading
from email.message import EmailMessage
from email.utils import make_msgid

from celery import Celery

QUEUE = "bench.peer.raw"
SENDER = "FlashSend <noreply@localhost>"

app = Celery("bench_peer_raw", broker=os.environ["CELERY_BROKER_URL"], set_as_current=False)
app.conf.update(
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)

_local = threading.local()


def _connection() -> smtplib.SMTP:
    connection: smtplib.SMTP | None = getattr(_local, "smtp", None)
    if connection is None:
        connection = smtplib.SMTP(
            os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"]), local_hostname="localhost"
        )
        _local.smtp = connection
    return connection


@app.task(name="bench.peer_raw_send")
def raw_send(n: int) -> None:
    message = EmailMessage()
    message["Subject"] = f"peer {n}"
    message["From"] = SENDER
    message["To"] = f"peer{n}@example.com"
    message["Message-ID"] = make_msgid(domain="localhost")
    message.set_content(f"bench {n}")
    try:
        _connection().send_message(message)
    except (smtplib.SMTPServerDisconnected, OSError):
        _local.smtp = None
        _connection().send_message(message)
