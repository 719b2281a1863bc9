from django.urls import re_path

from apikeys import views

urlpatterns = [
    re_path(r"^/?$", views.ApiKeyListCreateView.as_view(), name="apikeys"),
    re_path(
        r"^/(?P<key_id>[0-9]{1,18})/?$", views.ApiKeyDetailView.as_view(), name="apikey-detail"
    ),
]
