"""Logging as configured by the settings."""

from __future__ import annotations

import logging


def test_the_twilio_sdk_does_not_log_every_request() -> None:
    """At INFO, the default LOG_LEVEL, the SDK would log eight lines per SMS."""
    twilio = logging.getLogger("twilio.http_client")
    assert twilio.getEffectiveLevel() == logging.WARNING
