"""The dashboard's logic without a browser or a service: the fleet from records (bad ones too), rates from scrapes,
tile verdicts, the bounds, the feed's sessions, the HTML parts, and a page's session streaming only what is new."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from contract import HEALTHY, LIKELY_TO_BREAK, SENSOR_FIELDS, STATE_NAMES
from dashboard.__main__ import build_parser
from dashboard.app import Session, default_machine
from dashboard.charts import FLAGGED, VERDICT
from dashboard.feed import Feed, FeedRun, Sources, model_card, scrape_samples
from dashboard.fleet import OTHER_FIELD, UNKNOWN_TOPIC, WHOLE_PAYLOAD, Fleet, Tile
from dashboard.flow import DOWN, UNOBSERVED, UP, Scrape, ScrapeHistory, compute_flow, parse_samples
from dashboard.render import alerts_html, flow_html, model_html, status_html, tiles_html
from runtime.settings import ALERTS_TOPIC, SCORED_TOPIC
from runtime.waiting import wait_until

T0 = 1_764_150_000_000_000  # microseconds


def scored(sensor_id: int, second: int, is_healthy: int = HEALTHY, version: int | None = 1) -> bytes:
    reading = {"sensor_id": sensor_id, "sensor_ts": T0 + second * 1_000_000,
               **{name: float(index + second) for index, name in enumerate(SENSOR_FIELDS)},
               "is_healthy": is_healthy, "model_version": version}
    return json.dumps(reading).encode()


def alert(sensor_id: int, second: int, is_healthy: int = LIKELY_TO_BREAK) -> bytes:
    return json.dumps({"sensor_id": sensor_id, "sensor_ts": T0 + second * 1_000_000, "is_healthy": is_healthy,
                       "state": STATE_NAMES[is_healthy], "model_version": 1,
                       "readings": [[T0, is_healthy]]}).encode()


# ---- the fleet


def test_good_records_are_kept_and_bad_ones_counted_by_topic_and_reason():
    fleet = Fleet()
    bad = [(SCORED_TOPIC, None), (SCORED_TOPIC, b"not json"), (SCORED_TOPIC, b"[1, 2]"),
           (SCORED_TOPIC, scored(1, 0).replace(b'"is_healthy": 1', b'"is_healthy": 7')),
           (SCORED_TOPIC, scored(1, 0).replace(b'"sensor_5": 5.0', b'"sensor_5": "5"')),
           (SCORED_TOPIC, b'{"sensor_id": 1, "sensor_id": 2}'),
           (SCORED_TOPIC, b'{"\xff\xfe": 1}'), (SCORED_TOPIC, b"[" * 100_000),
           (ALERTS_TOPIC, alert(1, 0).replace(b'"state": "likely_to_break"', b'"state": "healthy"')),
           (ALERTS_TOPIC, b"{}"), ("elsewhere", scored(1, 0))]
    fleet.add_all([(SCORED_TOPIC, scored(1, 0)), *bad, (SCORED_TOPIC, scored(1, 1)), (ALERTS_TOPIC, alert(2, 0))])

    assert [point.sensor_ts for point in fleet.points_since(1)] == [T0, T0 + 1_000_000]
    assert [a.sensor_id for a in fleet.alerts_since()] == [2]
    skipped = fleet.skipped_counts()
    assert sum(skipped.values()) == len(bad)
    assert skipped[SCORED_TOPIC, WHOLE_PAYLOAD] == 5  # null, not JSON, not an object, not Unicode, too deep
    assert skipped[SCORED_TOPIC, "is_healthy"] == 1 and skipped[SCORED_TOPIC, "sensor_5"] == 1
    assert skipped[SCORED_TOPIC, "sensor_id"] == 1  # the repeated key
    assert skipped[ALERTS_TOPIC, "state"] == 1 and skipped[ALERTS_TOPIC, "sensor_id"] == 1
    assert skipped["elsewhere", UNKNOWN_TOPIC] == 1


def test_reasons_are_a_bounded_set_whatever_the_field_names():
    fleet = Fleet()
    for n in range(50):
        fleet.add(SCORED_TOPIC, scored(1, 0)[:-1] + f', "x{n}": 1, "x{n}": 2}}'.encode())
    assert fleet.skipped_counts() == {(SCORED_TOPIC, OTHER_FIELD): 50}


def test_a_tile_shows_the_latest_alert_state_else_the_latest_verdict():
    fleet = Fleet()
    fleet.add_all([(SCORED_TOPIC, scored(1, 0, HEALTHY)), (SCORED_TOPIC, scored(1, 1, LIKELY_TO_BREAK)),
                   (SCORED_TOPIC, scored(2, 0, LIKELY_TO_BREAK)), (ALERTS_TOPIC, alert(2, 1, HEALTHY)),
                   (SCORED_TOPIC, scored(2, 2, LIKELY_TO_BREAK)), (ALERTS_TOPIC, alert(3, 5, LIKELY_TO_BREAK)),
                   (ALERTS_TOPIC, alert(3, 4, HEALTHY))])  # an older alert does not undo a newer one
    assert fleet.tiles() == [Tile(1, LIKELY_TO_BREAK, False), Tile(2, HEALTHY, True), Tile(3, LIKELY_TO_BREAK, True)]


def test_tiles_version_changes_only_when_a_tile_would():
    fleet = Fleet()
    fleet.add(SCORED_TOPIC, scored(1, 0))
    version = fleet.tiles_version
    fleet.add(SCORED_TOPIC, scored(1, 1))
    assert fleet.tiles_version == version
    fleet.add(SCORED_TOPIC, scored(1, 2, LIKELY_TO_BREAK))
    assert fleet.tiles_version > version


def test_memory_is_bounded_per_machine_in_machines_and_in_alerts():
    fleet = Fleet(points_per_machine=5, max_machines=3, alerts_kept=4)
    fleet.add_all((SCORED_TOPIC, scored(1, second)) for second in range(20))
    assert [point.sensor_ts for point in fleet.points_since(1)] == [T0 + s * 1_000_000 for s in range(15, 20)]
    fleet.add_all([(SCORED_TOPIC, scored(2, 0)), (SCORED_TOPIC, scored(3, 0)), (SCORED_TOPIC, scored(1, 20)),
                   (SCORED_TOPIC, scored(4, 0))])  # 2 is the one heard from least recently
    assert [tile.sensor_id for tile in fleet.tiles()] == [1, 3, 4]
    fleet.add_all((ALERTS_TOPIC, alert(1, second)) for second in range(10))
    assert [a.sensor_ts for a in fleet.alerts_since()] == [T0 + s * 1_000_000 for s in range(6, 10)]


def test_a_replayed_or_older_reading_is_ignored_and_counted():
    fleet = Fleet()
    fleet.add_all([(SCORED_TOPIC, scored(1, 5)), (SCORED_TOPIC, scored(1, 5)), (SCORED_TOPIC, scored(1, 4))])
    assert len(fleet.points_since(1)) == 1 and fleet.older_ignored == 2


def test_points_and_alerts_since_a_sequence_number_are_only_the_new_ones():
    fleet = Fleet()
    fleet.add_all([(SCORED_TOPIC, scored(1, 0)), (SCORED_TOPIC, scored(2, 0)), (ALERTS_TOPIC, alert(1, 0))])
    seen = fleet.points_since(1)[-1].seq
    last_alert = fleet.alerts_since()[-1].seq
    fleet.add_all([(SCORED_TOPIC, scored(1, 1)), (SCORED_TOPIC, scored(2, 1)), (ALERTS_TOPIC, alert(2, 1))])
    assert [point.sensor_ts for point in fleet.points_since(1, seen)] == [T0 + 1_000_000]
    assert [a.sensor_id for a in fleet.alerts_since(last_alert)] == [2]
    assert fleet.points_since(99) == []


# ---- the flow


def exposition(received: int, produced: int, dead: dict[str, int], in_flight: int = 0) -> str:
    registry = CollectorRegistry()
    Counter("iot_gateway_received", "", registry=registry).inc(received)
    Counter("iot_gateway_produced", "", registry=registry).inc(produced)
    by_reason = Counter("iot_gateway_dead_lettered", "", ["reason"], registry=registry)
    for reason, count in dead.items():
        by_reason.labels(reason).inc(count)
    Gauge("iot_gateway_in_flight", "", registry=registry).set(in_flight)
    return generate_latest(registry).decode()


def job_exposition(rows: int, dead: int, lag: float, batches: list[float]) -> str:
    registry = CollectorRegistry()
    Counter("iot_streaming_rows", "", registry=registry).inc(rows)
    Counter("iot_streaming_dead_lettered", "", ["kind"], registry=registry).labels("invalid").inc(dead)
    Gauge("iot_streaming_kafka_lag_records", "", registry=registry).set(lag)
    Gauge("iot_streaming_lag_seconds", "", registry=registry).set(1.5)
    duration = Histogram("iot_streaming_batch_duration_seconds", "", registry=registry)
    for seconds in batches:
        duration.observe(seconds)
    return generate_latest(registry).decode()


def test_samples_are_summed_over_their_labels():
    samples = parse_samples(exposition(10, 7, {"not_json": 2, "sensor_5": 1}, in_flight=3))
    assert samples["iot_gateway_received_total"] == 10
    assert samples["iot_gateway_dead_lettered_total"] == 3
    assert samples["iot_gateway_in_flight"] == 3
    with pytest.raises(ValueError):
        parse_samples("this is { not an exposition")


def test_rates_come_from_the_counters_deltas_between_two_scrapes():
    first = Scrape(100.0, parse_samples(exposition(100, 90, {"not_json": 1})),
                   parse_samples(job_exposition(50, 0, 0, [0.4])), None, (99.5, 1_000))
    last = Scrape(104.0, parse_samples(exposition(140, 126, {"not_json": 3}, in_flight=2)),
                  parse_samples(job_exposition(90, 4, 12, [0.4, 0.6, 0.8])), None, (103.5, 1_200))
    flow = compute_flow([first, last])
    mosquitto, gateway, kafka, job, kudu = flow.stages
    assert mosquitto.rate == 10 and mosquitto.state == UNOBSERVED
    assert gateway.rate == 9 and gateway.dead_letters == 3 and gateway.state == UP
    assert kafka.rate == 50 and kafka.state == UP
    assert job.rate == 11 and job.dead_letters == 4 and "0.70 s a batch" in job.notes  # 44 records in 4 s
    assert kudu.rate == 10 and "90 rows written" in kudu.notes
    assert flow.links[1] == ("2 in flight",) and flow.links[2] == ("12 not read yet", "1.5 s behind")
    assert flow.model.state == DOWN and flow.model.rate is None


def test_a_kafka_lag_the_job_does_not_know_yet_is_not_shown():
    scrapes = [Scrape(float(t), parse_samples(exposition(10, 10, {})),
                      parse_samples(job_exposition(5, 0, float("nan"), [0.4])), None, None) for t in (0, 2)]
    assert compute_flow(scrapes).links[2] == ("1.5 s behind",)


def test_a_source_that_does_not_answer_is_down_and_a_restarted_counter_is_not_negative():
    first = Scrape(0.0, parse_samples(exposition(1_000, 1_000, {})), None, None, None)
    restarted = Scrape(2.0, parse_samples(exposition(10, 8, {})), None, None, None)
    flow = compute_flow([first, restarted])
    assert flow.stages[1].rate == 4  # the counter started again at 0: its value is the increase
    assert [stage.state for stage in flow.stages] == [UNOBSERVED, UP, DOWN, DOWN, UNOBSERVED]
    assert all(stage.rate is None for stage in flow.stages[2:])
    assert compute_flow([restarted]).stages[1].rate is None  # one scrape tells no rate


def test_a_source_that_answers_later_gets_its_rate_from_its_first_answer():
    down = Scrape(0.0, None, None, None, None)
    up = [Scrape(float(s), parse_samples(exposition(10 * s, 0, {})), None, None, (s - 0.5, 100 * s)) for s in (4, 6)]
    mosquitto, _, kafka, *_ = compute_flow([down, *up]).stages
    assert mosquitto.rate == 10 and kafka.rate == 100


def test_rates_are_averaged_over_the_window():
    history = ScrapeHistory(window_s=5)
    for second in range(12):
        flow = history.add(Scrape(float(second), parse_samples(exposition(second * second, 0, {})), None, None,
                                  None))
    assert flow.stages[0].rate == pytest.approx((121 - 36) / 5)  # from second 6 to 11


# ---- the feed


class FakeRun:
    def __init__(self, sources: Sources):
        self.fleet, self.flow, self.model, self.kafka_status = Fleet(), None, None, "reading"
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


def test_the_first_session_starts_the_feed_and_the_last_one_stops_it():
    feed = Feed(Sources("kafka:9092"), run_factory=FakeRun)
    assert not feed.running
    first = feed.session_opened()
    assert first.started and feed.session_opened() is first
    feed.session_closed()
    assert feed.running and not first.stopped
    feed.session_closed()
    assert first.stopped and not feed.running
    assert feed.session_opened() is not first  # a new run, with a fresh fleet


def test_a_feed_with_no_source_answering_says_so_and_stops_when_asked(free_ports):
    nowhere = f"127.0.0.1:{free_ports(1)[0]}"
    run = FeedRun(Sources(nowhere, gateway_metrics_url=f"http://{nowhere}/metrics",
                          streaming_metrics_url=f"http://{nowhere}/metrics", model_url=f"http://{nowhere}"))
    run.start()
    try:
        wait_until(lambda: run.kafka_status.startswith("waiting on Kafka") and run.flow, 60, "the feed giving up")
        assert [stage.state for stage in run.flow.stages] == [UNOBSERVED, DOWN, DOWN, DOWN, UNOBSERVED]
        assert run.model is None
    finally:
        run.stop()
        run.join(timeout_s=15)
    assert not run.alive


def test_model_card_takes_what_it_can_from_any_answer():
    card = model_card({"version": 3, "run_id": "r", "metrics": {"auroc": 0.91}, "promoted_at": "2026-01-01T00:00:00"})
    assert (card.version, card.auroc, card.promoted_at) == (3, 0.91, "2026-01-01T00:00:00")
    assert model_card({"version": 3, "metrics": "none", "promoted_at": 5}).auroc is None
    assert all(model_card(answer) is None for answer in (None, [], {"version": "3"}, {}))


def test_a_metrics_endpoint_that_does_not_answer_is_none(free_ports):
    assert scrape_samples(f"http://127.0.0.1:{free_ports(1)[0]}/metrics") is None
    assert scrape_samples("") is None
    assert scrape_samples("not a url") is None


# ---- the HTML parts


def test_flow_html_draws_each_stage_and_marks_the_down_ones():
    flow = compute_flow([Scrape(0.0, parse_samples(exposition(0, 0, {})), None, None, None)])
    page = flow_html(flow)
    assert page.count('class="stage') == 5 and page.count('class="stage down"') == 2
    assert "asking" in flow_html(None)


def test_tiles_html_shows_each_verdict_and_outlines_the_selected_machine():
    page = tiles_html([Tile(1, HEALTHY, False), Tile(2, LIKELY_TO_BREAK, True)], selected=2)
    assert 'class="tile healthy" data-sensor="1"' in page
    assert 'class="tile likely_to_break selected" data-sensor="2"' in page and "likely to break" in page


def test_alerts_html_lists_the_newest_first():
    fleet = Fleet()
    fleet.add_all((ALERTS_TOPIC, alert(sensor_id, second=20 - sensor_id)) for sensor_id in range(1, 20))
    page = alerts_html(fleet.alerts_since())
    assert page.index("machine 1<") < page.index("machine 2<") and "machine 9<" not in page


def test_what_comes_from_outside_is_escaped():
    assert "<script>" not in status_html("waiting on Kafka: <script>", {("<t>", "<r>"): 1}, 0)
    card = model_card({"version": 1, "promoted_at": "<b>never</b>"})
    assert "<b>never" not in model_html(card, None) and "model v1" in model_html(card, None)


# ---- a page's session (outside a server, `pn.state.onload` runs at once)


def test_a_session_shows_the_fleet_and_streams_only_new_readings():
    feed = Feed(Sources("kafka:9092"), run_factory=FakeRun)
    session = Session(feed)
    fleet = session.run.fleet
    fleet.add_all([(SCORED_TOPIC, scored(1, 0)), (SCORED_TOPIC, scored(2, 0)),
                   (SCORED_TOPIC, scored(2, 1, LIKELY_TO_BREAK))])
    session.refresh()
    assert session.machine.options == [1, 2] and session.machine.value == 2  # the one likely to break first
    assert session.readings.data[VERDICT] == ["healthy", FLAGGED]
    assert 'data-sensor="2"' in session.tiles_pane.object

    fleet.add_all([(SCORED_TOPIC, scored(2, 2)), (SCORED_TOPIC, scored(1, 1)), (ALERTS_TOPIC, alert(2, 2))])
    session.refresh()
    assert len(session.readings.data["time"]) == 3 and session.readings.data["sensor_0"][-1] == 2.0
    assert session.alerts.data["machine"] == ["2"] and list(session.timeline.y_range.factors) == ["2"]
    assert "machine 2" in session.alerts_pane.object

    session.machine.value = 1
    assert session.readings.data["sensor_0"] == [0.0, 1.0]
    session.close(None)
    assert not feed.running


def test_default_machine():
    assert default_machine([]) is None
    assert default_machine([Tile(1, HEALTHY, False), Tile(2, HEALTHY, False)]) == 1
    assert default_machine([Tile(1, HEALTHY, False), Tile(2, LIKELY_TO_BREAK, True)]) == 2


def test_the_cli_binds_to_loopback_by_default_and_refuses_a_bad_port(capsys):
    args = build_parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 5006)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--port", "0"])
    assert "not a port number" in capsys.readouterr().err
