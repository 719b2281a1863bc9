"""gunicorn settings, read from the environment like everything else."""

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
