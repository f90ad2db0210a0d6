"""One way to open an impyla session against the HiveServer2 endpoint (Spark Thrift Server or Impala)."""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from impala.dbapi import connect as impyla_connect
from impala.error import HiveServer2Error
from impala.hiveserver2 import HiveServer2Connection, HiveServer2Cursor
from thrift.Thrift import TException
from thrift.transport.TTransport import TTransportException

from runtime.settings import connection_settings

# The Spark Thrift Server turns on Java 8 time objects in every session, but the Kudu connector converts
# TIMESTAMPs as java.sql.Timestamp: an INSERT would fail with a ClassCastException. Impala has no such
# option and refuses the statement, which is then skipped.
SPARK_SESSION_SETTINGS = ("SET spark.sql.datetime.java8API.enabled=false",)
# Thrift logs each failed connection itself, with a traceback, to stderr when nothing else handles its log; the
# SqlUnavailable raised below says it once. (Logging set up by an application still receives thrift's records.)
logging.getLogger("thrift").addHandler(logging.NullHandler())


class SqlUnavailable(ConnectionError):
    """No SQL session could be opened: nothing listens there, or what listens does not speak HiveServer2."""


def _cause(exc: BaseException, timeout_s: float) -> str:
    """A few words on why opening failed (thrift's own message wraps the socket error, in `inner`)."""
    if isinstance(exc, TTransportException) and exc.type == TTransportException.TIMED_OUT:
        return f"no answer within {timeout_s:g} s"
    inner = getattr(exc, "inner", None)
    cause = inner if isinstance(inner, OSError) else exc
    text = (cause.strerror if isinstance(cause, OSError) else None) or str(cause)
    return text.splitlines()[0][:200] if text.strip() else type(cause).__name__


def _session(host: str, port: int, timeout_s: float) -> tuple[HiveServer2Connection, HiveServer2Cursor]:
    """An open impyla connection and a cursor on it, with SPARK_SESSION_SETTINGS made."""
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
    except BaseException:
        conn.close()
        raise
    return conn, cur


@contextmanager
def cursor(host: str | None = None, port: int | None = None, timeout_s: float = 60) -> Iterator:
    """An impyla cursor (one SQL session) on SQL_HOST:SQL_PORT; arguments win over the connection settings
    (`runtime.settings.connection_settings`: the environment, then the stack's connection file).

    `timeout_s` bounds each network read. SqlUnavailable when no session can be opened.
    """
    if not (host and port):
        settings = connection_settings()
        host, port = host or settings.get("SQL_HOST"), port or settings.get("SQL_PORT")
    if not (host and port):
        raise SqlUnavailable("SQL_HOST and SQL_PORT are not set: run `make up` (writes .stack/connection.env) "
                             "or export them")
    port = int(port)
    try:
        conn, cur = _session(host, port, timeout_s)
    except (TException, OSError) as exc:
        raise SqlUnavailable(f"cannot reach the SQL endpoint at {host}:{port} ({_cause(exc, timeout_s)}): "
                             f"is the stack up? run `make up` or `make status`") from exc
    try:
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
