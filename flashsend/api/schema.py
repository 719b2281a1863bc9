"""drf-spectacular hooks."""

from __future__ import annotations

from typing import Any


def strip_optional_slash(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Document each path in its canonical form, without the optional trailing slash.

    API routes accept ``/api/apikeys`` and ``/api/apikeys/`` alike; the schema shows
    the first, which is the form the seed clients use.
    """
    paths = result.get("paths", {})
    result["paths"] = {
        (path.rstrip("/") if path != "/" else path): item for path, item in paths.items()
    }
    return result


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error FlashSend returns has this shape.",
    "properties": {
        "error": {"type": "string", "description": "What went wrong, for people."},
        "code": {"type": "string", "description": "What went wrong, for programs."},
        "fields": {
            "type": "object",
            "description": "Validation errors: the messages for each field.",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "current_status": {"type": "string", "description": "On 409: the notification's status."},
        "retry_after": {"type": "integer", "description": "On 429: seconds to wait."},
    },
    "required": ["error", "code"],
}

_ERRORS = {
    "400": "Invalid input: `fields` names each field and what is wrong with it.",
    "401": "Missing, invalid, expired or revoked credentials.",
    "403": "Authenticated, but not allowed (e.g. an API key on key management).",
    "404": "No such resource, or it belongs to someone else.",
    "405": "Method not allowed on this path.",
    "409": "The resource's current state does not allow this (see `current_status`).",
    "415": "The body must be JSON (Content-Type: application/json).",
    "429": "Rate limited; see `retry_after` and the Retry-After header.",
}


def document_errors(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Add the error responses every operation can give, in the one JSON shape.

    drf-spectacular documents success responses; clients (and schema-driven fuzzing)
    also need to know that every failure is JSON with ``error`` and ``code``.
    """
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            for status, description in _ERRORS.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": reference}},
                    },
                )
    return result
