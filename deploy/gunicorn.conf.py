"""gunicorn settings, read from the environment like everything else."""

import gc
import multiprocessing
import os

bind = os.environ.get("FLASHSEND_BIND", "127.0.0.1:8000")
# Two workers per core is gunicorn's advice for sync workers; the API spends most
# of each request waiting on the database.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("WEB_THREADS", "1"))
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
graceful_timeout = 10
accesslog = "-" if os.environ.get("WEB_ACCESS_LOG", "1") == "1" else None
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


# Python's cyclic garbage collector walks every tracked object in a full (generation 2)
# pass: in a worker with Django, DRF and the apps loaded that took 50-190 ms here,
# and each pass stalled the requests in hand (seen as the API's p99). Objects that
# live as long as the worker are frozen out of the collector's reach twice: once the
# app is loaded, and once after the first requests have built the lazy parts (the URL
# resolver, DRF's settings, cached queries).
FREEZE_AFTER_REQUESTS = 200


def post_worker_init(worker: object) -> None:
    gc.freeze()


def post_request(worker: object, req: object, environ: object, resp: object) -> None:
    _served[0] += 1
    if _served[0] == FREEZE_AFTER_REQUESTS:
        gc.collect()
        gc.freeze()


_served = [0]
