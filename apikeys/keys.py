"""Making and checking key material. Nothing here touches the database."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings

KEY_PREFIX = "fs_"
# 32 random bytes = 256 bits; token_urlsafe encodes them as 43 characters.
RANDOM_BYTES = 32
# "fs_" plus 8 characters of the random part: 48 bits, enough that collisions
# between the keys of one installation are vanishingly rare (and retried if not).
LOOKUP_LENGTH = len(KEY_PREFIX) + 8
KEY_LENGTH = len(KEY_PREFIX) + 43


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(RANDOM_BYTES)


def lookup_prefix(key: str) -> str:
    return key[:LOOKUP_LENGTH]


def key_digest(key: str) -> str:
    secret = settings.APIKEY_HMAC_SECRET.encode()
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def digest_matches(key: str, stored_digest: str) -> bool:
    return hmac.compare_digest(key_digest(key), stored_digest)


def looks_like_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX) and len(value) == KEY_LENGTH
