"""Provider HTTP sessions read proxies and CA bundles from the environment once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from notifications.providers.base import OutboundMessage
from notifications.providers.twilio import TwilioProvider


class _RecordingProxy(BaseHTTPRequestHandler):
    """A forward proxy that answers for Twilio itself and records request lines."""

    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(self.requestline)
        body = json.dumps({"sid": "SMproxied", "status": "queued"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    _RecordingProxy.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def twilio_settings(settings: Any) -> Any:
    settings.TWILIO_ACCOUNT_SID = "ACtest"
    settings.TWILIO_AUTH_TOKEN = "token"
    settings.TWILIO_PHONE_NUMBER = "+15005550006"
    settings.TWILIO_MESSAGING_SERVICE_SID = ""
    settings.TWILIO_BASE_URL = "http://api.twilio.invalid"
    return settings


MESSAGE = OutboundMessage(notification_id=1, channel="sms", to="+14155552671", body="hi")


def test_twilio_goes_through_the_proxy_named_in_the_environment(
    twilio_settings: Any, proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    provider = TwilioProvider()
    # Changing the environment afterwards changes nothing: it was read at start.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")

    result = provider.send(MESSAGE)

    assert result.message_id == "SMproxied"
    assert _RecordingProxy.seen == [
        "POST http://api.twilio.invalid/2010-04-01/Accounts/ACtest/Messages.json HTTP/1.1"
    ]


def test_no_proxy_and_ca_bundle_are_honoured(
    twilio_settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "api.twilio.invalid")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))

    session = TwilioProvider()._client.http_client.session

    assert "http" not in session.proxies
    assert session.verify == str(bundle)
    assert session.trust_env is False
