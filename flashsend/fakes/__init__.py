"""Local fakes of the outside world that the real provider SDKs talk to over loopback.

``FakeProviderServer`` speaks Twilio's Messages API and Vonage's SMS API (HTTP or
HTTPS); ``FakeSmtpServer`` is an SMTP relay. ``python -m flashsend.fakes`` runs all
three for a demo and prints the settings that point FlashSend at them.
"""

from flashsend.fakes.http import (
    MODES,
    PROVIDERS,
    Behaviour,
    FakeMessage,
    FakeProviderServer,
    FakeRequest,
    Mode,
    Provider,
)
from flashsend.fakes.smtp import SMTP_MODES, FakeSmtpServer, SmtpBehaviour, SmtpMessage, SmtpMode

__all__ = [
    "MODES",
    "PROVIDERS",
    "SMTP_MODES",
    "Behaviour",
    "FakeMessage",
    "FakeProviderServer",
    "FakeRequest",
    "FakeSmtpServer",
    "Mode",
    "Provider",
    "SmtpBehaviour",
    "SmtpMessage",
    "SmtpMode",
]
