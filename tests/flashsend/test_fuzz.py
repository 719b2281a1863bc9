"""Schema-driven fuzzing of the whole API with schemathesis, authenticated.

Every operation in the OpenAPI schema is called with generated inputs, valid and
invalid; no answer may be a server error and every answer must match the schema
(status code documented, JSON body of the documented shape).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core.cache import cache
from hypothesis import HealthCheck, settings
from rest_framework_simplejwt.tokens import AccessToken
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from flashsend.wsgi import application
from tests.factories import UserFactory

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)

# The WSGI app is called directly (not through Django's test client), so it opens and
# closes database connections as in production; no test-wide transaction can wrap that.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def bearer() -> dict[str, str]:
    user = UserFactory.create()
    return {"Authorization": f"Bearer {AccessToken.for_user(user)}"}


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_never_fails_and_matches_its_schema(case: Any, bearer: dict[str, str]) -> None:
    cache.clear()  # rate limits would otherwise answer most generated logins with 429
    headers = dict(case.headers or {})
    headers.setdefault("Authorization", bearer["Authorization"])
    case.call_and_validate(
        headers=headers,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
