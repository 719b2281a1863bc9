"""Django settings for FlashSend.

Every value comes from the environment (see .env.example for the full list). With
nothing configured FlashSend runs on embedded defaults: SQLite and a filesystem
broker under var/, Django's local-memory cache and secrets generated once. Setting
DATABASE_URL, CELERY_BROKER_URL and REDIS_URL moves the same code onto PostgreSQL,
RabbitMQ and Redis.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from dotenv import load_dotenv

from flashsend import topology
from flashsend.env import (
    ConfigError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_optional,
    env_secret,
    env_str,
)

# Lets model, form and admin classes be subscripted at run time (Foo[Model]).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

# A .env file next to manage.py is read if present; real environment variables win.
load_dotenv(Path(env_str("FLASHSEND_ENV_FILE", str(BASE_DIR / ".env"))), override=False)

VAR_DIR = Path(env_str("FLASHSEND_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY", generated_file=VAR_DIR / "secret_key")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_prometheus",
    "flashsend",
    "accounts",
    "apikeys",
    "notifications",
    "templates_app",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "flashsend.urls"
WSGI_APPLICATION = "flashsend.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "flashsend" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------

DATABASE_URL = env_optional("DATABASE_URL")


def _database() -> dict[str, Any]:
    if DATABASE_URL:
        try:
            config: dict[str, Any] = dict(
                dj_database_url.parse(
                    DATABASE_URL,
                    conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0),
                    conn_health_checks=True,
                )
            )
        except ValueError as exc:
            raise ConfigError(f"DATABASE_URL is not a database URL: {exc}") from None
        if config["ENGINE"].endswith("postgresql") and env_bool("DB_POOL", True):
            _use_connection_pool(config)
        return config
    # Embedded default. WAL lets readers and the single writer overlap, IMMEDIATE
    # takes the write lock at BEGIN (a deferred transaction that upgrades later
    # fails at once with "database is locked" instead of waiting), and the timeout
    # makes web, worker and beat queue for the lock rather than fail.
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "flashsend.sqlite3",
        "OPTIONS": {
            "timeout": env_float("SQLITE_TIMEOUT", 20.0, minimum=0.0),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


def _use_connection_pool(config: dict[str, Any]) -> None:
    """psycopg's pool, shared by the threads of a process.

    A thread-pool worker runs dozens of tasks at once; with a connection per thread
    it would exhaust PostgreSQL's max_connections. Tasks hand their connection back
    while they wait on a provider, so a small pool serves many threads.
    """
    config["CONN_MAX_AGE"] = 0  # Django requires it with a pool: the pool keeps them
    # With a pool, Django turns this into psycopg's check on every checkout, so a
    # database restart costs the next query nothing but a reconnect.
    config["CONN_HEALTH_CHECKS"] = True
    config.setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN_SIZE", 1, minimum=0),
        "max_size": env_int("DB_POOL_MAX_SIZE", 16, minimum=1),
        "timeout": env_float("DB_POOL_TIMEOUT", 10.0, minimum=0.1),
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ----------------------------------------------------------------------

REDIS_URL = env_optional("REDIS_URL")
if REDIS_URL:
    CACHES: dict[str, Any] = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "flashsend",
            "TIMEOUT": 300,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Passwords, i18n, static ------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": env_int("PASSWORD_MIN_LENGTH", 8, minimum=8)},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve static files straight from the apps when collectstatic has not run (tests, dev).
WHITENOISE_USE_FINDERS = True

# --- Security (only what the environment can change) ----------------------------

SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None
)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- REST API -------------------------------------------------------------------

REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.JWTAuthentication",
        "apikeys.authentication.ApiKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "flashsend.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        # Brute-force protection for login and sign-up, per client address.
        "auth": env_str("AUTH_RATE_LIMIT", "20/minute"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

JWT_SECRET = env_secret("JWT_SECRET", generated_file=VAR_DIR / "jwt_secret")
JWT_EXPIRATION_HOURS = env_float("JWT_EXPIRATION_HOURS", 24.0, minimum=0.01, maximum=24 * 30)
JWT_REFRESH_DAYS = env_float("JWT_REFRESH_DAYS", 7.0, minimum=0.01, maximum=365)
SIMPLE_JWT: dict[str, Any] = {
    "ACCESS_TOKEN_LIFETIME": timedelta(hours=JWT_EXPIRATION_HOURS),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=JWT_REFRESH_DAYS),
    "ALGORITHM": "HS256",
    "SIGNING_KEY": JWT_SECRET,
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
    "UPDATE_LAST_LOGIN": False,
    "ROTATE_REFRESH_TOKENS": False,
}

# API keys are stored only as HMAC-SHA256 under this secret, kept apart from
# SECRET_KEY so that rotating one does not invalidate the other.
APIKEY_HMAC_SECRET = env_secret("APIKEY_HMAC_SECRET", generated_file=VAR_DIR / "apikey_hmac_secret")
# last_used_at is written at most this often per key, not on every request.
APIKEY_LAST_USED_RESOLUTION_SECONDS = env_int("APIKEY_LAST_USED_RESOLUTION_SECONDS", 60, minimum=0)

SPECTACULAR_SETTINGS: dict[str, Any] = {
    "TITLE": "FlashSend API",
    "DESCRIPTION": (
        "Send SMS and email now or at a set time. Authenticate with a JWT "
        "(`Authorization: Bearer …`) or an API key (`Authorization: Api-Key fs_…` or "
        "`X-API-Key: fs_…`). Errors are JSON with an `error` message."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "flashsend.api.schema.strip_optional_slash",
        "flashsend.api.schema.document_errors",
    ],
}

# --- Celery ---------------------------------------------------------------------

CELERY_BROKER_URL = env_optional("CELERY_BROKER_URL")
BROKER_DIR = VAR_DIR / "broker"
if not CELERY_BROKER_URL:
    # Embedded default: kombu's filesystem transport, no server needed.
    CELERY_BROKER_URL = "filesystem://"
    for _sub in ("queue", "processed", "control"):
        (BROKER_DIR / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        # Broadcast (remote control) messages; kombu's default is ./control in the CWD.
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    # Publisher confirms: apply_async returns only once RabbitMQ has the message, so
    # a row is never marked published for a message the broker dropped.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_BROKER_CONNECTION_TIMEOUT = env_float("CELERY_BROKER_CONNECTION_TIMEOUT", 4.0, minimum=0.1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Notification tasks keep no results: the database row is the result.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A worker's delivery engine (notifications/engine.py) keeps up to two claimed rows
# per thread; a third message per thread waits in hand, so the next claim never
# waits on the broker.
CELERY_WORKER_PREFETCH_MULTIPLIER = 3
# On a lost broker connection, unacknowledged tasks come back through redelivery;
# the row's claim keeps the redelivered copy from sending again. (Celery 6's default.)
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# After a reconnect Celery starts with a prefetch of 1 and raises it as tasks finish,
# by a basic.qos sent from the thread that finished the task. Under the thread pool
# that call waits for a reply only the consumer's thread reads: measured with
# bench/outage.py, 10 of 16 threads hung and nothing was delivered for 3 minutes
# after RabbitMQ came back. Without the reduction the worker resumes at once.
CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION = False
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Topology: a topic exchange routes each task to "<channel>.<priority>"; every queue
# dead-letters to flashsend.dlx -> flashsend.dead. Quorum queues by one setting.
RABBITMQ_QUORUM_QUEUES = env_bool("RABBITMQ_QUORUM_QUEUES", False)
CELERY_TASK_QUEUES = topology.task_queues(quorum=RABBITMQ_QUORUM_QUEUES)
CELERY_TASK_DEFAULT_QUEUE = topology.DEFAULT_QUEUE
CELERY_TASK_DEFAULT_EXCHANGE = topology.EXCHANGE_NAME
CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
CELERY_TASK_DEFAULT_ROUTING_KEY = topology.DEFAULT_QUEUE
CELERY_TASK_CREATE_MISSING_QUEUES = False
# Publishing happens inside an API request: fail fast and let the sweeper re-publish
# rather than hold the client while the broker is away.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": env_int("PUBLISH_MAX_RETRIES", 1, minimum=0),
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

# --- Delivery -------------------------------------------------------------------

# Retries after the first round; a notification gets DELIVERY_MAX_RETRIES + 1 rounds.
DELIVERY_MAX_RETRIES = env_int("DELIVERY_MAX_RETRIES", 5, minimum=0, maximum=50)
# Backoff before retry n is min(MAX, BASE * 2**(n-1)), with equal jitter. The cap
# stays well under RabbitMQ's consumer timeout (30 min), since a worker holds a
# retry's message unacknowledged until it is due.
DELIVERY_RETRY_BACKOFF_SECONDS = env_float("DELIVERY_RETRY_BACKOFF_SECONDS", 2.0, minimum=0.01)
DELIVERY_RETRY_BACKOFF_MAX_SECONDS = env_float(
    "DELIVERY_RETRY_BACKOFF_MAX_SECONDS", 300.0, minimum=0.01, maximum=1200.0
)
# Every provider call gives up after this long.
PROVIDER_TIMEOUT_SECONDS = env_float("PROVIDER_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=120.0)
# A task is killed after this long (prefork enforces it; under the thread pool the
# per-call provider timeouts bound a task instead). The claim lease is longer, so a
# live worker never has its row taken over, while a killed worker's row is recovered.
DELIVERY_TASK_TIME_LIMIT_SECONDS = env_int("DELIVERY_TASK_TIME_LIMIT_SECONDS", 120, minimum=5)
DELIVERY_CLAIM_LEASE_SECONDS = env_int(
    "DELIVERY_CLAIM_LEASE_SECONDS", 300, minimum=DELIVERY_TASK_TIME_LIMIT_SECONDS + 1
)
# The sweeper re-publishes queued rows whose publish never happened after this grace.
SWEEPER_INTERVAL_SECONDS = env_float("SWEEPER_INTERVAL_SECONDS", 10.0, minimum=0.5)
SWEEPER_GRACE_SECONDS = env_float("SWEEPER_GRACE_SECONDS", 10.0, minimum=0.0)
SWEEPER_BATCH_SIZE = env_int("SWEEPER_BATCH_SIZE", 500, minimum=1)
# One sweep keeps publishing batches until nothing is left or this budget is spent:
# after a broker outage thousands of rows wait, not one batch.
SWEEPER_RUN_BUDGET_SECONDS = env_float("SWEEPER_RUN_BUDGET_SECONDS", 5.0, minimum=0.1)
# A queued row published this long ago and still unclaimed is published again (its
# message was lost after the broker took it). Long enough not to duplicate a normal
# backlog's messages often; a duplicate is harmless anyway (the claim).
SWEEPER_STALE_QUEUED_SECONDS = env_int("SWEEPER_STALE_QUEUED_SECONDS", 900, minimum=60)
# The API hands accepted notifications to a publishing thread of its own process,
# which publishes them in batches (one wait for the broker's confirms per batch) and
# marks them published; the request does not wait for the broker. 0: publish and
# mark in the request. Either way a publish that never happens is the sweeper's.
API_PUBLISH_IN_BACKGROUND = env_bool("API_PUBLISH_IN_BACKGROUND", True)
# Most notifications one background batch publishes, and most waiting in one process
# (beyond that, new ones are left to the sweeper rather than held in memory).
API_PUBLISH_BATCH_SIZE = env_int("API_PUBLISH_BATCH_SIZE", 500, minimum=1)
API_PUBLISH_MAX_PENDING = env_int("API_PUBLISH_MAX_PENDING", 10000, minimum=1)
# Scheduling: how often celery-beat runs the scan for due rows, how many rows one
# transaction dispatches, and how long one scan may go on before leaving the rest
# to the next.
SCHEDULER_INTERVAL_SECONDS = env_float("SCHEDULER_INTERVAL_SECONDS", 5.0, minimum=1.0)
SCHEDULER_BATCH_SIZE = env_int("SCHEDULER_BATCH_SIZE", 500, minimum=1, maximum=10_000)
SCHEDULER_RUN_BUDGET_SECONDS = env_float("SCHEDULER_RUN_BUDGET_SECONDS", 30.0, minimum=1.0)
SCHEDULE_MAX_AHEAD_DAYS = env_int("SCHEDULE_MAX_AHEAD_DAYS", 365, minimum=1)
# Operators' replays of dead notifications are paced to this many a second.
REPLAY_RATE_PER_SECOND = env_float("REPLAY_RATE_PER_SECOND", 50.0, minimum=0.1)
SMS_MAX_LENGTH = 1600
EMAIL_BODY_MAX_LENGTH = env_int("EMAIL_BODY_MAX_LENGTH", 100_000, minimum=1)
METADATA_MAX_BYTES = env_int("METADATA_MAX_BYTES", 4096, minimum=2)

# --- Providers ------------------------------------------------------------------

SMS_PROVIDERS = env_list("SMS_PROVIDERS", ["twilio", "vonage"])
EMAIL_PROVIDERS = env_list("EMAIL_PROVIDERS", ["smtp"])
for _name in SMS_PROVIDERS:
    if _name not in ("twilio", "vonage", "console"):
        raise ConfigError(f"SMS_PROVIDERS names {_name!r}; known: twilio, vonage, console.")
for _name in EMAIL_PROVIDERS:
    if _name not in ("smtp", "console"):
        raise ConfigError(f"EMAIL_PROVIDERS names {_name!r}; known: smtp, console.")

TWILIO_ACCOUNT_SID = env_str("TWILIO_ACCOUNT_SID", "")
TWILIO_AUTH_TOKEN = env_optional("TWILIO_AUTH_TOKEN") or ""
TWILIO_PHONE_NUMBER = env_str("TWILIO_PHONE_NUMBER", "")
TWILIO_MESSAGING_SERVICE_SID = env_str("TWILIO_MESSAGING_SERVICE_SID", "")
TWILIO_BASE_URL = env_str("TWILIO_BASE_URL", "")  # e.g. a local fake; empty = Twilio's own

VONAGE_API_KEY = env_str("VONAGE_API_KEY", "")
VONAGE_API_SECRET = env_optional("VONAGE_API_SECRET") or ""
VONAGE_FROM = env_str("VONAGE_FROM", "FlashSend")
VONAGE_REST_HOST = env_str("VONAGE_REST_HOST", "rest.nexmo.com")
VONAGE_CA_BUNDLE = env_str("VONAGE_CA_BUNDLE", "")

SMTP_HOST = env_str("SMTP_HOST", "")
SMTP_PORT = env_int("SMTP_PORT", 587, minimum=1, maximum=65535)
SMTP_EMAIL = env_str("SMTP_EMAIL", "")
SMTP_USERNAME = env_str("SMTP_USERNAME", SMTP_EMAIL)
SMTP_PASSWORD = env_optional("SMTP_APP_PASSWORD") or env_optional("SMTP_PASSWORD") or ""
SMTP_FROM = env_str("SMTP_FROM", SMTP_EMAIL or "FlashSend <noreply@localhost>")
SMTP_SECURITY = env_choice(
    "SMTP_SECURITY",
    "ssl" if SMTP_PORT == 465 else ("starttls" if SMTP_PORT == 587 else "none"),
    ("none", "starttls", "ssl"),
)
SMTP_USE_TLS = SMTP_SECURITY == "starttls"
SMTP_USE_SSL = SMTP_SECURITY == "ssl"
# A kept SMTP session idle this long is checked with a NOOP before its next message.
SMTP_IDLE_CHECK_SECONDS = 5.0

# --- Logging --------------------------------------------------------------------

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # The Twilio SDK logs every request and response at INFO, eight lines each
        # (URL, headers, status): noise per SMS at the default level, and CPU the
        # sending threads share. Its warnings and errors still come through.
        "twilio.http_client": {"level": "WARNING"},
    },
}
