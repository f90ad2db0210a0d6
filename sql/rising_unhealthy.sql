-- Machines whose share of unhealthy readings rose: the last 10 minutes against the 10 minutes before.
select sensor_id, recent_share, earlier_share
from (select sensor_id,
             avg(case when sensor_ts >= now() - interval 10 minutes
                      then case when is_healthy = 0 then 1.0 else 0.0 end end) as recent_share,
             avg(case when sensor_ts < now() - interval 10 minutes
                      then case when is_healthy = 0 then 1.0 else 0.0 end end) as earlier_share
      from sensors
      where sensor_ts >= now() - interval 20 minutes
      group by sensor_id) shares
where recent_share > coalesce(earlier_share, 0)
order by recent_share - coalesce(earlier_share, 0) desc;
