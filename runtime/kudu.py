"""Kudu's command-line tool, as the `kudu-binary` jar installs it: where it is (under `STACK_INSTALL_DIR`), the
environment it needs, and the table commands the project uses. The launcher starts Kudu's daemons from the same
folder; `sql` runs Impala's Kudu DDL with these commands where no Impala does.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from runtime.settings import install_dir

# A column as `kudu table describe` prints it: "    sensor_0 DOUBLE NULLABLE,"
_DESCRIBED_COLUMN = re.compile(r"^\s+(\w+) (\w+) (?:NOT NULL|NULLABLE)\b", re.M)


def kudu_home(base: Path | None = None) -> Path:
    """The unpacked `kudu-binary-<version>-linux-x86_64` folder (bin/, lib/, www/) under `<base>/jvm/kudu`;
    `base` defaults to the install dir (`STACK_INSTALL_DIR`)."""
    parent = (base or install_dir()) / "jvm" / "kudu"
    matches = sorted(parent.glob("kudu-binary-*-linux-x86_64"))
    if not matches:
        raise FileNotFoundError(f"Kudu binaries not found under {parent}: run `make setup` first")
    return matches[-1]


def kudu_environment(home: Path) -> dict[str, str]:
    """The environment Kudu's binaries need: its bundled libraries (Kerberos, SASL plugins) first."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(home / "lib")
    env["SASL_PATH"] = str(home / "lib" / "sasl2")
    return env


def kudu_cli(home: Path, *args: str, timeout_s: float = 60) -> str:
    """Run the `kudu` command-line tool of the installed binaries in `home` and return its output."""
    result = subprocess.run([str(home / "bin" / "kudu"), *args], env=kudu_environment(home), capture_output=True,
                            text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"kudu {' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class KuduTables:
    """`kudu table ...` commands against the cluster of `master` (host:port[,...]), with the binaries in `home`."""

    master: str
    home: Path = field(default_factory=kudu_home)

    def _table(self, command: str, *args: str) -> str:
        return kudu_cli(self.home, "table", command, self.master, *args)

    def names(self) -> list[str]:
        return self._table("list").split()

    def exists(self, name: str) -> bool:
        return name in self.names()

    def create(self, spec_json: str) -> None:
        """`kudu table create` with the JSON table spec it takes."""
        self._table("create", spec_json)

    def delete(self, name: str) -> None:
        self._table("delete", name)

    def columns(self, name: str) -> list[tuple[str, str]]:
        """(column name, Kudu type) of each column of table `name`, in order."""
        return _DESCRIBED_COLUMN.findall(self._table("describe", name))

    def add_column(self, name: str, column: str, kudu_type: str) -> None:
        """Add a nullable column (existing rows hold NULL in it)."""
        self._table("add_column", name, column, kudu_type)
