"""URL configuration. API paths take an optional trailing slash."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from flashsend.api.health import PingView, ReadyView
from notifications.urls import history_urlpatterns, notify_urlpatterns

handler400 = "flashsend.api.errors.bad_request"
handler404 = "flashsend.api.errors.not_found"
handler500 = "flashsend.api.errors.server_error"

urlpatterns = [
    re_path(r"^ping/?$", PingView.as_view(), name="ping"),
    re_path(r"^health/?$", PingView.as_view(), name="health"),
    re_path(r"^ready/?$", ReadyView.as_view(), name="ready"),
    path("api/auth/", include("accounts.urls")),
    path("api/apikeys", include("apikeys.urls")),
    path("api/notify/", include(notify_urlpatterns)),
    path("api/notifications", include(history_urlpatterns)),
    re_path(r"^api/schema/?$", SpectacularAPIView.as_view(), name="schema"),
    re_path(r"^api/docs/?$", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
    path("", include("django_prometheus.urls")),
]
