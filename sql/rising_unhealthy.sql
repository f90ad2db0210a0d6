-- Machines whose share of unhealthy readings rose: each machine's newest 50 readings against the 50 before them.
select sensor_id, recent_share, earlier_share
from (select sensor_id,
             avg(case when newest <= 50 then case when is_healthy = 0 then 1.0 else 0.0 end end) as recent_share,
             avg(case when newest > 50 then case when is_healthy = 0 then 1.0 else 0.0 end end) as earlier_share
      from (select sensor_id, is_healthy,
                   row_number() over (partition by sensor_id order by sensor_ts desc) as newest
            from sensors) ranked
      where newest <= 100
      group by sensor_id) shares
where recent_share > coalesce(earlier_share, 0)
order by recent_share - coalesce(earlier_share, 0) desc;
