"""Run a Twilio fake (HTTP), a Vonage fake (HTTPS) and an SMTP fake until Ctrl-C/SIGTERM.

    python -m flashsend.fakes [--twilio-port 8025] [--vonage-port 8026] [--smtp-port 1025]
                              [--delay-ms 0] [--cert-dir var/fakes] [--enforce-credentials]

Prints the environment that points FlashSend at them, one ``NAME=value`` a line (usable
as a ``.env`` file). Without ``--enforce-credentials`` any credentials are accepted
(and the SMTP relay needs no login); with it only the printed ones, and the relay
requires AUTH. The SMS fakes' behaviour can be changed while running through their
control endpoints, e.g. ``curl -X POST http://127.0.0.1:8025/_fake/behaviour -d
'{"provider": "twilio", "mode": "error"}'``. Modes: ok, error, timeout, ratelimit,
reject, internal, and for Vonage also partial (``"accepted_parts": 1``: a long text's
first part accepted, the later ones refused as Throttled); see
``FakeProviderServer.set_behaviour``. The SMTP relay has no control endpoint.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Final

from flashsend.fakes.http import FakeProviderServer
from flashsend.fakes.smtp import FakeSmtpServer

# Well-formed demo credentials (Twilio SIDs are "AC" + 32 hex digits).
DEMO_ACCOUNT_SID: Final = "AC" + "fa4e" * 8
DEMO_AUTH_TOKEN: Final = "fake-twilio-auth-token"  # noqa: S105 (public demo value)
DEMO_PHONE_NUMBER: Final = "+15005550006"  # Twilio's "valid sender" magic test number
DEMO_API_KEY: Final = "fakevonagekey"
DEMO_API_SECRET: Final = "fake-vonage-secret"  # noqa: S105 (public demo value)
DEMO_FROM: Final = "FlashSend"
DEMO_SMTP_USERNAME: Final = "flashsend"
DEMO_SMTP_PASSWORD: Final = "fake-smtp-password"  # noqa: S105 (public demo value)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flashsend.fakes",
        description="Local Twilio, Vonage and SMTP fakes for FlashSend (loopback only).",
    )
    parser.add_argument("--twilio-port", type=_port, default=8025, help="0 picks a free port")
    parser.add_argument("--vonage-port", type=_port, default=8026, help="0 picks a free port")
    parser.add_argument("--smtp-port", type=_port, default=1025, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=int, default=0, help="latency added to every answer")
    parser.add_argument("--cert-dir", type=Path, default=Path("var/fakes"))
    parser.add_argument(
        "--enforce-credentials",
        action="store_true",
        help="accept only the printed credentials (default: any)",
    )
    return parser


def environment(
    twilio: FakeProviderServer, vonage: FakeProviderServer, smtp: FakeSmtpServer
) -> dict[str, str]:
    """The settings that point FlashSend's providers at the running fakes."""
    return {
        "TWILIO_BASE_URL": twilio.url,
        "TWILIO_ACCOUNT_SID": DEMO_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": DEMO_AUTH_TOKEN,
        "TWILIO_PHONE_NUMBER": DEMO_PHONE_NUMBER,
        "VONAGE_REST_HOST": vonage.host_port,
        "VONAGE_CA_BUNDLE": str(Path(vonage.ca_file).resolve()),
        "VONAGE_API_KEY": DEMO_API_KEY,
        "VONAGE_API_SECRET": DEMO_API_SECRET,
        "VONAGE_FROM": DEMO_FROM,
        "SMTP_HOST": smtp.host,
        "SMTP_PORT": str(smtp.port),
        "SMTP_SECURITY": "none",  # the fake relay offers no STARTTLS
        "SMTP_USERNAME": DEMO_SMTP_USERNAME,  # AUTH over plain SMTP; fine on loopback
        "SMTP_PASSWORD": DEMO_SMTP_PASSWORD,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    enforce = args.enforce_credentials
    twilio = FakeProviderServer(
        port=args.twilio_port,
        account_sid=DEMO_ACCOUNT_SID if enforce else None,
        auth_token=DEMO_AUTH_TOKEN if enforce else None,
    )
    vonage = FakeProviderServer(
        port=args.vonage_port,
        tls=True,
        cert_dir=args.cert_dir,
        api_key=DEMO_API_KEY if enforce else None,
        api_secret=DEMO_API_SECRET if enforce else None,
    )
    smtp = FakeSmtpServer(
        port=args.smtp_port,
        username=DEMO_SMTP_USERNAME if enforce else None,
        password=DEMO_SMTP_PASSWORD if enforce else None,
    )
    try:
        twilio.set_behaviour("twilio", delay_ms=args.delay_ms)
        vonage.set_behaviour("vonage", delay_ms=args.delay_ms)
        smtp.set_behaviour(delay_ms=args.delay_ms)
    except ValueError as exc:
        print(f"flashsend.fakes: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with ExitStack() as running:
        try:
            for server in (twilio, vonage, smtp):
                running.enter_context(server)
        except OSError as exc:
            print(f"flashsend.fakes: cannot start: {exc}", file=sys.stderr)
            return 1
        for name, value in environment(twilio, vonage, smtp).items():
            print(f"{name}={shlex.quote(value)}")
        sys.stdout.flush()
        print("flashsend.fakes: running; Ctrl-C stops.", file=sys.stderr, flush=True)
        stop.wait()  # a signal handler sets it; nothing else to do meanwhile
    print("flashsend.fakes: stopped.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
