"""Fixtures for pipeline tests: fake providers wired into the settings, a worker, and
control of the local RabbitMQ. Loaded for the whole suite from tests/conftest.py."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from flashsend.fakes import FakeProviderServer, FakeSmtpServer
from tests.pipeline import purge_queues, running_worker


@pytest.fixture
def twilio_fake(settings: Any) -> Iterator[FakeProviderServer]:
    with FakeProviderServer(account_sid="ACtest", auth_token="twilio-token") as server:
        settings.TWILIO_ACCOUNT_SID = "ACtest"
        settings.TWILIO_AUTH_TOKEN = "twilio-token"
        settings.TWILIO_PHONE_NUMBER = "+15005550006"
        settings.TWILIO_MESSAGING_SERVICE_SID = ""
        settings.TWILIO_BASE_URL = server.url
        yield server


@pytest.fixture
def vonage_fake(settings: Any) -> Iterator[FakeProviderServer]:
    with FakeProviderServer(tls=True, api_key="vkey", api_secret="vsecret") as server:
        settings.VONAGE_API_KEY = "vkey"
        settings.VONAGE_API_SECRET = "vsecret"
        settings.VONAGE_FROM = "FlashSend"
        settings.VONAGE_REST_HOST = server.host_port
        settings.VONAGE_CA_BUNDLE = str(server.ca_file)
        yield server


@pytest.fixture
def smtp_fake(settings: Any) -> Iterator[FakeSmtpServer]:
    with FakeSmtpServer() as server:
        settings.SMTP_HOST = server.host
        settings.SMTP_PORT = server.port
        settings.SMTP_USE_TLS = False
        settings.SMTP_USE_SSL = False
        settings.SMTP_FROM = "FlashSend <noreply@example.com>"
        yield server


@pytest.fixture
def providers(
    settings: Any,
    twilio_fake: FakeProviderServer,
    vonage_fake: FakeProviderServer,
    smtp_fake: FakeSmtpServer,
) -> dict[str, Any]:
    settings.SMS_PROVIDERS = ["twilio", "vonage"]
    settings.EMAIL_PROVIDERS = ["smtp"]
    settings.PROVIDER_TIMEOUT_SECONDS = 2.0
    return {"twilio": twilio_fake, "vonage": vonage_fake, "smtp": smtp_fake}


@pytest.fixture
def fast_retries(settings: Any) -> None:
    settings.DELIVERY_MAX_RETRIES = 2
    settings.DELIVERY_RETRY_BACKOFF_SECONDS = 0.05
    settings.DELIVERY_RETRY_BACKOFF_MAX_SECONDS = 0.2


class RabbitMQControl:
    """Stops and starts the local RabbitMQ application (the node stays up)."""

    def __init__(self, ctl: str) -> None:
        self._ctl = ctl

    def _run(self, *args: str) -> None:
        subprocess.run([self._ctl, "--quiet", *args], check=True, timeout=120, capture_output=True)  # noqa: S603

    def stop(self) -> None:
        self._run("stop_app")

    def start(self) -> None:
        self._run("start_app")
        self._run("await_startup")


@pytest.fixture
def rabbitmq_control() -> Iterator[RabbitMQControl]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("rabbitmqctl is not installed here; the broker cannot be stopped")
    control = RabbitMQControl(ctl)
    try:
        yield control
    finally:
        control.start()  # never leave the broker down for the next test


@pytest.fixture
def worker(transactional_db: Any, providers: dict[str, Any]) -> Iterator[Any]:
    purge_queues()
    with running_worker() as running:
        yield running
