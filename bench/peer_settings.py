"""Django settings for the django-post_office side of `bench/peer.py`.

A minimal project with post_office installed, its own database (``flashsend_peer``) and
Django's SMTP backend pointed at the benchmark's fake SMTP sink. post_office itself is not
a FlashSend dependency: `bench/peer.py` installs it into ``var/bench-peer`` and puts that
directory on PYTHONPATH of the processes that use these settings, and nowhere else.

Read from the environment (set by `bench/peer.py`):

- ``PEER_DATABASE_URL``: the post_office database;
- ``PEER_SMTP_PORT``: the fake SMTP sink's port on 127.0.0.1;
- ``PEER_BATCH_SIZE``, ``PEER_THREADS_PER_PROCESS``: post_office's ``BATCH_SIZE`` and
  ``THREADS_PER_PROCESS``, left out of ``POST_OFFICE`` when unset so that its own
  defaults (100 and 5) apply.
"""

from __future__ import annotations

import os
from typing import Any

import dj_database_url

SECRET_KEY = "bench-peer-not-secret"  # noqa: S105 - a throwaway benchmark project
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["django.contrib.contenttypes", "post_office"]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {},
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("PEER_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flashsend_peer")
    )
}

EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = int(os.environ.get("PEER_SMTP_PORT", "2525"))
EMAIL_USE_TLS = False
EMAIL_USE_SSL = False
EMAIL_HOST_USER = ""
EMAIL_HOST_PASSWORD = ""  # the fake sink has no AUTH
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = "FlashSend <noreply@localhost>"

POST_OFFICE: dict[str, Any] = {}
if os.environ.get("PEER_BATCH_SIZE"):
    POST_OFFICE["BATCH_SIZE"] = int(os.environ["PEER_BATCH_SIZE"])
if os.environ.get("PEER_THREADS_PER_PROCESS"):
    POST_OFFICE["THREADS_PER_PROCESS"] = int(os.environ["PEER_THREADS_PER_PROCESS"])

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
