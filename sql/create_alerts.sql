-- The alerts the streaming job raises: one row each time a machine's verdict changes (healthy <-> likely to
-- break, debounced), the same events as Kafka `iot.alerts` and MQTT `alerts/<sensor_id>` (contract.ALERT_FIELDS).
-- The key is the machine and the reading that made the change: a replayed batch writes nothing twice.
-- `readings`: the verdicts that decided it, oldest first, as JSON [[sensor_ts_us, is_healthy], ...].
-- Like create_sensors.sql: Impala's DDL; locally `python -m sql -f` runs it as Impala would, and the stack
-- creates this table from this file.
CREATE TABLE IF NOT EXISTS alerts
(
  sensor_id INT,
  sensor_ts TIMESTAMP,
  is_healthy INT,
  state STRING,
  model_version INT,
  readings STRING,
  PRIMARY KEY (sensor_id, sensor_ts)
)
PARTITION BY HASH PARTITIONS 4
STORED AS KUDU
TBLPROPERTIES ('kudu.num_tablet_replicas' = '1');
