-- How often the edge agents' verdicts agree with the central ones (the streaming job's, scored by the model
-- server), per edge model version and central model version: the verdict pairs compared (a reading scored by two
-- agents counts twice), those agreeing, and the share agreeing. Only readings both sides scored are compared (an
-- inner join of `edge_verdicts` with `sensors` on the reading's key).
--   select * from edge_agreement order by edge_model_version, central_model_version
-- The same statement runs on Impala and on the local Spark Thrift Server (a view kept in its metastore); the stack
-- creates it from this file (sql.kudu_ddl.replace_view), `python -m sql -f` does too.
CREATE VIEW IF NOT EXISTS edge_agreement AS
SELECT e.model_version AS edge_model_version,
       s.model_version AS central_model_version,
       count(*) AS compared,
       sum(CASE WHEN e.is_healthy = s.is_healthy THEN 1 ELSE 0 END) AS agreeing,
       sum(CASE WHEN e.is_healthy = s.is_healthy THEN 1 ELSE 0 END) / count(*) AS agreement
FROM edge_verdicts e
JOIN sensors s ON e.sensor_id = s.sensor_id AND e.sensor_ts = s.sensor_ts
GROUP BY e.model_version, s.model_version;
