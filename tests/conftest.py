"""The tests' shared fixtures live in tests/fixtures/, registered here as plugins: a test file asks for a fixture
by name and never imports another test file (quix-streams' layout). Kafka helpers: `runtime.kafka`.

- local_stack: `local_stack`, `stack_config`, `secrets`, `free_ports`, `stack_environment`
- workshop_model: the session's private MLflow store, `workshop_run`, `served_model_file`
- pipeline: `pipeline`, `pipeline_for`
- kafka_records: `produce_keyed`
- kudu_rows: `kudu_row_count`, `insert_reading`
- drill_results: `drill_results` and the drills' table at the end of the run
"""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.local_stack",
    "tests.fixtures.workshop_model",
    "tests.fixtures.pipeline",
    "tests.fixtures.kafka_records",
    "tests.fixtures.kudu_rows",
    "tests.fixtures.drill_results",
]

