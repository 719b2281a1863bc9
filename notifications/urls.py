from django.urls import re_path

from notifications import views

notify_urlpatterns = [
    re_path(r"^send/?$", views.SendView.as_view(), name="notify-send"),
    re_path(r"^schedule/?$", views.ScheduleView.as_view(), name="notify-schedule"),
]

history_urlpatterns = [
    re_path(r"^/?$", views.NotificationListView.as_view(), name="notifications"),
    re_path(
        r"^/(?P<notification_id>[0-9]{1,18})/?$",
        views.NotificationDetailView.as_view(),
        name="notification-detail",
    ),
    re_path(
        r"^/(?P<notification_id>[0-9]{1,18})/cancel/?$",
        views.NotificationCancelView.as_view(),
        name="notification-cancel",
    ),
]
