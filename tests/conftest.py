"""The tests' shared fixtures live in tests/fixtures/, registered here as plugins: a test file asks for a fixture
by name and never imports another test file (quix-streams' layout). Kafka helpers: `runtime.kafka`.

- local_stack: `local_stack`, `stack_config`, `secrets`, `free_ports`, `stack_environment`
- workshop_model: the session's private MLflow store, `workshop_run`, `served_model_file`
- pipeline: `pipeline`, `pipeline_for`
- kafka_records: `produce_keyed`
- kudu_rows: `kudu_row_count`, `insert_reading`
- drill_results: `drill_results` and the drills' table at the end of the run
- drills: `drill_runner` (a steady stream, a fault, the time to recover, an exact reconciliation), and the faults
- ports: `listening`, `closed` (loopback ports where something answers, or nothing)
- edge: `edge_services` (Mosquitto and the model server alone), `edge_models`, `edge_watch`, `edge_agents`
"""

from __future__ import annotations

# Imported now, before any test starts a service. Otherwise Hypothesis' pytest plugin imports it at the very end of
# a run, and compiling it there failed with "SystemError: AST constructor recursion depth mismatch" (a CPython 3.11
# bug in the AST's recursion-depth check): a stack test file run alone, e.g. tests/test_listening.py, passed and
# then exited 1.
import hypothesis  # noqa: F401

pytest_plugins = [
    "tests.fixtures.local_stack",
    "tests.fixtures.workshop_model",
    "tests.fixtures.pipeline",
    "tests.fixtures.kafka_records",
    "tests.fixtures.kudu_rows",
    "tests.fixtures.drill_results",
    "tests.fixtures.drills",
    "tests.fixtures.edge",
    "tests.fixtures.ports",
]

