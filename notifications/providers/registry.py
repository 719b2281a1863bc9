"""Which providers serve which channel, built lazily once per worker thread.

Provider objects hold connections (an HTTP pool, an SMTP session) that are not safe
to share between threads, so each thread of the worker's pool gets its own chain.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable

from django.conf import settings
from django.core.signals import setting_changed

from notifications.providers.base import Provider
from notifications.providers.console import ConsoleProvider

logger = logging.getLogger(__name__)


def _twilio() -> Provider | None:
    from notifications.providers import twilio

    return twilio.TwilioProvider() if twilio.is_configured() else None


def _vonage() -> Provider | None:
    from notifications.providers import vonage

    return vonage.VonageProvider() if vonage.is_configured() else None


def _smtp() -> Provider | None:
    from notifications.providers import email

    return email.SmtpProvider() if email.is_configured() else None


FACTORIES: dict[str, dict[str, Callable[[], Provider | None]]] = {
    "sms": {"twilio": _twilio, "vonage": _vonage, "console": lambda: ConsoleProvider("sms")},
    "email": {"smtp": _smtp, "console": lambda: ConsoleProvider("email")},
}

_local = threading.local()


def chain_for(channel: str) -> list[Provider]:
    if getattr(_local, "generation", None) != _Generation.value:
        reset()
        _local.generation = _Generation.value
    chains: dict[str, list[Provider]] | None = getattr(_local, "chains", None)
    if chains is None:
        chains = _local.chains = {}
    if channel not in chains:
        chains[channel] = _build(channel)
    return chains[channel]


def _build(channel: str) -> list[Provider]:
    names = settings.SMS_PROVIDERS if channel == "sms" else settings.EMAIL_PROVIDERS
    chain: list[Provider] = []
    for name in names:
        provider = FACTORIES[channel][name]()
        if provider is None:
            logger.warning("%s provider %r has no credentials configured; skipped", channel, name)
            continue
        chain.append(provider)
    if not chain:
        logger.warning("no %s provider configured: messages go to the console outbox", channel)
        chain.append(ConsoleProvider(channel))
    return chain


def preload() -> None:
    """Import the configured vendors' SDKs now, at worker start, so the first
    message a worker sends does not pay for importing them (close to a second)."""
    names = {*settings.SMS_PROVIDERS, *settings.EMAIL_PROVIDERS}
    modules = {
        "twilio": ["notifications.providers.twilio", "twilio.rest.api.v2010.account.message"],
        "vonage": ["notifications.providers.vonage"],
        "smtp": ["notifications.providers.email"],
    }
    for name, module_names in modules.items():
        if name in names:
            for module_name in module_names:
                importlib.import_module(module_name)


def reset() -> None:
    """Drop this thread's providers (after a settings change, or in tests)."""
    chains: dict[str, list[Provider]] | None = getattr(_local, "chains", None)
    for chain in (chains or {}).values():
        for provider in chain:
            provider.close()
    _local.chains = None


class _Generation:
    """Settings changes (tests override provider settings) invalidate every thread's
    chains: each thread compares its generation before use."""

    value = 0


def _on_setting_changed(**kwargs: object) -> None:
    _Generation.value += 1


setting_changed.connect(_on_setting_changed)
