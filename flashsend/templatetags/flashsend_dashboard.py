"""``{% flashsend_dashboard %}``: the operators' dashboard on the admin index page.

The chart is drawn on the server as inline SVG: the admin must keep working on a
machine with no internet access and without any JavaScript library, so geometry is
computed here and the template only places shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django import template
from django.template.context import Context

from flashsend.dashboard import MinuteBucket, dashboard_context

register = template.Library()

# Queue depths and delivery figures are operational data, not for every staff member.
VIEW_PERMISSION = "notifications.view_notification"

# Chart geometry in SVG user units. The SVG scales to its container's width; this
# width is about that of the admin index's main column, so text keeps its CSS size.
CHART_WIDTH = 480.0
CHART_HEIGHT = 160.0
PLOT_LEFT = 40.0  # room for the y-axis labels
PLOT_RIGHT = CHART_WIDTH - 16.0  # room for half of a minute label at the right end
PLOT_TOP = 10.0
PLOT_BOTTOM = CHART_HEIGHT - 22.0  # room for the minute labels
BAR_GAP = 1.5
MIN_BAR_HEIGHT = 1.0  # a minute with one message must not vanish next to a peak of 10,000
LABEL_EVERY_MINUTES = 10


@dataclass(frozen=True)
class Bar:
    minute: datetime
    count: int
    # The slot is the bar's whole column: hovering anywhere in it shows the tooltip,
    # so even an empty minute can be read.
    slot_x: float
    slot_width: float
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class XLabel:
    minute: datetime
    x: float


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    x_labels: list[XLabel]
    peak: int
    width: float = CHART_WIDTH
    height: float = CHART_HEIGHT
    plot_left: float = PLOT_LEFT
    plot_right: float = PLOT_RIGHT
    plot_top: float = PLOT_TOP
    plot_bottom: float = PLOT_BOTTOM

    @property
    def plot_height(self) -> float:
        return self.plot_bottom - self.plot_top

    @property
    def tick_bottom(self) -> float:
        return self.plot_bottom + 4.0

    @property
    def x_label_y(self) -> float:
        return self.plot_bottom + 15.0

    @property
    def y_label_x(self) -> float:
        return self.plot_left - 6.0


def bar_chart(buckets: Sequence[MinuteBucket]) -> BarChart:
    """Lay the buckets out as bars scaled to the busiest minute."""
    peak = max((bucket.count for bucket in buckets), default=0)
    slot_width = (PLOT_RIGHT - PLOT_LEFT) / max(len(buckets), 1)
    bars: list[Bar] = []
    x_labels: list[XLabel] = []
    for index, bucket in enumerate(buckets):
        slot_x = PLOT_LEFT + index * slot_width
        height = _bar_height(bucket.count, peak)
        bars.append(
            Bar(
                minute=bucket.minute,
                count=bucket.count,
                slot_x=_round(slot_x),
                slot_width=_round(slot_width),
                x=_round(slot_x + BAR_GAP / 2),
                y=_round(PLOT_BOTTOM - height),
                width=_round(slot_width - BAR_GAP),
                height=_round(height),
            )
        )
        # Labels on round clock minutes (:00, :10, ...) read faster than every tenth bar.
        if bucket.minute.minute % LABEL_EVERY_MINUTES == 0:
            x_labels.append(XLabel(bucket.minute, _round(slot_x + slot_width / 2)))
    return BarChart(bars=bars, x_labels=x_labels, peak=peak)


@register.inclusion_tag("admin/flashsend_dashboard.html", takes_context=True)
def flashsend_dashboard(context: Context) -> dict[str, Any]:
    """The dashboard for users allowed to see notifications; nothing for anyone else."""
    user = getattr(context.get("request"), "user", None)
    if user is None or not user.has_perm(VIEW_PERMISSION):
        return {"visible": False}
    figures = dashboard_context()
    return {"visible": True, **figures, "chart": bar_chart(figures["sent_per_minute"])}


def _bar_height(count: int, peak: int) -> float:
    if count <= 0 or peak <= 0:
        return 0.0
    return max(MIN_BAR_HEIGHT, (PLOT_BOTTOM - PLOT_TOP) * count / peak)


def _round(value: float) -> float:
    # Two decimals are finer than any screen pixel and keep the markup short.
    return round(value, 2)
