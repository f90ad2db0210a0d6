-- Lab 9: the table the streaming job writes to, exactly as the workshop creates it in Impala.
-- On a cluster, run it in impala-shell (or any Impala client);
-- Impala names the Kudu table `impala::default.sensors`.
-- The local stack creates the same Kudu table from this file with Kudu's own tooling (stack/kudu_table.py).
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
  PRIMARY KEY (sensor_id, sensor_ts)
)
PARTITION BY HASH PARTITIONS 16
STORED AS KUDU
TBLPROPERTIES ('kudu.num_tablet_replicas' = '1');
