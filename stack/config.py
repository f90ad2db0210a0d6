"""Settings of the local stack: defaults from `stack/stack.toml`, overridden by `STACK_<KEY>` variables."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = Path(__file__).resolve().parent / "stack.toml"
JVM_POM = Path(__file__).resolve().parent / "jvm" / "pom.xml"
ENV_PREFIX = "STACK_"


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which loopback ports it uses."""

    install_dir: Path
    dir: Path
    host: str
    mqtt_port: int
    mqtt_max_queued_messages: int
    mqtt_max_inflight_messages: int
    kafka_port: int
    kafka_controller_port: int
    kafka_heap: str
    kafka_iot_partitions: int
    kudu_master_port: int
    kudu_master_web_port: int
    kudu_tserver_port: int
    kudu_tserver_web_port: int
    kudu_tserver_memory_mb: int
    sql_port: int
    sql_driver_memory: str
    model_port: int
    ready_timeout_s: float

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.dir / "pids"

    @property
    def conf_dir(self) -> Path:
        return self.dir / "conf"

    @property
    def secrets_file(self) -> Path:
        return self.dir / "secrets.env"

    @property
    def connection_file(self) -> Path:
        return self.dir / "connection.env"

    @property
    def model_file(self) -> Path:
        """The served model (the promoted pipeline and its metadata, one file)."""
        return self.dir / "model" / "iot_model.joblib"

    @property
    def kafka_libs(self) -> Path:
        return self.install_dir / "jvm" / "kafka" / "libs"

    @property
    def kudu_home(self) -> Path:
        """The unpacked `kudu-binary-<version>-linux-x86_64` folder (bin/, lib/, www/)."""
        matches = sorted((self.install_dir / "jvm" / "kudu").glob("kudu-binary-*-linux-x86_64"))
        if not matches:
            raise FileNotFoundError(
                f"Kudu binaries not found under {self.install_dir / 'jvm' / 'kudu'}: run `make setup` first"
            )
        return matches[-1]

    @property
    def ivy_dir(self) -> Path:
        return self.install_dir / "ivy"

    @property
    def kudu_master_address(self) -> str:
        return f"{self.host}:{self.kudu_master_port}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"


def _coerce(field: dataclasses.Field, raw: object) -> object:
    if field.type in ("Path", Path):
        path = Path(str(raw)).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path
    if field.type in ("int", int):
        return int(raw)
    if field.type in ("float", float):
        return float(raw)
    return str(raw)


def load_config(defaults_file: Path = DEFAULTS_FILE, environ: dict[str, str] | None = None) -> StackConfig:
    """Read the defaults file, apply `STACK_<KEY>` overrides, and return typed settings."""
    environ = os.environ if environ is None else environ
    with defaults_file.open("rb") as fh:
        values = tomllib.load(fh)
    fields = {f.name: f for f in dataclasses.fields(StackConfig)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{defaults_file}: unknown setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        env_name = ENV_PREFIX + name.upper()
        raw = environ.get(env_name, values.get(name))
        if raw is None:
            raise ValueError(f"{defaults_file}: setting {name!r} is missing (or set {env_name})")
        try:
            kwargs[name] = _coerce(field, raw)
        except ValueError as exc:
            raise ValueError(f"setting {name!r} (from {env_name} or {defaults_file}) = {raw!r}: {exc}") from exc
    return StackConfig(**kwargs)
