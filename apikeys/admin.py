"""API keys in the admin: list, create for a user (shown once), revoke. Never the hash."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from accounts.models import User
from apikeys.models import ApiKey
from apikeys.services import apikey_create


class CreateKeyForm(forms.Form):
    user = forms.ModelChoiceField(queryset=User.objects.filter(is_active=True).order_by("email"))
    name = forms.CharField(max_length=100, initial="default")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    list_display = ("prefix", "name", "user", "created_at", "last_used_at", "is_revoked_display")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("=prefix", "name", "user__email")
    list_select_related = ("user",)
    fields = readonly_fields = (
        "prefix",
        "name",
        "user",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    actions = ("revoke_action",)

    @admin.display(description="revoked", boolean=True)
    def is_revoked_display(self, obj: ApiKey) -> bool:
        return obj.is_revoked

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a key is created or revoked, never edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoked keys stay for audit

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("apikeys.change_apikey")

    @admin.action(description="Revoke selected API keys", permissions=["revoke"])
    def revoke_action(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{revoked} key(s) revoked.", messages.SUCCESS)

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """Create a key for a user through the same service as the API; the clear key
        is in this one response and nowhere else (not in a message, not in a cookie)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = CreateKeyForm(request.POST or None)
        context = {
            **self.admin_site.each_context(request),
            "title": "Create an API key",
            "opts": self.model._meta,
            "form": form,
        }
        if request.method == "POST" and form.is_valid():
            api_key, raw = apikey_create(
                user=form.cleaned_data["user"], name=form.cleaned_data["name"]
            )
            self.log_addition(request, api_key, [{"added": {}}])
            context.update(title="API key created", api_key=api_key, raw_key=raw)
            return TemplateResponse(request, "admin/apikeys/apikey/created.html", context)
        return TemplateResponse(request, "admin/apikeys/apikey/create.html", context)
