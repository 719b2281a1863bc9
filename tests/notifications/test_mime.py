"""The direct plain-text message is Django's, byte for byte, or it is not made at all."""

from __future__ import annotations

import random
import string
from email.utils import formatdate, make_msgid

import pytest
from django.core.mail import EmailMessage
from django.core.mail.message import sanitize_address

from notifications.providers import mime

FROM = "FlashSend <noreply@example.com>"
DATE = formatdate()
MESSAGE_ID = make_msgid(domain="flashsend.example")

SUBJECTS = [
    "",
    "Your code",
    "Your code is 123456",
    "x" * 69,  # the longest that fits
    "  leading and trailing spaces  ",
    "=?utf-8?q?looks_encoded?=",
    'quotes " and \\ backslashes; semicolons: <angle> (paren)',
]
BODIES = [
    "",
    "Your code is 1234.",
    "line one\nline two\n",
    "windows\r\nline ends\r\n",
    "old mac\rline ends\r",
    "mixed\nline\r\nends\rhere",
    ".a line that starts with a dot\n..two\n",
    "Grüße, 你好, emoji 🎉\n",
    "form\x0cfeed and vertical\x0btab",
    "From the start of a line\nFrom here too\n",
    "x" * 998,  # as long as a line may be
    "trailing spaces   \n   \n",
]
RECIPIENTS = [
    "ann@example.com",
    "first.last+tag@sub.example.co.uk",
    "o'brien@example.com",
    "UPPER@EXAMPLE.COM",
    "a!#$%&'*+/=?^_`{|}~-z@x-y.example",
    "Ann Example <ann@example.com>",  # ASCII: Django writes To as it is given
]


def _django(to: str, subject: str, body: str) -> bytes:
    message = EmailMessage(
        subject=subject,
        body=body,
        from_email=FROM,
        to=[to],
        headers={"Date": DATE, "Message-ID": MESSAGE_ID},
    )
    written: bytes = message.message().as_bytes(linesep="\r\n")
    return written


def _direct(to: str, subject: str, body: str) -> bytes | None:
    return mime.plain_text(
        from_header=FROM, to=to, subject=subject, body=body, date=DATE, message_id=MESSAGE_ID
    )


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("body", BODIES)
def test_the_simple_case_is_written_as_django_writes_it(subject: str, body: str) -> None:
    for to in RECIPIENTS:
        assert _direct(to, subject, body) == _django(to, subject, body)


def test_random_simple_messages_match_django() -> None:
    rng = random.Random(7)  # noqa: S311 - test data, not secrets
    alphabet = string.printable + "äöüßéñ€✓\u2028\x85"
    for _ in range(300):
        subject = "".join(rng.choices(string.printable[:95], k=rng.randint(0, 69)))
        body = "".join(rng.choices(alphabet, k=rng.randint(0, 300)))
        direct = _direct("ann@example.com", subject, body)
        assert direct is not None
        assert direct == _django("ann@example.com", subject, body), (subject, body)


@pytest.mark.parametrize(
    ("subject", "body", "to"),
    [
        ("Grüße", "body", "ann@example.com"),  # encoded by Django (RFC 2047)
        ("x" * 70, "body", "ann@example.com"),  # folded by the generator
        ("ok", "y" * 999, "ann@example.com"),  # quoted-printable
        ("ok", "z" * 500 + "é" * 250, "ann@example.com"),  # 1,000 bytes in UTF-8
        ("ok", "lone surrogate \ud800", "ann@example.com"),
        ("tabs\tinside", "body", "ann@example.com"),
        ("ok", "body", "ann@exämple.com"),
        ("ok", "body", "a" * 70 + "@example.com"),  # a To line over 78 characters
    ],
)
def test_anything_else_is_left_to_django(subject: str, body: str, to: str) -> None:
    assert _direct(to, subject, body) is None


@pytest.mark.parametrize(
    "address",
    [*RECIPIENTS[:-1], "a.b.c@d.e", "x@localhost", "dash-in@the-host.example", "n1@1.2.3.4"],
)
def test_a_plain_address_is_what_sanitize_address_returns(address: str) -> None:
    assert mime.envelope_address(address) == sanitize_address(address, "utf-8")


@pytest.mark.parametrize(
    "address",
    [
        "Ann <ann@example.com>",
        '"quoted local"@example.com',
        ".leading@example.com",
        "trailing.@example.com",
        "two..dots@example.com",
        "ann@exämple.com",
        "ann@-dash.example",
        "ann@example.com.",
        "ann@" + "l" * 64 + ".example",
        "ann@example.com\r\nRCPT TO:<eve@example.com>",
        "no-at-sign",
    ],
)
def test_any_other_address_is_left_to_sanitize_address(address: str) -> None:
    assert mime.envelope_address(address) is None


def test_header_fits_only_printable_ascii_on_one_line() -> None:
    assert mime.header_fits("From", FROM)
    assert not mime.header_fits("From", "Grüße <a@example.com>")
    assert not mime.header_fits("From", "x" * 73)
    assert not mime.header_fits("From", "a\r\nBcc: eve@example.com")
