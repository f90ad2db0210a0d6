"""SQL over the `sensors` table through impyla: the local Spark Thrift Server, or Impala on a cluster.

The lab-9 DDL is `sql/create_sensors.sql`; `sql.client.execute(statement)` runs it, or any statement, against
SQL_HOST:SQL_PORT as Impala would (`sql.kudu_ddl` does Impala's Kudu DDL where no Impala runs).
"""
