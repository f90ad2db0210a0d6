-- The edge agents' verdicts (python -m edge): each agent scores readings with its own ONNX model and publishes a
-- verdict on MQTT `verdicts/<sensor_id>`; the gateway carries them to Kafka `iot.verdicts`, the streaming job into
-- this table (contract.VERDICT_FIELDS). One row per reading and agent: the key is the reading (sensor_id,
-- sensor_ts, as in `sensors`, so the two join on it) and the agent; a repeat or a replayed batch writes nothing
-- twice (insert-ignore: the first verdict stored stands). `scored_ts`: when the agent scored it.
-- Like create_sensors.sql: Impala's DDL; locally `python -m sql -f` runs it as Impala would, and the stack
-- creates this table from this file.
CREATE TABLE IF NOT EXISTS edge_verdicts
(
  sensor_id INT,
  sensor_ts TIMESTAMP,
  agent_id STRING,
  is_healthy INT,
  model_version INT,
  scored_ts TIMESTAMP,
  PRIMARY KEY (sensor_id, sensor_ts, agent_id)
)
PARTITION BY HASH PARTITIONS 4
STORED AS KUDU
TBLPROPERTIES ('kudu.num_tablet_replicas' = '1');
