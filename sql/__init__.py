"""SQL over the `sensors` table through impyla: the local Spark Thrift Server, or Impala on a cluster.

The lab-9 DDL is `sql/create_sensors.sql`; `sql.client.connect()` opens a session against SQL_HOST:SQL_PORT.
"""
