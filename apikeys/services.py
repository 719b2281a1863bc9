"""API key writes: create, revoke, authenticate, record use."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework import exceptions

from accounts.models import User
from apikeys import keys
from apikeys.models import ApiKey

_CREATE_ATTEMPTS = 5


def apikey_create(*, user: User, name: str) -> tuple[ApiKey, str]:
    """Create a key and return it with its clear text, which is never stored."""
    for _ in range(_CREATE_ATTEMPTS):
        raw = keys.generate_key()
        try:
            with transaction.atomic():
                api_key = ApiKey.objects.create(
                    user=user,
                    name=name,
                    prefix=keys.lookup_prefix(raw),
                    key_hash=keys.key_digest(raw),
                )
        except IntegrityError:
            continue  # lookup prefix collision: draw again
        return api_key, raw
    raise RuntimeError("could not draw a unique API key prefix")


def apikey_revoke(*, user: User, key_id: int) -> ApiKey:
    try:
        api_key = ApiKey.objects.get(id=key_id, user=user)
    except ApiKey.DoesNotExist:
        # Someone else's key and no key at all look the same from outside.
        raise exceptions.NotFound("No API key with this id.") from None
    if api_key.revoked_at is None:
        ApiKey.objects.filter(id=api_key.id, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def apikey_authenticate(*, raw: str) -> ApiKey | None:
    """The active key matching ``raw``, or None. Constant-time on the secret part."""
    if not keys.looks_like_key(raw):
        return None
    api_key = (
        ApiKey.objects.select_related("user")
        .filter(prefix=keys.lookup_prefix(raw), revoked_at__isnull=True)
        .first()
    )
    if api_key is None or not keys.digest_matches(raw, api_key.key_hash):
        return None
    if not api_key.user.is_active:
        return None
    apikey_touch(api_key=api_key)
    return api_key


def apikey_touch(*, api_key: ApiKey) -> None:
    """Record use, writing at most once per resolution window per key.

    A write on every request would turn each authenticated read into a write
    and a hot row; the conditional UPDATE also makes concurrent requests agree
    on one writer without a lock.
    """
    now = timezone.now()
    resolution = timedelta(seconds=settings.APIKEY_LAST_USED_RESOLUTION_SECONDS)
    if api_key.last_used_at is not None and now - api_key.last_used_at < resolution:
        return
    ApiKey.objects.filter(id=api_key.id).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - resolution)
    ).update(last_used_at=now)
    api_key.last_used_at = now
