"""The dashboard's HTML parts, as plain functions of plain state: the flow, the machines' tiles, the latest alerts,
the served model and the feed's own status. Everything that comes from outside is escaped."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from contract import HEALTHY
from dashboard.feed import ModelCard
from dashboard.fleet import Alert, Tile
from dashboard.flow import DOWN, UNOBSERVED, Flow, Stage

ALERTS_LISTED = 8

STYLE = """
:host { --ok: #2e7d32; --ok-bg: #e8f5e9; --bad: #c62828; --bad-bg: #ffebee; --muted: #6b7280; --line: #d1d5db; }
.flow { display: flex; align-items: stretch; gap: 0; font-family: system-ui, sans-serif; }
.stage { flex: 1 1 0; min-width: 0; border: 2px solid #1565c0; border-radius: 8px; padding: 8px 10px;
         background: #f8fafc; }
.stage.unobserved { border-style: dashed; border-color: #90a4ae; }
.stage.down { border-color: var(--bad); background: var(--bad-bg); }
.stage h4 { margin: 0 0 4px; font-size: 14px; display: flex; justify-content: space-between; }
.badge { font-size: 11px; font-weight: 600; border-radius: 4px; padding: 1px 5px; color: white;
         background: var(--ok); }
.down .badge { background: var(--bad); }
.rate { font-size: 22px; font-weight: 700; }
.unit, .note { font-size: 12px; color: var(--muted); }
.dead { font-size: 12px; color: var(--bad); font-weight: 600; }
.dead.none { color: var(--muted); font-weight: normal; }
.link { flex: 0 0 112px; display: flex; flex-direction: column; justify-content: center; align-items: center;
        font-size: 11px; color: var(--muted); text-align: center; }
.arrow { font-size: 24px; color: #1565c0; line-height: 1; }
.tiles { display: flex; flex-wrap: wrap; gap: 6px; padding: 4px; font-family: system-ui, sans-serif; }
.tile { width: 100px; border-radius: 6px; padding: 5px 6px; border: 2px solid var(--ok); background: var(--ok-bg); }
.tile.likely_to_break { border-color: var(--bad); background: var(--bad-bg); }
.tile.selected { outline: 3px solid #1565c0; outline-offset: 1px; }
.tile .id { font-size: 16px; font-weight: 700; }
.tile .verdict { font-size: 10.5px; color: var(--ok); font-weight: 600; white-space: nowrap; }
.tile.likely_to_break .verdict { color: var(--bad); }
.empty { color: var(--muted); font-size: 13px; font-family: system-ui, sans-serif; }
table.alerts { border-collapse: collapse; font-size: 12px; font-family: system-ui, sans-serif; width: 100%; }
table.alerts td, table.alerts th { padding: 2px 6px; border-bottom: 1px solid var(--line); text-align: left; }
table.alerts .likely_to_break { color: var(--bad); font-weight: 600; }
table.alerts .healthy { color: var(--ok); font-weight: 600; }
.model, .status { font-size: 13px; font-family: system-ui, sans-serif; color: #111827; }
.status { color: var(--muted); }
.model .down { color: var(--bad); font-weight: 600; }
"""


def verdict_name(is_healthy: int) -> str:
    return "healthy" if is_healthy == HEALTHY else "likely to break"


def clock(sensor_ts: int) -> str:
    """HH:MM:SS (UTC) of a timestamp in microseconds."""
    return time.strftime("%H:%M:%S", time.gmtime(sensor_ts / 1e6))


def _rate(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _stage_html(stage: Stage) -> str:
    if stage.dead_letters is None:
        dead = ""
    elif stage.dead_letters:
        dead = f'<div class="dead">{stage.dead_letters:,.0f} dead letters</div>'
    else:
        dead = '<div class="dead none">no dead letters</div>'
    notes = "".join(f'<div class="note">{html.escape(note)}</div>' for note in stage.notes)
    badge = "" if stage.state == UNOBSERVED else f'<span class="badge">{stage.state}</span>'
    return (f'<div class="stage {stage.state}" data-stage="{html.escape(stage.name)}">'
            f'<h4>{html.escape(stage.name)}{badge}</h4>'
            f'<div class="rate">{_rate(stage.rate)}</div><div class="unit">{html.escape(stage.unit)}</div>'
            f"{dead}{notes}</div>")


def flow_html(flow: Flow | None) -> str:
    """The stages left to right as the data goes, an arrow with the backlog between each two."""
    if flow is None:
        return '<div class="empty">asking the pipeline ...</div>'
    parts = [_stage_html(flow.stages[0])]
    for link, stage in zip(flow.links, flow.stages[1:], strict=True):
        lines = "".join(f"<span>{html.escape(line)}</span>" for line in link)
        parts.append(f'<div class="link">{lines}<span class="arrow">&#10230;</span></div>')
        parts.append(_stage_html(stage))
    return f'<div class="flow">{"".join(parts)}</div>'


def _tile_html(tile: Tile, selected: int | None) -> str:
    classes = f"tile {tile.state}" + (" selected" if tile.sensor_id == selected else "")
    source = "the job's latest alert" if tile.from_alert else "its latest scored reading"
    return (f'<div class="{classes}" data-sensor="{tile.sensor_id}" title="verdict from {html.escape(source)}">'
            f'<div class="id">{tile.sensor_id}</div><div class="verdict">{verdict_name(tile.is_healthy)}</div></div>')


def tiles_html(tiles: Sequence[Tile], selected: int | None) -> str:
    """One tile per machine with its verdict; the selected machine outlined."""
    if not tiles:
        return '<div class="empty">no machine heard from yet (Kafka iot.scored)</div>'
    return f'<div class="tiles">{"".join(_tile_html(tile, selected) for tile in tiles)}</div>'


def alerts_html(alerts: Sequence[Alert]) -> str:
    """The newest alerts (by the time of the reading that made them) first, at most ALERTS_LISTED."""
    if not alerts:
        return '<div class="empty">no alert yet (Kafka iot.alerts)</div>'
    rows = "".join(
        f'<tr data-alert="{alert.sensor_id}-{alert.sensor_ts}"><td>{clock(alert.sensor_ts)}</td>'
        f"<td>machine {alert.sensor_id}</td>"
        f'<td class="{alert.state}">{verdict_name(alert.is_healthy)}</td><td>{_version(alert.model_version)}</td></tr>'
        for alert in sorted(alerts, key=lambda alert: alert.sensor_ts, reverse=True)[:ALERTS_LISTED])
    return ('<table class="alerts"><tr><th>time (UTC)</th><th>machine</th><th>now</th><th>model</th></tr>'
            f"{rows}</table>")


def _version(version: int | None) -> str:
    return "–" if version is None else f"v{version}"


def _when(iso: str) -> str:
    """An ISO 8601 time as 'YYYY-MM-DD HH:MM UTC' (as given if it is not one)."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso or "–"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def model_html(card: ModelCard | None, model: Stage | None) -> str:
    """The served model: version, auroc, when it was promoted, rows scored per second."""
    if model is not None and model.state == DOWN:
        return '<div class="model"><span class="down">model server down</span></div>'
    if card is None:
        return '<div class="model">model: asking ...</div>'
    parts = [f"<b>model v{card.version}</b>", "auroc –" if card.auroc is None else f"auroc {card.auroc:.3f}",
             f"promoted {html.escape(_when(card.promoted_at))}"]
    if model is not None and model.rate is not None:
        parts.append(f"{_rate(model.rate)} rows/s scored")
    return f'<div class="model">{" · ".join(parts)}</div>'


def status_html(kafka_status: str, skipped: dict[tuple[str, str], int], older_ignored: int) -> str:
    """The feed's own state: Kafka, and the records it skipped (by topic and reason)."""
    if skipped:
        listed = ", ".join(f"{html.escape(topic)} {html.escape(reason)}: {count:,}"
                           for (topic, reason), count in sorted(skipped.items()))
        skipped_text = f"skipped records (break the contract): {listed}"
    else:
        skipped_text = "no record skipped"
    replays = f" · {older_ignored:,} replayed readings ignored" if older_ignored else ""
    return f'<div class="status">{html.escape(kafka_status)} · {skipped_text}{replays}</div>'
