"""The dashboard's Bokeh charts and the columns they are streamed: a machine's twelve sensors over time (the
readings the model flagged marked), and the alerts as a timeline. Times are milliseconds since the epoch (Bokeh's
datetime axis), shown in UTC."""

from __future__ import annotations

from collections.abc import Sequence

from bokeh.models import (
    CDSView,
    ColumnDataSource,
    DataRange1d,
    DatetimeTickFormatter,
    FactorRange,
    GroupFilter,
    HoverTool,
)
from bokeh.plotting import figure

from contract import LIKELY_TO_BREAK, SENSOR_FIELDS
from dashboard.fleet import Alert, Point

TIME = "time"
VERDICT, FLAGGED = "verdict", "flagged"  # a reading's verdict column, and its value for likely to break
READING_COLUMNS = (TIME, *SENSOR_FIELDS, VERDICT)
ALERT_COLUMNS = (TIME, "machine", "state", "color", "model")
LINE_COLOR, FLAGGED_COLOR, HEALTHY_COLOR = "#1565c0", "#c62828", "#2e7d32"


def reading_columns(points: Sequence[Point]) -> dict[str, list]:
    """The points as the readings' columns: time (ms), sensor_0 .. sensor_11, and `flagged` where the model judged
    the machine likely to break."""
    columns: dict[str, list] = {TIME: [point.sensor_ts / 1000 for point in points]}
    for index, name in enumerate(SENSOR_FIELDS):
        columns[name] = [point.values[index] for point in points]
    columns[VERDICT] = [FLAGGED if point.is_healthy == LIKELY_TO_BREAK else "healthy" for point in points]
    return columns


def alert_columns(alerts: Sequence[Alert]) -> dict[str, list]:
    """The alerts as the timeline's columns."""
    return {
        TIME: [alert.sensor_ts / 1000 for alert in alerts],
        "machine": [str(alert.sensor_id) for alert in alerts],
        "state": [alert.state.replace("_", " ") for alert in alerts],
        "color": [FLAGGED_COLOR if alert.is_healthy == LIKELY_TO_BREAK else HEALTHY_COLOR for alert in alerts],
        "model": ["–" if alert.model_version is None else f"v{alert.model_version}" for alert in alerts],
    }


def empty(columns: Sequence[str]) -> dict[str, list]:
    return {name: [] for name in columns}


def sensor_figures(readings: ColumnDataSource) -> list[figure]:
    """Twelve small charts, one per sensor, on one shared time axis; flagged readings as red crosses."""
    figures = []
    for name in SENSOR_FIELDS:
        shared = {"x_range": figures[0].x_range} if figures else {}
        chart = figure(height=150, sizing_mode="stretch_width", x_axis_type="datetime", title=name,
                       tools="xpan,xwheel_zoom,reset", toolbar_location=None, **shared)
        chart.line(TIME, name, source=readings, color=LINE_COLOR, line_width=1.5)
        chart.scatter(TIME, name, source=readings, view=_flagged_only(), marker="x", size=7, color=FLAGGED_COLOR,
                      line_width=2)
        chart.title.text_font_size = "11px"
        chart.axis.major_label_text_font_size = "10px"
        chart.xaxis.ticker.desired_num_ticks = 4
        chart.xaxis.formatter = _clock()
        chart.min_border_left = 40
        figures.append(chart)
    return figures


def _clock() -> DatetimeTickFormatter:
    """Times of day only, whatever the zoom (Bokeh adds the date below by default, and shows sub-second ticks as
    microseconds). A new one per chart: a model belongs to one document."""
    seconds, minutes = "%H:%M:%S", "%H:%M"
    return DatetimeTickFormatter(microseconds=seconds, milliseconds=seconds, seconds=seconds, minsec=seconds,
                                 minutes=minutes, hourmin=minutes, hours=minutes, context=None)


def _flagged_only() -> CDSView:
    return CDSView(filter=GroupFilter(column_name=VERDICT, group=FLAGGED))


def alert_timeline(alerts: ColumnDataSource) -> figure:
    """Each alert at its time, one row per machine: red for likely to break, green for healthy again."""
    # At least a minute wide: a lone alert is not drawn on a scale of microseconds.
    chart = figure(height=220, sizing_mode="stretch_width", x_axis_type="datetime", y_range=FactorRange(),
                   x_range=DataRange1d(min_interval=60_000),
                   tools="xpan,xwheel_zoom,reset", toolbar_location=None, title="alerts (time in UTC)")
    chart.scatter(TIME, "machine", source=alerts, color="color", size=11, marker="diamond")
    chart.add_tools(HoverTool(tooltips=[("machine", "@machine"), ("now", "@state"), ("model", "@model"),
                                        ("at", "@time{%H:%M:%S}")], formatters={"@time": "datetime"}))
    chart.title.text_font_size = "12px"
    chart.yaxis.axis_label = "machine"
    chart.xaxis.formatter = _clock()
    return chart
