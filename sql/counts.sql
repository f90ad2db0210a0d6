-- Lab 10: re-run to watch rows arrive.
select count(*) as readings, sum(case when is_healthy = 0 then 1 else 0 end) as unhealthy from sensors;
