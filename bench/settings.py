"""Settings for the ingest benchmark: FlashSend's, plus the baseline endpoint's URL."""

from flashsend.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
# The baseline and FlashSend are measured on equal terms: no throttling on either.
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"auth": None}}  # noqa: F405
LOGGING = {**LOGGING, "root": {"handlers": ["console"], "level": "WARNING"}}  # noqa: F405
