"""`make down && make up` keeps Kafka's data and committed offsets and Kudu's rows."""

from __future__ import annotations

import pytest

from runtime.kafka import committed_offsets, end_offsets, ensure_topic, read_as_group
from runtime.settings import SQL_TABLE
from sql.client import query

pytestmark = pytest.mark.stack

TOPIC = "iot.restart-check"
GROUP = "restart-check"


def test_offsets_data_and_rows_survive_a_full_restart(local_stack, produce_keyed, insert_reading, kudu_row_count):
    cfg = local_stack.cfg
    ensure_topic(cfg.kafka_bootstrap, TOPIC, 4)
    produce_keyed(cfg.kafka_bootstrap, TOPIC, 2_000)
    assert len(read_as_group(cfg.kafka_bootstrap, TOPIC, GROUP, 2_000)) == 2_000
    offsets_before = committed_offsets(cfg.kafka_bootstrap, TOPIC, GROUP)
    assert offsets_before == end_offsets(cfg.kafka_bootstrap, TOPIC)
    insert_reading(cfg, 7001, "2019-05-02 02:00:00", 5.0, is_healthy=1)
    rows_before = kudu_row_count(cfg)

    local_stack.down()
    local_stack.up()

    assert committed_offsets(cfg.kafka_bootstrap, TOPIC, GROUP) == offsets_before
    # The group resumes where it committed: it sees only what was produced after the restart ...
    produce_keyed(cfg.kafka_bootstrap, TOPIC, 100)
    resumed = read_as_group(cfg.kafka_bootstrap, TOPIC, GROUP, 100)
    assert len(resumed) == 100
    assert all(r.offset >= offsets_before[r.partition] for r in resumed)
    # ... while the data from before the restart is all still there for a new group.
    assert len(read_as_group(cfg.kafka_bootstrap, TOPIC, "restart-check-fresh", 2_100)) == 2_100

    assert kudu_row_count(cfg) == rows_before
    assert query(f"select count(*) from {SQL_TABLE} where sensor_id = 7001", cfg.host, cfg.sql_port) == [(1,)]
