"""Create a Kudu table from the Impala DDL in `sql/`, with Kudu's own tooling (`kudu table create`).

On a cluster Impala runs that DDL itself; the local stack has no Impala, so this module reads the same file
(the subset Impala uses for Kudu tables: columns, PRIMARY KEY, PARTITION BY HASH [(cols)] PARTITIONS n,
TBLPROPERTIES 'kudu.num_tablet_replicas') and creates the table Impala would have created, under the name
Impala gives it: `impala::<database>.<table>`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runtime.settings import REPO_ROOT
from sql.client import cursor

SENSORS_DDL = REPO_ROOT / "sql" / "create_sensors.sql"

# Impala column types and the Kudu types Impala maps them to.
IMPALA_TO_KUDU = {
    "TINYINT": "INT8", "SMALLINT": "INT16", "INT": "INT32", "BIGINT": "INT64",
    "FLOAT": "FLOAT", "DOUBLE": "DOUBLE", "BOOLEAN": "BOOL", "STRING": "STRING",
    "TIMESTAMP": "UNIXTIME_MICROS", "BINARY": "BINARY", "DATE": "DATE",
}


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


def impala_kudu_table_name(table: str, database: str = "default") -> str:
    """The Kudu name Impala gives a managed Kudu table."""
    return f"impala::{database}.{table}"


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip().lower() for name in text.split(",") if name.strip())


def parse_impala_kudu_ddl(sql: str, database: str = "default") -> KuduTableSpec:
    """Parse a `CREATE TABLE ... STORED AS KUDU` statement; raise ValueError naming what is unsupported."""
    sql = _strip_comments(sql)
    head = re.search(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([\w.]+)\s*\(", sql, re.I)
    if not head:
        raise ValueError("no CREATE TABLE <name> ( ... ) statement found")
    table = head.group(1).lower()
    if "." in table:
        database, table = table.split(".", 1)
    body_start = head.end()
    depth, pos = 1, body_start
    while depth and pos < len(sql):
        depth += {"(": 1, ")": -1}.get(sql[pos], 0)
        pos += 1
    if depth:
        raise ValueError("unbalanced parentheses in the column list")
    body, tail = sql[body_start : pos - 1], sql[pos:]
    if not re.search(r"STORED\s+AS\s+KUDU", tail, re.I):
        raise ValueError("not a Kudu table: STORED AS KUDU is missing")

    key = re.search(r"PRIMARY\s+KEY\s*\(([^)]*)\)", body, re.I)
    if not key:
        raise ValueError("PRIMARY KEY (...) is missing")
    primary_key = _names(key.group(1))
    columns = []
    for line in body[: key.start()].split(","):
        parts = line.split()
        if not parts:
            continue
        name, impala_type = parts[0].lower(), parts[1].upper() if len(parts) > 1 else ""
        if impala_type not in IMPALA_TO_KUDU:
            raise ValueError(f"column {name!r}: type {impala_type or '(none)'!r} is not supported; "
                             f"supported: {', '.join(IMPALA_TO_KUDU)}")
        columns.append((name, IMPALA_TO_KUDU[impala_type]))
    column_names = [name for name, _ in columns]
    unknown_keys = [name for name in primary_key if name not in column_names]
    if unknown_keys:
        raise ValueError(f"PRIMARY KEY names unknown column(s) {unknown_keys}")
    # Kudu requires the key columns first, in key order; Impala's DDL guarantees the same.
    if column_names[: len(primary_key)] != list(primary_key):
        raise ValueError(f"primary key columns {list(primary_key)} must come first, in order")

    partition = re.search(r"PARTITION\s+BY\s+HASH\s*(?:\(([^)]*)\))?\s*PARTITIONS\s+(\d+)", tail, re.I)
    if not partition:
        raise ValueError("PARTITION BY HASH [(columns)] PARTITIONS n is missing")
    hash_columns = _names(partition.group(1)) if partition.group(1) else primary_key
    replicas = re.search(r"'kudu\.num_tablet_replicas'\s*=\s*'(\d+)'", tail, re.I)
    return KuduTableSpec(
        name=impala_kudu_table_name(table, database),
        columns=tuple(columns),
        primary_key=primary_key,
        hash_columns=hash_columns,
        hash_buckets=int(partition.group(2)),
        replicas=int(replicas.group(1)) if replicas else 1,
    )


def load_sensors_spec(ddl_file: Path = SENSORS_DDL) -> KuduTableSpec:
    return parse_impala_kudu_ddl(ddl_file.read_text())


def kudu_cli(kudu_home: Path, *args: str, timeout_s: float = 60) -> str:
    """Run the `kudu` command-line tool from the installed binaries and return its output."""
    env = kudu_environment(kudu_home)
    result = subprocess.run([str(kudu_home / "bin" / "kudu"), *args], env=env, capture_output=True,
                            text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"kudu {' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def kudu_environment(kudu_home: Path) -> dict[str, str]:
    """The environment Kudu's binaries need: its bundled libraries (Kerberos, SASL plugins) first."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(kudu_home / "lib")
    env["SASL_PATH"] = str(kudu_home / "lib" / "sasl2")
    return env


def ensure_table(kudu_home: Path, master: str, spec: KuduTableSpec) -> bool:
    """Create the table unless it exists. True if it was created."""
    if spec.name in kudu_cli(kudu_home, "table", "list", master).split():
        return False
    kudu_cli(kudu_home, "table", "create", master, spec.to_kudu_json())
    return True


def register_in_sql(host: str, port: int, sql_table: str, master: str) -> str:
    """(Re)register `sql_table` in the Spark Thrift Server over Kudu's `impala::default.<sql_table>`.

    Dropping the Spark table leaves Kudu's data alone. Returns the Kudu table's name."""
    kudu_table = impala_kudu_table_name(sql_table)
    with cursor(host, port) as cur:
        cur.execute(f"DROP TABLE IF EXISTS {sql_table}")
        cur.execute(f"CREATE TABLE {sql_table} USING kudu OPTIONS ("
                    f"'kudu.master' = '{master}', 'kudu.table' = '{kudu_table}')")
    return kudu_table
