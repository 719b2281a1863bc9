"""Recipient validation and normalisation, per channel."""

from __future__ import annotations

import phonenumbers
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import EmailValidator
from rest_framework import serializers

_email_validator = EmailValidator()


def normalize_phone(value: str) -> str:
    """E.164, or a ValidationError that says what was wrong."""
    raw = value.strip()
    if not raw.startswith("+"):
        raise serializers.ValidationError(
            "Phone numbers must be in international format with the country code, "
            "e.g. +14155552671."
        )
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        raise serializers.ValidationError(f"Not a phone number: {exc}.") from None
    if not phonenumbers.is_valid_number(number):
        raise serializers.ValidationError(f"{raw} is not a valid phone number.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(value: str) -> str:
    raw = value.strip()
    try:
        _email_validator(raw)
    except DjangoValidationError:
        raise serializers.ValidationError(f"{raw!r} is not a valid email address.") from None
    local, _, domain = raw.rpartition("@")
    # The domain is case-insensitive; the local part is the receiving server's business.
    return f"{local}@{domain.lower()}"
