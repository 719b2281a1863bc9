"""One JSON shape for every error the API returns.

Every error body has an ``error`` message for people and a ``code`` for programs;
validation errors add ``fields`` with the messages per field. Django-level 404 and
500 responses under /api/ use the same shape, so a client never has to parse HTML.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class DomainError(exceptions.APIException):
    """A business-rule refusal raised by services; views let it propagate."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    default_detail = "The request cannot be carried out."
    default_code = "invalid_request"


class Conflict(DomainError):
    status_code: int = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: Django's handler500 answers with JSON
    if isinstance(exc, exceptions.ValidationError):
        response.data = _validation_body(exc.detail)
    else:
        response.data = _plain_body(exc, response.data)
    return response


def _plain_body(exc: Exception, data: Any) -> dict[str, Any]:
    code = "error"
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
    message = data.get("detail", data) if isinstance(data, dict) else data
    body: dict[str, Any] = {"error": str(message), "code": str(code)}
    current_status = getattr(exc, "current_status", None)
    if current_status is not None:
        body["current_status"] = str(current_status)
    wait = getattr(exc, "wait", None) if isinstance(exc, exceptions.Throttled) else None
    if wait is not None:
        body["retry_after"] = max(1, int(wait))
    return body


def _validation_body(detail: Any) -> dict[str, Any]:
    if isinstance(detail, dict):
        fields = {str(key): _messages(value) for key, value in detail.items()}
        summary = "; ".join(
            f"{name}: {' '.join(messages)}" if name != "non_field_errors" else " ".join(messages)
            for name, messages in fields.items()
        )
        return {"error": f"Invalid input. {summary}", "code": "invalid", "fields": fields}
    messages = _messages(detail)
    return {"error": f"Invalid input. {' '.join(messages)}", "code": "invalid", "fields": {}}


def _messages(value: Any) -> list[str]:
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            out.extend(_messages(item))
        return out
    if isinstance(value, dict):
        return [f"{key}: {' '.join(_messages(sub))}" for key, sub in value.items()]
    return [str(value)]


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            {"error": f"No API endpoint at {request.path}.", "code": "not_found"}, status=404
        )
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            {
                "error": "Internal server error. The failure has been logged.",
                "code": "server_error",
            },
            status=500,
        )
    return defaults.server_error(request)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"error": "Bad request.", "code": "bad_request"}, status=400)
    return defaults.bad_request(request, exception)
