"""The baseline: a bare Celery task making the same provider call FlashSend makes.

No database, no claim, no attempt rows: one HTTP POST to the fake Twilio API on a
connection kept per worker thread. FlashSend's figures are reported as a ratio of
this task's, measured in the same run, on the same broker, pool and concurrency.
"""

from __future__ import annotations

import os
import threading

import requests
from celery import Celery

# Not the current app: FlashSend's shared tasks, published from the same benchmark
# process, must keep resolving to FlashSend's app and its queue declarations.
app = Celery("bench_raw", broker=os.environ["CELERY_BROKER_URL"], set_as_current=False)
app.conf.update(
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue="bench.raw",
    worker_hijack_root_logger=False,
)

_local = threading.local()


def _session() -> requests.Session:
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


@app.task(name="bench.raw_send")
def raw_send(n: int) -> None:
    base = os.environ["TWILIO_BASE_URL"]
    sid = os.environ["TWILIO_ACCOUNT_SID"]
    response = _session().post(
        f"{base}/2010-04-01/Accounts/{sid}/Messages.json",
        data={"To": "+14155552671", "From": "+15005550006", "Body": f"raw {n}"},
        auth=(sid, os.environ["TWILIO_AUTH_TOKEN"]),
        timeout=10,
    )
    response.raise_for_status()
