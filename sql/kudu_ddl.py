"""Impala's DDL of Kudu tables where no Impala runs: `CREATE TABLE ... STORED AS KUDU` and `DROP TABLE`, done as
Impala does them, with Kudu's own tooling (`kudu table create|delete`, `runtime.kudu`) and a Spark table over the
Kudu table.

On a cluster Impala runs the lab-9 DDL (`sql/create_sensors.sql`) itself. The local SQL endpoint is Spark's
Thrift Server, which cannot; `sql.client` hands such statements here when the endpoint is not Impala. This module
reads the subset of Impala's syntax the labs use for Kudu tables (columns `name TYPE`, PRIMARY KEY (...),
PARTITION BY HASH [(columns)] PARTITIONS n, TBLPROPERTIES 'kudu.num_tablet_replicas'), creates the table Impala
would have created, under the name Impala gives it (`impala::<database>.<table>`), and registers `<table>` in
Spark over it. `DROP TABLE` of such a table drops both, as Impala drops a managed Kudu table, except the stack's
own `sensors` unless asked. The launcher creates the stack's `sensors` from the same file (`load_sensors_spec`),
and adds the columns a newer file has to an older table (`add_missing_columns`); it creates `alerts` and
`edge_verdicts` the same way (`load_stack_specs`), and the view `edge_agreement` over them (`replace_view`).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runtime.kudu import KuduTables
from runtime.settings import KUDU_TABLE, REPO_ROOT

SENSORS_DDL = REPO_ROOT / "sql" / "create_sensors.sql"
ALERTS_DDL = REPO_ROOT / "sql" / "create_alerts.sql"
EDGE_VERDICTS_DDL = REPO_ROOT / "sql" / "create_edge_verdicts.sql"
EDGE_AGREEMENT_DDL = REPO_ROOT / "sql" / "create_edge_agreement.sql"

# Impala column types and the Kudu types Impala maps them to.
IMPALA_TO_KUDU = {
    "TINYINT": "INT8", "SMALLINT": "INT16", "INT": "INT32", "BIGINT": "INT64",
    "FLOAT": "FLOAT", "DOUBLE": "DOUBLE", "BOOLEAN": "BOOL", "STRING": "STRING",
    "TIMESTAMP": "UNIXTIME_MICROS", "BINARY": "BINARY", "DATE": "DATE",
}
# Impala's answers (its `summary` column) to the DDL it runs.
CREATED, EXISTS, DROPPED = "Table has been created.", "Table already exists.", "Table has been dropped."

_CREATE = re.compile(r"CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?([\w.]+)\s*\(", re.I)
_STORED_AS_KUDU = re.compile(r"\bSTORED\s+AS\s+KUDU\b", re.I)
_DROP = re.compile(r"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?([\w.]+)(?:\s+PURGE)?", re.I)
_CREATE_VIEW = re.compile(r"CREATE\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?([\w.]+)\s+AS\b", re.I)


class KuduDdlError(ValueError):
    """Kudu DDL that cannot be run here; the message names the statement's table or the part at fault."""


@dataclass(frozen=True)
class KuduTableSpec:
    name: str
    columns: tuple[tuple[str, str], ...]  # (column name, Kudu type)
    primary_key: tuple[str, ...]
    hash_columns: tuple[str, ...]
    hash_buckets: int
    replicas: int

    def to_kudu_json(self) -> str:
        """The JSON object `kudu table create` takes."""
        columns = [
            {"column_name": name, "column_type": kudu_type, "is_nullable": name not in self.primary_key}
            for name, kudu_type in self.columns
        ]
        spec = {
            "table_name": self.name,
            "schema": {"columns": columns, "key_column_names": list(self.primary_key)},
            "partition": {"hash_partitions": [
                {"columns": list(self.hash_columns), "num_buckets": self.hash_buckets}
            ]},
            "num_replicas": self.replicas,
        }
        return json.dumps(spec)


@dataclass(frozen=True)
class CreateKuduTable:
    """`CREATE TABLE [IF NOT EXISTS] [database.]name (...) ... STORED AS KUDU`."""

    sql_name: str  # the name SQL knows it by, lowercase as Impala keeps it
    spec: KuduTableSpec
    if_not_exists: bool


@dataclass(frozen=True)
class DropTable:
    """`DROP TABLE [IF EXISTS] [database.]name [PURGE]`."""

    sql_name: str
    kudu_name: str  # the Kudu table Impala would drop with it, if it is a managed Kudu table


def impala_kudu_table_name(sql_name: str) -> str:
    """The Kudu name Impala gives the managed Kudu table `[database.]table` (database `default` if not given)."""
    database, _, table = sql_name.lower().rpartition(".")
    return f"impala::{database or 'default'}.{table}"


def strip_comments(sql: str) -> str:
    """`sql` without its `--` and `/* */` comments."""
    return re.sub(r"--[^\n]*", "", re.sub(r"/\*.*?\*/", " ", sql, flags=re.S))


def _statement(sql: str) -> str:
    return strip_comments(sql).strip().rstrip(";").strip()


def applies_to(sql: str) -> bool:
    """Whether `sql` is DDL that a non-Impala endpoint must run here: a CREATE TABLE ... STORED AS KUDU, or a DROP
    TABLE (which may be of such a table)."""
    statement = _statement(sql)
    return bool(_CREATE.match(statement) and _STORED_AS_KUDU.search(statement) or _DROP.fullmatch(statement))


def parse_statement(sql: str) -> CreateKuduTable | DropTable:
    """The Kudu DDL statement `sql` (see `applies_to`); KuduDdlError naming what is not supported."""
    statement = _statement(sql)
    drop = _DROP.fullmatch(statement)
    if drop:
        sql_name = drop.group(1).lower()
        return DropTable(sql_name, impala_kudu_table_name(sql_name))
    return parse_create(statement)


def parse_create(sql: str) -> CreateKuduTable:
    """Parse a `CREATE TABLE ... STORED AS KUDU` statement; KuduDdlError naming the table and what is unsupported."""
    sql = strip_comments(sql)
    head = _CREATE.search(sql)
    if not head:
        raise KuduDdlError("no CREATE TABLE <name> ( ... ) statement found")
    sql_name = head.group(2).lower()
    try:
        spec = _parse_table(sql, head.end(), impala_kudu_table_name(sql_name))
    except KuduDdlError as exc:
        raise KuduDdlError(f"CREATE TABLE {sql_name}: {exc}") from None
    return CreateKuduTable(sql_name, spec, bool(head.group(1)))


def _parse_table(sql: str, body_start: int, kudu_name: str) -> KuduTableSpec:
    depth, pos = 1, body_start
    while depth and pos < len(sql):
        depth += {"(": 1, ")": -1}.get(sql[pos], 0)
        pos += 1
    if depth:
        raise KuduDdlError("unbalanced parentheses in the column list")
    body, tail = sql[body_start : pos - 1], sql[pos:]
    if not _STORED_AS_KUDU.search(tail):
        raise KuduDdlError("not a Kudu table: STORED AS KUDU is missing")
    key = re.search(r"PRIMARY\s+KEY\s*\(([^)]*)\)", body, re.I)
    if not key:
        raise KuduDdlError("PRIMARY KEY (...) is missing")
    primary_key = _names(key.group(1))
    columns = _columns(body[: key.start()])
    column_names = [name for name, _ in columns]
    unknown_keys = [name for name in primary_key if name not in column_names]
    if unknown_keys:
        raise KuduDdlError(f"PRIMARY KEY names unknown column(s) {unknown_keys}")
    # Kudu requires the key columns first, in key order; Impala's DDL guarantees the same.
    if column_names[: len(primary_key)] != list(primary_key):
        raise KuduDdlError(f"primary key columns {list(primary_key)} must come first, in order")
    partition = re.search(r"PARTITION\s+BY\s+HASH\s*(?:\(([^)]*)\))?\s*PARTITIONS\s+(\d+)", tail, re.I)
    if not partition:
        raise KuduDdlError("PARTITION BY HASH [(columns)] PARTITIONS n is missing")
    replicas = re.search(r"'kudu\.num_tablet_replicas'\s*=\s*'(\d+)'", tail, re.I)
    return KuduTableSpec(
        name=kudu_name,
        columns=tuple(columns),
        primary_key=primary_key,
        hash_columns=_names(partition.group(1)) if partition.group(1) else primary_key,
        hash_buckets=int(partition.group(2)),
        replicas=int(replicas.group(1)) if replicas else 1,
    )


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip().lower() for name in text.split(",") if name.strip())


def _columns(text: str) -> list[tuple[str, str]]:
    """(name, Kudu type) of each `name TYPE` of a column list."""
    columns = []
    for definition in filter(None, (part.split() for part in text.split(","))):
        name, impala_type = definition[0].lower(), definition[1].upper() if len(definition) > 1 else ""
        if impala_type not in IMPALA_TO_KUDU:
            raise KuduDdlError(f"column {name!r}: type {impala_type or '(none)'!r} is not supported; "
                               f"supported: {', '.join(IMPALA_TO_KUDU)}")
        if len(definition) > 2:
            raise KuduDdlError(f"column {name!r}: {' '.join(definition[2:])!r} is not supported here: "
                               "write `name TYPE` only")
        columns.append((name, IMPALA_TO_KUDU[impala_type]))
    return columns


def load_sensors_spec() -> KuduTableSpec:
    """The Kudu table of the lab-9 DDL, `sql/create_sensors.sql`: the stack's `sensors`."""
    return parse_create(SENSORS_DDL.read_text()).spec


def load_stack_specs() -> list[KuduTableSpec]:
    """The stack's Kudu tables: `sensors` (the lab-9 DDL), `alerts` (`sql/create_alerts.sql`) and `edge_verdicts`
    (`sql/create_edge_verdicts.sql`)."""
    return [load_sensors_spec(), *(parse_create(ddl.read_text()).spec for ddl in (ALERTS_DDL, EDGE_VERDICTS_DDL))]


def sensors_ddl(sql_name: str) -> str:
    """The lab-9 DDL for a table named `sql_name` instead of `sensors` (a lab's or a benchmark's own)."""
    return _renamed(SENSORS_DDL, sql_name)


def alerts_ddl(sql_name: str) -> str:
    """The DDL of `alerts` for a table named `sql_name` instead (a test's own)."""
    return _renamed(ALERTS_DDL, sql_name)


def _renamed(ddl: Path, sql_name: str) -> str:
    return _CREATE.sub(lambda head: f"CREATE TABLE {head.group(1) or ''}{sql_name} (", ddl.read_text(), count=1)


# ---- Kudu


def ensure_table(kudu: KuduTables, spec: KuduTableSpec) -> bool:
    """Create the table unless it exists. True if it was created."""
    if kudu.exists(spec.name):
        return False
    kudu.create(spec.to_kudu_json())
    return True


def add_missing_columns(kudu: KuduTables, spec: KuduTableSpec) -> list[str]:
    """Add the columns of `spec` that its existing table lacks (an older version created it), as nullable
    columns: the rows stored keep their data, NULL in the new columns. The names of the columns added."""
    stored = dict(kudu.columns(spec.name))
    for name, kudu_type in spec.columns:
        if name in stored and stored[name] != kudu_type:
            raise KuduDdlError(f"Kudu table {spec.name}: column {name} is {stored[name]}, the DDL says {kudu_type}")
        if name not in stored and name in spec.primary_key:
            raise KuduDdlError(f"Kudu table {spec.name} lacks key column {name}, which cannot be added")
    missing = [(name, kudu_type) for name, kudu_type in spec.columns if name not in stored]
    for name, kudu_type in missing:
        kudu.add_column(spec.name, name, kudu_type)
    return [name for name, _ in missing]


# ---- the Spark Thrift Server


def register_in_sql(cur, sql_name: str, kudu_name: str, master: str, replace: bool = False) -> None:
    """Register `sql_name` in the Spark Thrift Server (cursor `cur`) over the Kudu table `kudu_name`. `replace`:
    drop an earlier registration first (Spark keeps the columns it saw; a new one sees columns added since).
    Dropping the Spark table leaves Kudu's data alone."""
    if replace:
        cur.execute(f"DROP TABLE IF EXISTS {sql_name}")
    cur.execute(f"CREATE TABLE {sql_name} USING kudu OPTIONS ("
                f"'kudu.master' = '{master}', 'kudu.table' = '{kudu_name}')")


def replace_view(cur, ddl: Path) -> str:
    """Create the view of the file `ddl` (one `CREATE VIEW [IF NOT EXISTS] name AS ...`) on cursor `cur`, in place
    of any older definition (dropped first, so that a newer file's wins); the view's name. A Spark view keeps the
    query, not the data: its tables may be registered again (`register_in_sql`) and it reads them as they are."""
    statement = _statement(ddl.read_text())
    head = _CREATE_VIEW.match(statement)
    if not head:
        raise ValueError(f"{ddl}: not one CREATE VIEW [IF NOT EXISTS] <name> AS ... statement")
    cur.execute(f"DROP VIEW IF EXISTS {head.group(1)}")
    cur.execute(statement)
    return head.group(1)


def _registered(cur, sql_name: str) -> bool:
    database, _, table = sql_name.rpartition(".")
    cur.execute(f"SHOW TABLES IN {database or 'default'} LIKE '{table}'")
    return any(row[1] == table for row in cur.fetchall())


def run_on_spark(cur, ddl: CreateKuduTable | DropTable, kudu: KuduTables, drop_stack_table: bool = False
                 ) -> str | None:
    """Run `ddl` as Impala would, on the Spark Thrift Server of cursor `cur` and the Kudu cluster `kudu`; Impala's
    summary of it. None for a DROP TABLE of a table that is not in Kudu: Spark runs that statement itself.

    `drop_stack_table`: let `DROP TABLE sensors` delete the stack's own Kudu table (refused otherwise)."""
    try:
        if isinstance(ddl, DropTable):
            return _drop(cur, ddl, kudu, drop_stack_table)
        return _create(cur, ddl, kudu)
    except (RuntimeError, subprocess.SubprocessError) as exc:  # Kudu's tool failed or hung
        verb = "DROP" if isinstance(ddl, DropTable) else "CREATE"
        raise KuduDdlError(f"{verb} TABLE {ddl.sql_name}: {exc}") from exc


def _create(cur, ddl: CreateKuduTable, kudu: KuduTables) -> str:
    in_kudu, in_sql = kudu.exists(ddl.spec.name), _registered(cur, ddl.sql_name)
    if in_kudu or in_sql:
        if not ddl.if_not_exists:
            places = [place for place, there in (("in SQL", in_sql), (f"in Kudu as {ddl.spec.name}", in_kudu))
                      if there]
            raise KuduDdlError(f"CREATE TABLE {ddl.sql_name}: the table already exists ({' and '.join(places)}): "
                               f"drop it first (DROP TABLE {ddl.sql_name}), or write CREATE TABLE IF NOT EXISTS")
        if not in_sql:
            register_in_sql(cur, ddl.sql_name, ddl.spec.name, kudu.master)
        return EXISTS
    kudu.create(ddl.spec.to_kudu_json())
    register_in_sql(cur, ddl.sql_name, ddl.spec.name, kudu.master)
    return CREATED


def _drop(cur, ddl: DropTable, kudu: KuduTables, drop_stack_table: bool) -> str | None:
    if not kudu.exists(ddl.kudu_name):
        return None
    if ddl.kudu_name == KUDU_TABLE and not drop_stack_table:
        raise KuduDdlError(f"DROP TABLE {ddl.sql_name}: refused: it is the stack's own table, which the streaming "
                           f"job writes to, and dropping it deletes Kudu's {ddl.kudu_name} with every reading. To "
                           "drop it all the same: `python -m sql --drop-stack-table`, or drop_stack_table=True")
    cur.execute(f"DROP TABLE IF EXISTS {ddl.sql_name}")
    kudu.delete(ddl.kudu_name)
    return DROPPED
