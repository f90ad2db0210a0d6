"""One way to open an impyla session against the HiveServer2 endpoint (Spark Thrift Server or Impala)."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from impala.dbapi import connect as impyla_connect
from impala.error import HiveServer2Error

# The Spark Thrift Server turns on Java 8 time objects in every session, but the Kudu connector converts
# TIMESTAMPs as java.sql.Timestamp: an INSERT would fail with a ClassCastException. Impala has no such
# option and refuses the statement, which is then skipped.
SPARK_SESSION_SETTINGS = ("SET spark.sql.datetime.java8API.enabled=false",)


@contextmanager
def cursor(host: str | None = None, port: int | None = None, timeout_s: float = 60) -> Iterator:
    """An impyla cursor (one SQL session) on SQL_HOST:SQL_PORT; arguments win over the environment."""
    host = host or os.environ.get("SQL_HOST", "127.0.0.1")
    port = int(port or os.environ.get("SQL_PORT", "10000"))
    # The local endpoint has no authentication (it listens on loopback only) and takes PLAIN SASL with any
    # password; an Impala without authentication (Compose) wants NOSASL, one with LDAP PLAIN with SQL_USER and
    # SQL_PASSWORD, one with Kerberos GSSAPI (after kinit). SQL_USE_SSL=true for TLS.
    mechanism = os.environ.get("SQL_AUTH_MECHANISM", "PLAIN")
    credentials = {}
    if mechanism == "PLAIN":
        credentials = {"user": os.environ.get("SQL_USER") or getpass.getuser(),
                       "password": os.environ.get("SQL_PASSWORD") or "unused"}
    conn = impyla_connect(host=host, port=port, auth_mechanism=mechanism, timeout=timeout_s,
                          use_ssl=os.environ.get("SQL_USE_SSL", "false").lower() == "true", **credentials)
    try:
        # Each impyla cursor is its own server-side session: settings must be made on the cursor we hand out.
        cur = conn.cursor()
        for statement in SPARK_SESSION_SETTINGS:
            with suppress(HiveServer2Error):
                cur.execute(statement)
        yield cur
        cur.close()
    finally:
        conn.close()


ROW_RETURNING_VERBS = {"select", "with", "show", "describe", "desc", "explain", "values", "set"}


def query(statement: str, host: str | None = None, port: int | None = None) -> list[tuple]:
    """Run one statement and return its rows (empty for statements such as INSERT or CREATE)."""
    with cursor(host, port) as cur:
        cur.execute(statement)
        # The Thrift Server describes an INSERT's result set but sends no columns, which impyla cannot fetch.
        verb = statement.split(maxsplit=1)[0].lower() if statement.strip() else ""
        return cur.fetchall() if cur.description and verb in ROW_RETURNING_VERBS else []
