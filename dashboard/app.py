"""The dashboard's page: its layout, and what each browser session does twice a second: send only what changed
(HTML parts when they differ, new readings and alerts with ColumnDataSource.stream).

A session counts in the server's one feed when its page has loaded in a browser (`pn.state.onload`), not when it is
made: a bare GET / (the stack's readiness probe) starts nothing. It counts out when Bokeh discards it, a few
seconds after its browser went away.
"""

from __future__ import annotations

import panel as pn
from bokeh.models import ColumnDataSource

from contract import LIKELY_TO_BREAK
from dashboard.charts import (
    ALERT_COLUMNS,
    READING_COLUMNS,
    alert_columns,
    alert_timeline,
    empty,
    reading_columns,
    sensor_figures,
)
from dashboard.feed import Feed, FeedRun
from dashboard.fleet import Fleet, Tile
from dashboard.render import ALERTS_LISTED, STYLE, alerts_html, flow_html, model_html, status_html, tiles_html

TITLE = "IoT predictive maintenance: live"
REFRESH_MS = 500


def _html(text: str, **options) -> pn.pane.HTML:
    return pn.pane.HTML(text, stylesheets=[STYLE], **{"sizing_mode": "stretch_width", "margin": (2, 8), **options})


def _heading(text: str) -> pn.pane.HTML:
    return pn.pane.HTML(f"<h3 style='margin:6px 0 2px;font-family:system-ui,sans-serif'>{text}</h3>",
                        margin=(4, 8, 0, 8))


def default_machine(tiles: list[Tile]) -> int | None:
    """The machine to show first: the first one likely to break, else the first one."""
    flagged = [tile.sensor_id for tile in tiles if tile.is_healthy == LIKELY_TO_BREAK]
    return (flagged or [tile.sensor_id for tile in tiles] or [None])[0]


class Session:
    """One browser's page over the feed's shared state."""

    def __init__(self, feed: Feed):
        self.feed = feed
        self.run: FeedRun | None = None
        self.readings = ColumnDataSource(empty(READING_COLUMNS), name="readings")
        self.alerts = ColumnDataSource(empty(ALERT_COLUMNS), name="alerts")
        self.timeline = alert_timeline(self.alerts)
        self.machine = pn.widgets.Select(label="machine", options=[], width=160)
        self.flow_pane = _html(flow_html(None))
        self.tiles_pane = _html(tiles_html([], None), max_height=330, styles={"overflow-y": "auto"})
        self.alerts_pane = _html(alerts_html([]))
        self.model_pane = _html(model_html(None, None), align="center", width=560, sizing_mode=None)
        self.status_pane = _html(status_html("waiting for the page to load ...", {}, 0))
        self.tiles_version = -1  # the fleet's tiles_version the tiles show
        self.point_seq = 0  # the newest point of the chosen machine sent
        self.alert_seq = 0  # the newest alert sent
        self.machine.param.watch(self._machine_chosen, "value")
        pn.state.onload(self.open)
        pn.state.on_session_destroyed(self.close)

    def layout(self) -> pn.Column:
        sensors = pn.GridBox(*(pn.pane.Bokeh(chart, sizing_mode="stretch_width") for chart in sensor_figures(
            self.readings)), ncols=4, sizing_mode="stretch_width")
        return pn.Column(
            pn.Row(pn.pane.HTML(f"<h2 style='margin:8px 0;font-family:system-ui,sans-serif'>{TITLE}</h2>",
                                margin=(0, 8)), pn.layout.HSpacer(), self.model_pane, sizing_mode="stretch_width"),
            _heading("The flow: records per second through each stage, backlog between them"), self.flow_pane,
            pn.Row(pn.Column(_heading("The fleet: each machine's verdict"), self.tiles_pane,
                             sizing_mode="stretch_width"),
                   pn.Column(_heading("Alerts"), pn.pane.Bokeh(self.timeline, sizing_mode="stretch_width"),
                             self.alerts_pane, width=560),
                   sizing_mode="stretch_width"),
            pn.Row(_heading("One machine's twelve sensors (red x: flagged likely to break)"), self.machine),
            sensors, self.status_pane, sizing_mode="stretch_width", max_width=1600)

    # ---- the session's life

    def open(self) -> None:
        """The page loaded in a browser: count in, show the state, then update twice a second."""
        self.run = self.feed.session_opened()
        self.refresh()
        pn.state.add_periodic_callback(self.refresh, period=REFRESH_MS)

    def close(self, _context: object) -> None:
        if self.run is not None:
            self.run = None
            self.feed.session_closed()

    def refresh(self) -> None:
        run = self.run
        if run is None:
            return
        flow = run.flow
        _show(self.flow_pane, flow_html(flow))
        _show(self.model_pane, model_html(run.model, flow.model if flow else None))
        _show(self.status_pane, status_html(run.kafka_status, run.fleet.skipped_counts(), run.fleet.older_ignored))
        self._refresh_tiles(run.fleet)
        self._stream_points(run.fleet)
        self._stream_alerts(run.fleet)

    # ---- the parts

    def _refresh_tiles(self, fleet: Fleet) -> None:
        if fleet.tiles_version == self.tiles_version:
            return
        self.tiles_version = fleet.tiles_version
        tiles = fleet.tiles()
        machines = [tile.sensor_id for tile in tiles]
        if machines != self.machine.options:
            self.machine.options = machines
        if self.machine.value not in machines:
            self.machine.value = default_machine(tiles)  # calls _machine_chosen
        _show(self.tiles_pane, tiles_html(tiles, self.machine.value))

    def _machine_chosen(self, _event: object) -> None:
        """Show the chosen machine's kept readings, then stream its new ones."""
        points = self.run.fleet.points_since(self.machine.value) if self.run and self.machine.value else []
        self.readings.data = reading_columns(points)
        self.point_seq = points[-1].seq if points else 0
        self.tiles_version = -1  # its tile is outlined now

    def _stream_points(self, fleet: Fleet) -> None:
        if self.machine.value is None:
            return
        new = fleet.points_since(self.machine.value, self.point_seq)
        if new:
            self.point_seq = new[-1].seq
            self.readings.stream(reading_columns(new), rollover=fleet.points_per_machine)

    def _stream_alerts(self, fleet: Fleet) -> None:
        new = fleet.alerts_since(self.alert_seq)
        if not new:
            return
        self.alert_seq = new[-1].seq
        machines = sorted({*self.alerts.data["machine"], *(str(alert.sensor_id) for alert in new)}, key=int)
        if machines != list(self.timeline.y_range.factors):
            self.timeline.y_range.factors = machines  # before the stream: every alert has its row when drawn
        self.alerts.stream(alert_columns(new), rollover=fleet.alerts_kept)
        _show(self.alerts_pane, alerts_html(fleet.alerts_since(0)[-ALERTS_LISTED:]))


def _show(pane: pn.pane.HTML, html: str) -> None:
    """Send `html` to the browser only if the pane shows something else."""
    if pane.object != html:
        pane.object = html


def serve(feed: Feed, host: str, port: int) -> None:
    """Serve the dashboard at http://host:port/ until interrupted; websockets only from that origin."""
    pn.serve({"/": lambda: Session(feed).layout()}, address=host, port=port, websocket_origin=[f"{host}:{port}"],
             show=False, title=TITLE, liveness=True,  # GET /liveness: the stack's readiness probe
             # A closed browser's session is discarded (and the feed stopped, if it was the last) within seconds.
             check_unused_sessions_milliseconds=2_000, unused_session_lifetime_milliseconds=5_000)
