"""The audit's reconciliation: which differences between stages are explained, and which are losses."""

from __future__ import annotations

import pytest

from stack.audit import Counts, parse_since, reconcile


def counts(**changes) -> Counts:
    """A run where everything adds up: 1,000 published, 10 of them malformed, 990 readings everywhere."""
    base = {"published": 1_000, "faults": 10, "kafka_records": 990, "kafka_distinct": 990,
            "gateway_dead_letters": 10, "gateway_dead_letters_distinct": 10, "kudu_rows": 990, "kudu_distinct": 990}
    return Counts(**{**base, **changes})


def unexplained(c: Counts) -> list[str]:
    return [f.text for f in reconcile(c) if not f.explained]


def test_a_run_that_adds_up_has_nothing_to_say():
    assert reconcile(counts()) == []


@pytest.mark.parametrize("changes, expected", [
    ({"kafka_distinct": 985, "kafka_records": 985, "kudu_rows": 985, "kudu_distinct": 985},
     "5 of 990 good readings published are not in Kafka `iot`: lost between MQTT and Kafka"),
    ({"kudu_rows": 980, "kudu_distinct": 980}, "10 keys in Kafka are not in Kudu: lost between Kafka and Kudu"),
    ({"kudu_rows": 991}, "1 duplicate keys in Kudu"),
    ({"gateway_dead_letters_distinct": 9}, "9 distinct gateway dead letters, but 10 malformed messages were sent"),
])
def test_a_loss_or_a_surplus_is_unexplained(changes, expected):
    assert unexplained(counts(**changes)) == [expected]


def test_duplicates_pending_records_and_conflicts_are_explained():
    found = reconcile(counts(kafka_records=1_030, job_pending=40, kudu_rows=950, kudu_distinct=950, job_conflicts=2))
    assert all(f.explained for f in found)
    assert [f.text.split(" ", 2)[:2] for f in found] == [["40", "duplicate"], ["40", "records"], ["2", "conflicts"]]


def test_poison_sent_besides_the_run_is_expected_among_the_dead_letters():
    assert unexplained(counts(poison=27, gateway_dead_letters_distinct=37, gateway_dead_letters=37)) == []


def test_since_takes_durations_iso_times_and_epoch_seconds():
    now = 1_800_000_000.0
    assert parse_since("10m", now) == parse_since("-10m", now) == int((now - 600) * 1e6)
    assert parse_since("2026-01-01T00:00:00") == parse_since("2026-01-01T00:00:00+00:00") == 1_767_225_600_000_000
    assert parse_since("1767225600") == 1_767_225_600_000_000
