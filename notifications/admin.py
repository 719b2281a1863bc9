from django.contrib import admin

from notifications.models import DeliveryAttempt, Notification


class AttemptInline(admin.TabularInline[DeliveryAttempt, Notification]):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    readonly_fields = (
        "round",
        "provider",
        "outcome",
        "error_code",
        "error_message",
        "provider_message_id",
        "latency_ms",
        "started_at",
    )

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin[Notification]):
    list_display = ("id", "channel", "recipient", "priority", "status", "provider", "created_at")
    list_filter = ("status", "channel", "priority", "provider")
    search_fields = ("=id", "recipient", "provider_message_id")
    list_select_related = ("owner",)
    show_full_result_count = False
    inlines = (AttemptInline,)

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return [field.name for field in Notification._meta.fields]
