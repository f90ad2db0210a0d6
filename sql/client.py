"""One way to open an impyla session against the HiveServer2 endpoint (Spark Thrift Server or Impala), and to run
statements in it as Impala would.

    execute(statement, host, port) -> Result       one statement in a session of its own: columns and rows
    with session(host, port) as sql: sql.execute(statement)   several statements in one session
    query(statement, host, port) -> rows           the rows alone

Impala's DDL of Kudu tables (`CREATE TABLE ... STORED AS KUDU`, `DROP TABLE`; the lab-9 `sql/create_sensors.sql`)
goes to Impala unchanged. Spark's Thrift Server cannot run it, so on any other endpoint (asked once per session:
`select version()` answers `impalad version ...` on Impala) `sql.kudu_ddl` does what Impala would do, with Kudu's
own tooling on the Kudu cluster at KUDU_MASTER.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property

from impala.dbapi import connect as impyla_connect
from impala.error import Error as ImpylaError
from impala.error import HiveServer2Error
from impala.hiveserver2 import HiveServer2Connection, HiveServer2Cursor
from thrift.Thrift import TException
from thrift.transport.TTransport import TTransportException

from runtime.kudu import KuduTables
from runtime.settings import connection_settings
from sql import kudu_ddl
from sql.kudu_ddl import KuduDdlError

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


@dataclass(frozen=True)
class Result:
    """What a statement answered: its column names and rows (none for statements such as INSERT; Impala's `summary`
    for its DDL). `pandas.DataFrame(result.rows, columns=result.columns)` is it as a table."""

    columns: list[str]
    rows: list[tuple]


class Session:
    """One SQL session (an impyla cursor) that runs each statement as Impala would: see the module's docstring.
    `kudu_master`: the Kudu cluster for Kudu DDL on a non-Impala endpoint (default: KUDU_MASTER)."""

    def __init__(self, cur: HiveServer2Cursor, kudu_master: str | None = None):
        self.cur = cur
        self.kudu_master = kudu_master

    @cached_property
    def is_impala(self) -> bool:
        """Whether Impala answers this session (asked once)."""
        try:
            self.cur.execute("select version()")
            version = self.cur.fetchall()[0][0]
        except ImpylaError:  # an endpoint without version(): not Impala
            return False
        return str(version).startswith("impalad")

    def execute(self, statement: str, drop_stack_table: bool = False) -> Result:
        """Run one statement (a trailing `;` is dropped). `drop_stack_table`: let `DROP TABLE sensors` delete the
        stack's own Kudu table on a non-Impala endpoint (refused otherwise). KuduDdlError for Kudu DDL that
        cannot be run here, naming the table or the part of the statement at fault."""
        statement = statement.strip().rstrip(";").rstrip()
        if kudu_ddl.applies_to(statement) and not self.is_impala:
            summary = kudu_ddl.run_on_spark(self.cur, kudu_ddl.parse_statement(statement), self._kudu(),
                                            drop_stack_table)
            if summary is not None:
                return Result(["summary"], [(summary,)])
        self.cur.execute(statement)
        # The Thrift Server describes an INSERT's result set but sends no columns, which impyla cannot fetch.
        words = kudu_ddl.strip_comments(statement).split(maxsplit=1)
        verb = words[0].lower() if words else ""
        if not (self.cur.description and verb in ROW_RETURNING_VERBS):
            return Result([], [])
        return Result([column[0] for column in self.cur.description], self.cur.fetchall())

    def _kudu(self) -> KuduTables:
        master = self.kudu_master or connection_settings().get("KUDU_MASTER")
        if not master:
            raise KuduDdlError("KUDU_MASTER is not set: Kudu DDL on this endpoint needs the Kudu cluster's address "
                               "(run `make up`, or export it)")
        try:
            return KuduTables(master)
        except FileNotFoundError as exc:
            raise KuduDdlError(f"Kudu DDL on this endpoint needs Kudu's command-line tool: {exc}") from None


@contextmanager
def session(host: str | None = None, port: int | None = None, timeout_s: float = 60,
            kudu_master: str | None = None) -> Iterator[Session]:
    """A Session on SQL_HOST:SQL_PORT (arguments win over the connection settings, as for `cursor`)."""
    with cursor(host, port, timeout_s) as cur:
        yield Session(cur, kudu_master)


def execute(statement: str, host: str | None = None, port: int | None = None, kudu_master: str | None = None,
            drop_stack_table: bool = False, timeout_s: float = 60) -> Result:
    """Run one statement in a session of its own, as Impala would (`Session.execute`): its columns and rows."""
    with session(host, port, timeout_s, kudu_master) as sql:
        return sql.execute(statement, drop_stack_table)


def query(statement: str, host: str | None = None, port: int | None = None) -> list[tuple]:
    """Run one statement and return its rows (empty for statements such as INSERT or CREATE)."""
    return execute(statement, host, port).rows
