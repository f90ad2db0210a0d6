-- The latest reading of each machine, with the model's verdict.
select sensor_id, sensor_ts, is_healthy
from (select sensor_id, sensor_ts, is_healthy,
             row_number() over (partition by sensor_id order by sensor_ts desc) as newest
      from sensors) ranked
where newest = 1
order by sensor_id;
