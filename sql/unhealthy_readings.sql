-- Lab 10: the readings the model flagged: machines likely to break.
select sensor_id, sensor_ts from sensors where is_healthy = 0;
