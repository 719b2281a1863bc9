"""A URLconf with a view that fails, to exercise the real handler500."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from flashsend.urls import urlpatterns as real_patterns

handler404 = "flashsend.api.errors.not_found"
handler500 = "flashsend.api.errors.server_error"


def failing_view(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("simulated failure")


urlpatterns = [
    path("api/failing", failing_view),
    path("failing", failing_view),
    *real_patterns,
]
