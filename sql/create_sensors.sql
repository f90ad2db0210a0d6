-- Lab 9: the table the streaming job writes to, as the workshop creates it in Impala, plus one column.
-- On a cluster, run it in impala-shell (or any Impala client, or `python -m sql -f sql/create_sensors.sql`),
-- and Impala names the Kudu table `impala::default.sensors`.
-- Locally, `python -m sql -f` runs it as Impala would, with Kudu's own tooling (sql/kudu_ddl.py), and the
-- stack creates the same Kudu table from this file (adding new columns to a table an older version made).
CREATE TABLE IF NOT EXISTS sensors
(
  sensor_id INT,
  sensor_ts TIMESTAMP,
  sensor_0 DOUBLE,
  sensor_1 DOUBLE,
  sensor_2 DOUBLE,
  sensor_3 DOUBLE,
  sensor_4 DOUBLE,
  sensor_5 DOUBLE,
  sensor_6 DOUBLE,
  sensor_7 DOUBLE,
  sensor_8 DOUBLE,
  sensor_9 DOUBLE,
  sensor_10 DOUBLE,
  sensor_11 DOUBLE,
  is_healthy INT,
  -- Beyond the workshop's schema, which ends at is_healthy: the version of the served model that gave the
  -- verdict (NULL for rows written without one). After lab 7 promotes a new model, old and new verdicts are
  -- told apart.
  model_version INT,
  PRIMARY KEY (sensor_id, sensor_ts)
)
PARTITION BY HASH PARTITIONS 16
STORED AS KUDU
TBLPROPERTIES ('kudu.num_tablet_replicas' = '1');
