"""The health file: how the gateway and the job report, and how `status` and Compose read the report."""

from __future__ import annotations

import time

import pytest

from runtime.health import STALE_AFTER_S, Health, is_up, main, read_health, write_health


@pytest.mark.parametrize("report, age_s, exit_code", [
    (Health("up", "bridging"), 0, 0),
    (Health("degraded", "waiting", "kafka"), 0, 1),
    (Health("starting", "subscribing"), 0, 1),
    (Health("up", "bridging"), STALE_AFTER_S + 1, 1),  # a process that stopped writing is not up, whatever it said
])
def test_only_a_fresh_up_report_is_healthy(tmp_path, capsys, report, age_s, exit_code):
    path = tmp_path / "gateway.health"
    write_health(path, Health(report.state, report.detail, report.waiting_on, time.time() - age_s))
    assert main([str(path)]) == exit_code
    assert is_up(path) is (exit_code == 0)
    if age_s:
        assert "no health report for" in capsys.readouterr().out


def test_a_missing_or_torn_file_is_no_report(tmp_path):
    assert read_health(tmp_path / "none") is None
    (tmp_path / "torn").write_text('{"state": "up", "upd')
    assert read_health(tmp_path / "torn") is None
    assert main([str(tmp_path / "torn")]) == 1


def test_a_report_round_trips(tmp_path):
    written = Health("degraded", "batch 3: writing to Kudu failed", "kudu", 1_800_000_000.0, {"rows": 12.0})
    write_health(tmp_path / "job.health", written)
    assert read_health(tmp_path / "job.health") == written
