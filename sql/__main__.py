"""`python -m sql`: run SQL against SQL_HOST:SQL_PORT (the local Spark Thrift Server, or Impala) and print tables.

Usage:
    python -m sql "select count(*) from sensors"
    python -m sql -f sql/unhealthy_readings.sql     # a file of ;-separated statements, in one session
    python -m sql -f sql/create_sensors.sql         # Impala's Kudu DDL, run as Impala would on any endpoint

On an endpoint that is not Impala (the local Spark Thrift Server), `CREATE TABLE ... STORED AS KUDU` creates the
Kudu table `impala::default.<name>` with Kudu's tooling and registers `<name>` over it, and `DROP TABLE <name>`
drops both (`sql.client`); `DROP TABLE sensors` needs --drop-stack-table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from impala.error import Error as ImpylaError
from thrift.Thrift import TException

from runtime.settings import SQL_TABLE, connection_settings
from sql.client import SqlUnavailable, session
from sql.kudu_ddl import KuduDdlError


def split_statements(text: str) -> list[str]:
    """Statements of a .sql file: comments dropped, split on ';'."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def format_table(columns: list[str], rows: list[tuple]) -> str:
    cells = [columns] + [["NULL" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    rule = "-+-".join("-" * w for w in widths)
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([lines[0], rule, *lines[1:], f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds > 0")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sql", description=__doc__.split("\n\n")[0])
    parser.add_argument("statement", nargs="?", help="one SQL statement")
    parser.add_argument("-f", "--file", type=Path, help="a .sql file of ;-separated statements")
    parser.add_argument("--timeout-s", type=_seconds, default=60.0, metavar="S",
                        help="give up when the endpoint does not answer for this long (default 60)")
    parser.add_argument("--drop-stack-table", action="store_true",
                        help=f"let DROP TABLE {SQL_TABLE} delete the stack's own Kudu table and its readings "
                             "(refused otherwise)")
    args = parser.parse_args(argv)
    if bool(args.statement) == bool(args.file):
        parser.error("give one statement, or -f FILE")
    try:
        statements = split_statements(args.file.read_text()) if args.file else [args.statement]
        settings = connection_settings()
    except (OSError, ValueError) as exc:  # an unreadable -f FILE, a malformed connection file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with session(settings.get("SQL_HOST"), settings.get("SQL_PORT"), args.timeout_s,
                     settings.get("KUDU_MASTER")) as sql:
            for statement in statements:
                result = sql.execute(statement, args.drop_stack_table)
                if result.columns:
                    print(format_table(result.columns, result.rows))
    except (SqlUnavailable, ImpylaError, KuduDdlError) as exc:
        print(f"error: {str(exc).splitlines()[0][:500]}", file=sys.stderr)
        return 1
    except (TException, OSError) as exc:  # the connection broke while a statement ran
        print(f"error: the SQL session broke off: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
