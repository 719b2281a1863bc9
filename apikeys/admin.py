from django.contrib import admin

from apikeys.models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    list_display = ("prefix", "name", "user", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__email")
    # The hash is never shown, not even read-only.
    exclude = ("key_hash",)
    readonly_fields = ("prefix", "user", "created_at", "last_used_at", "revoked_at")
