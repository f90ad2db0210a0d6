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
