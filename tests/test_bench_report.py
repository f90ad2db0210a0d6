"""The pipeline bench's `--json` report: the figures a later run is compared with (no services needed)."""

from __future__ import annotations

import json

from bench.pipeline_bench import Outcome, parse_args, write_json


def test_the_json_report_holds_each_scenarios_figures(tmp_path):
    outcomes = [
        Outcome("batch", "flat out, 1,000 readings", 1_000, 0.5, [0.1, 0.2, 0.3, 0.4],
                {"gateway": 0.05, "streaming job": 0.02}),
        Outcome("per-record", "workshop rate 1/s for 60 s", 60, 60.0, [], {"gateway": 0.006}),
    ]
    path = tmp_path / "run.json"
    write_json(path, outcomes, parse_args(["--scoring", "batch", "--json", str(path)]))
    report = json.loads(path.read_text())
    assert report["options"]["scoring"] == ["batch"] and "json" not in report["options"]
    first, second = report["scenarios"]
    assert first == {"scoring": "batch", "scenario": "flat out, 1,000 readings", "readings": 1_000, "seconds": 0.5,
                     "records_per_s": 2_000.0, "p50_s": 0.25, "p99_s": 0.397, "probes": 4,
                     "cpu_us_per_record": {"gateway": 50.0, "streaming job": 20.0}}
    assert (second["p50_s"], second["p99_s"], second["probes"]) == (None, None, 0)  # no probe: null, not NaN
    assert second["cpu_us_per_record"] == {"gateway": 100.0}


def test_the_job_benchs_readings_are_contract_readings_keyed_by_machine():
    from bench.job_bench import FIRST_ID, MACHINES, readings
    from contract import parse_reading

    records = readings(250, 1_764_150_000_000_000)
    parsed = [parse_reading(value) for _, value in records]
    assert [key for key, _ in records] == [str(p["sensor_id"]).encode() for p in parsed]
    assert {p["sensor_id"] for p in parsed} == set(range(FIRST_ID, FIRST_ID + MACHINES))
    assert len({(p["sensor_id"], p["sensor_ts"]) for p in parsed}) == 250


def test_the_job_bench_takes_the_batch_lines_it_has_not_shown_yet(tmp_path):
    from bench.job_bench import batch_lines

    log = tmp_path / "job.log"
    line = ("2026-11-27 12:00:0{n},000 INFO streaming batch {n}: 10 rows, 0 dead-lettered, 0 conflicts, 0 already "
            "stored, 5 rows/s, scoring 1.00 s, write 1.00 s (Kudu 0.50 s), lag 2.0 s")
    log.write_text("\n".join([line.format(n=1), "a WARN line", line.format(n=2)]))
    assert [text.split(":")[0] for text in batch_lines(log, 1)] == ["batch 2"]
