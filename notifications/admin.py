"""Operators' views of notifications: history, dead letters, retry and cancel.

Rows are read-only here; every change goes through the same services and lifecycle
transitions as the API, as an admin action that needs its own permission.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from notifications import lifecycle
from notifications.models import DeadLetter, DeliveryAttempt, Notification, Status
from notifications.tasks import replay_notifications

# Counting every row of a table of millions on each page view is what makes admin
# lists slow; past this many the list says "10,000+" instead.
COUNT_CAP = 10_000


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]
    """Counts at most COUNT_CAP + 1 rows (SELECT COUNT(*) FROM (… LIMIT n))."""

    @cached_property
    def count(self) -> int:
        capped: Any = self.object_list[: COUNT_CAP + 1]
        return int(capped.count())


class ProviderFilter(admin.SimpleListFilter):
    """Fixed choices: a SELECT DISTINCT over millions of rows is not worth a filter."""

    title = "provider"
    parameter_name = "provider"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in ("twilio", "vonage", "smtp", "console")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(provider=value) if value else queryset


class AttemptInline(admin.TabularInline[DeliveryAttempt, Notification]):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    ordering = ("started_at", "id")
    fields = readonly_fields = (
        "started_at",
        "round",
        "provider",
        "outcome",
        "latency_ms",
        "error_code",
        "error_message",
        "provider_message_id",
    )
    verbose_name_plural = "delivery timeline (every provider call)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _NotificationAdminBase(admin.ModelAdmin[Notification]):
    list_display = (
        "id",
        "created_at",
        "channel",
        "recipient",
        "priority",
        "coloured_status",
        "provider",
        "attempt_count",
        "owner",
    )
    list_filter = (
        "status",
        "channel",
        "priority",
        ProviderFilter,
        "owner",
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("recipient", "=provider_message_id")
    search_help_text = "An id, a recipient (or part of one), or a provider message id."
    list_select_related = ("owner",)
    list_per_page = 50
    show_full_result_count = False
    paginator = CappedCountPaginator
    inlines = (AttemptInline,)
    actions: Any = ("retry_action", "cancel_action")
    readonly_fields = ("timeline",)

    @admin.display(description="status", ordering="status")
    def coloured_status(self, obj: Notification) -> str:
        colour = {
            Status.SENT: "#2e7d32",
            Status.DELIVERED: "#2e7d32",
            Status.FAILED: "#c62828",
            Status.DEAD: "#6a1b9a",
            Status.RETRYING: "#ef6c00",
        }.get(Status(obj.status), "inherit")
        return format_html('<strong style="color:{}">{}</strong>', colour, obj.status)

    @admin.display(description="timeline")
    def timeline(self, obj: Notification) -> str:
        steps = [
            ("created", obj.created_at),
            ("scheduled for", obj.scheduled_at),
            ("dispatched", obj.dispatched_at),
            ("published", obj.published_at),
            ("claimed", obj.claimed_at),
            ("next attempt", obj.next_attempt_at),
            ("sent", obj.sent_at),
            ("finished", obj.finished_at),
        ]
        happened = sorted((when, label) for label, when in steps if when is not None)
        items = format_html_join(
            "",
            "<li><code>{}</code> — {}</li>",
            ((f"{when:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC", label) for when, label in happened),
        )
        return format_html("<ol>{}</ol>", items)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Notification], search_term: str
    ) -> tuple[QuerySet[Notification], bool]:
        """A number alone is an id; anything else is a recipient or a provider message id."""
        term = search_term.strip()
        if term.isdigit():
            return queryset.filter(pk=int(term)), False
        return super().get_search_results(request, queryset, term)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [
            "id",
            "owner",
            "api_key",
            "channel",
            "recipient",
            "subject",
            "body",
            "priority",
            "metadata",
            "status",
            "attempt_count",
            "last_error",
            "provider",
            "provider_message_id",
            "timeline",
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.get_fields(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # notifications come in through the API

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # history is kept

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # status changes only through the actions (lifecycle transitions)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.retry_notification")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.cancel_notification")

    @admin.action(description="Retry selected failed or dead notifications", permissions=["retry"])
    def retry_action(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        ids = list(queryset.filter(status__in=lifecycle.RETRYABLE).values_list("id", flat=True))
        skipped = queryset.count() - len(ids)
        if ids:
            replay_notifications.delay(ids)
        self.message_user(
            request,
            f"{len(ids)} notification(s) going back through the pipeline"
            + (f"; {skipped} skipped (not failed or dead)." if skipped else "."),
            messages.SUCCESS if ids else messages.WARNING,
        )

    @admin.action(
        description="Cancel selected scheduled or queued notifications", permissions=["cancel"]
    )
    def cancel_action(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        ids = list(queryset.values_list("id", flat=True))
        canceled = sum(1 for notification_id in ids if lifecycle.cancel(notification_id))
        self.message_user(
            request,
            f"{canceled} canceled; {len(ids) - canceled} could not be (already claimed or done).",
            messages.SUCCESS if canceled else messages.WARNING,
        )


@admin.register(Notification)
class NotificationAdmin(_NotificationAdminBase):
    pass


@admin.register(DeadLetter)
class DeadLetterAdmin(_NotificationAdminBase):
    """Dead notifications, grouped by provider and error, with replay."""

    list_filter = (  # type: ignore[assignment]
        "channel",
        "priority",
        ProviderFilter,
        ("finished_at", admin.DateFieldListFilter),
    )
    actions = ("retry_action",)
    change_list_template = "admin/notifications/deadletter/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Notification]:
        return super().get_queryset(request).filter(status=Status.DEAD)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("notifications.view_notification")

    def get_urls(self) -> list[Any]:
        replay = self.admin_site.admin_view(self.replay_matching_view)
        return [
            path("replay/", replay, name="notifications_deadletter_replay"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        groups = (
            self.get_queryset(request)
            .values("channel", "provider", "last_error")
            .annotate(count=Count("id"))
            .order_by("-count")[:50]
        )
        context = {
            **(extra_context or {}),
            "groups": groups,
            "can_replay": self.has_retry_permission(request),
        }
        return super().changelist_view(request, extra_context=context)

    def replay_matching_view(self, request: HttpRequest) -> HttpResponse:
        """Replay every dead notification matching the filter: a dry run first that
        says how many would go, then the real run (paced, in the background)."""
        if not self.has_retry_permission(request):
            raise PermissionDenied
        params = request.POST if request.method == "POST" else request.GET
        rows = self.get_queryset(request)
        # The group links send channel/provider/last_error; the "replay every…" link
        # carries the list's own filter parameters, so it replays what the list shows.
        channel = params.get("channel") or params.get("channel__exact")
        provider, error = params.get("provider"), params.get("last_error")
        if params.get("priority__exact"):
            rows = rows.filter(priority=params["priority__exact"])
        if channel:
            rows = rows.filter(channel=channel)
        if provider is not None and provider != "":
            rows = rows.filter(provider=provider)
        if error is not None and "last_error" in params:
            rows = rows.filter(last_error=error)
        count = rows.count()
        if request.method == "POST" and params.get("confirm") == "yes":
            ids = list(rows.values_list("id", flat=True))
            if ids:
                replay_notifications.delay(ids)
            self.message_user(
                request,
                f"Replaying {len(ids)} dead notification(s) in the background.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(reverse("admin:notifications_deadletter_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Replay dead notifications",
            "opts": self.model._meta,
            "count": count,
            "criteria": {
                "channel": channel,
                "priority": params.get("priority__exact"),
                "provider": provider,
                "last_error": error,
            },
            "rate": float(settings.REPLAY_RATE_PER_SECOND),
        }
        return TemplateResponse(
            request, "admin/notifications/deadletter/replay_confirm.html", context
        )
