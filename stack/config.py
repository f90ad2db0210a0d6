"""Settings of the local stack: defaults from `stack/stack.toml`, overridden by `STACK_<KEY>` variables.

Each setting has a `Rule` (next to its field below) that says which values it may take; `load_config` refuses any
other value, any unknown `STACK_*` variable and any unknown key of the file with a `ValueError` that says which
setting, where its value came from, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import reprlib
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.kudu import kudu_home
from runtime.settings import DEFAULT_STACK_DIR, REPO_ROOT

DEFAULTS_FILE = Path(__file__).resolve().parent / "stack.toml"
ENV_PREFIX = "STACK_"
# STACK_* variables that are not settings of this file but belong to another tool, so `load_config` lets them be:
# Haskell's Stack build tool exports these. Any other STACK_* variable that is not a setting is refused as a likely
# typo; add a name here when another tool needs one.
OTHER_STACK_VARIABLES: frozenset[str] = frozenset({"STACK_ROOT", "STACK_YAML", "STACK_WORK"})
# Settings that the runtime parts read as well (runtime/settings.py: where connection.env, the served model and the
# connector cache are): set by STACK_DIR / STACK_INSTALL_DIR only, so that the launcher and they cannot disagree.
ENVIRONMENT_ONLY: frozenset[str] = frozenset({"dir", "install_dir"})


@dataclass(frozen=True)
class Rule:
    """The values a setting may take: `ok` judges the typed value (for a path, its text as given)."""

    allowed: str
    ok: Callable[[Any], bool]


def _is_host(text: str) -> bool:
    """An IPv4/IPv6 address, or a hostname of letter/digit/hyphen labels joined by dots."""
    if not (text.isascii() and text.isprintable()) or " " in text:
        return False
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    if len(text) > 253 or re.fullmatch(r"[0-9.]+", text):  # all digits and dots, but not an IPv4 address
        return False
    return all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in text.split("."))


def _is_plain_path(text: str) -> bool:
    """Non-empty, no control character (a newline would end a line of a generated config file), no undecodable
    byte (a surrogate escape, which no config file can be written with)."""
    return bool(text) and not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def _setting(rule: Rule) -> Any:
    return dataclasses.field(metadata={"rule": rule})


PORT = Rule("an integer in 1..65535", lambda v: 1 <= v <= 65535)
COUNT = Rule("an integer >= 1", lambda v: v >= 1)
# Mosquitto reads 0 as "unlimited", hence at least 1. It keeps each queued message in memory (several hundred
# bytes for a reading), so ten million, ten times the default, is already gigabytes on a small machine.
QUEUED_MESSAGES = Rule("an integer in 1..10000000", lambda v: 1 <= v <= 10_000_000)
# MQTT packet identifiers are 16 bits: no client can have more than 65535 QoS 1/2 messages in flight.
INFLIGHT_MESSAGES = Rule("an integer in 1..65535", lambda v: 1 <= v <= 65535)
SECONDS = Rule("a finite number of seconds > 0", lambda v: math.isfinite(v) and v > 0)
MEMORY = Rule("a JVM memory size such as 512m or 1g (digits, optionally followed by k, m or g)",
              lambda v: re.fullmatch(r"[1-9][0-9]*[kmgKMG]?", v) is not None)
HOST = Rule("an IPv4/IPv6 address or a hostname (letters, digits, dots, hyphens)", _is_host)
PATH = Rule("a non-empty path without control characters", _is_plain_path)
PROFILES = ("single", "cluster")
PROFILE = Rule(f"one of {', '.join(PROFILES)}", lambda v: v in PROFILES)
# useradd's own rule for a name (empty: no other user).
USER_NAME = Rule("empty, or a user name (a lower-case letter or _, then up to 31 lower-case letters, digits, _ or -)",
                 lambda v: re.fullmatch(r"([a-z_][a-z0-9_-]{0,31})?", v) is not None)
# A node's ports are its first node's plus (n - 1) steps: small enough to stay below 65535 from common ports.
PORT_STEP = Rule("an integer in 1..1000", lambda v: 1 <= v <= 1000)
CLUSTER_NODES = 3  # Kafka nodes, Kudu masters, Kudu tablet servers in the cluster profile (a quorum of three)
SPARK_WORKERS = 2


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which loopback ports it uses."""

    install_dir: Path = _setting(PATH)
    dir: Path = _setting(PATH)
    profile: str = _setting(PROFILE)
    cluster_port_step: int = _setting(PORT_STEP)
    run_as: str = _setting(USER_NAME)
    host: str = _setting(HOST)
    mqtt_port: int = _setting(PORT)
    mqtt_max_queued_messages: int = _setting(QUEUED_MESSAGES)
    mqtt_max_inflight_messages: int = _setting(INFLIGHT_MESSAGES)
    kafka_port: int = _setting(PORT)
    kafka_controller_port: int = _setting(PORT)
    kafka_heap: str = _setting(MEMORY)
    kafka_iot_partitions: int = _setting(COUNT)
    kudu_master_port: int = _setting(PORT)
    kudu_master_web_port: int = _setting(PORT)
    kudu_tserver_port: int = _setting(PORT)
    kudu_tserver_web_port: int = _setting(PORT)
    kudu_tserver_memory_mb: int = _setting(COUNT)
    spark_master_port: int = _setting(PORT)
    spark_master_web_port: int = _setting(PORT)
    spark_worker_port: int = _setting(PORT)
    spark_worker_web_port: int = _setting(PORT)
    spark_worker_cores: int = _setting(COUNT)
    spark_worker_memory: str = _setting(MEMORY)
    spark_daemon_memory: str = _setting(MEMORY)
    sql_port: int = _setting(PORT)
    sql_driver_memory: str = _setting(MEMORY)
    model_port: int = _setting(PORT)
    gateway_metrics_port: int = _setting(PORT)
    streaming_metrics_port: int = _setting(PORT)
    edge_metrics_port: int = _setting(PORT)
    dashboard_port: int = _setting(PORT)
    lab_port: int = _setting(PORT)
    ready_timeout_s: float = _setting(SECONDS)

    def as_environment(self) -> dict[str, str]:
        """These settings as STACK_<KEY> variables: what a process started for this stack needs to find it."""
        return {ENV_PREFIX + field.name.upper(): str(getattr(self, field.name))
                for field in dataclasses.fields(self)}

    def location_environment(self) -> dict[str, str]:
        """STACK_DIR and STACK_INSTALL_DIR: where a runtime part started for this stack finds its files."""
        return {ENV_PREFIX + name.upper(): str(getattr(self, name)) for name in sorted(ENVIRONMENT_ONLY)}

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
    def health_dir(self) -> Path:
        """Where the pipeline's processes report their state (written by them; pids/ is the launcher's own)."""
        return self.dir / "health"

    @property
    def conf_dir(self) -> Path:
        return self.dir / "conf"

    @property
    def streaming_checkpoint(self) -> Path:
        """The stack's streaming job's checkpoint: its Kafka offsets (the audit reads them too)."""
        return self.data_dir / "checkpoints" / "kafka_to_kudu"

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
        return kudu_home(self.install_dir)

    @property
    def ivy_dir(self) -> Path:
        return self.install_dir / "ivy"

    @property
    def clustered(self) -> bool:
        return self.profile == "cluster"

    @property
    def nodes(self) -> range:
        """The node numbers of Kafka, the Kudu masters and the Kudu tablet servers: 1 alone, or 1..3."""
        return range(1, (CLUSTER_NODES if self.clustered else 1) + 1)

    @property
    def spark_workers(self) -> range:
        """The Spark standalone workers' numbers (none in the single-node profile: the job runs `local[*]`)."""
        return range(1, (SPARK_WORKERS if self.clustered else 0) + 1)

    def node_port(self, first: int, node: int) -> int:
        """Node `node`'s port, for a setting that gives the first node's."""
        return first + (node - 1) * self.cluster_port_step

    @property
    def kafka_replication(self) -> int:
        """Replicas of every topic: each broker holds one."""
        return len(self.nodes)

    @property
    def kafka_min_insync_replicas(self) -> int:
        """With acks=all, a write succeeds once this many replicas have it: 2 of 3 survive the loss of a broker."""
        return 2 if self.clustered else 1

    @property
    def kudu_replicas(self) -> int:
        return len(self.nodes)

    @property
    def kudu_master_address(self) -> str:
        """Every Kudu master, comma-separated (what a Kudu client is given)."""
        return ",".join(f"{self.host}:{self.node_port(self.kudu_master_port, n)}" for n in self.nodes)

    @property
    def kafka_bootstrap(self) -> str:
        """Every Kafka broker, comma-separated (what a Kafka client is given)."""
        return ",".join(f"{self.host}:{self.node_port(self.kafka_port, n)}" for n in self.nodes)

    @property
    def spark_master_url(self) -> str:
        """Where the streaming job runs: the standalone master, or `local[*]` in the single-node profile."""
        return f"spark://{self.host}:{self.spark_master_port}" if self.clustered else "local[*]"

    def ports(self) -> dict[str, int]:
        """Every port this stack listens on, by what listens there (a node's ports included)."""
        ports: dict[str, int] = {}
        for field in dataclasses.fields(self):
            if field.metadata["rule"] is not PORT:
                continue
            name, first = field.name, getattr(self, field.name)
            if name.startswith(("kafka_", "kudu_")) and self.clustered:
                ports |= {f"{name} of node {n}": self.node_port(first, n) for n in self.nodes}
            elif name.startswith("spark_worker_") and self.clustered:
                ports |= {f"{name} of worker {n}": self.node_port(first, n) for n in self.spark_workers}
            elif name.startswith("spark_") and not self.clustered:
                continue  # the single-node profile runs no Spark daemon
            else:
                ports[name] = first
        return ports


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = 80  # a value quoted in an error message


def _typed(kind: str, raw: object) -> object:
    """`raw` (an environment string, or a TOML value of the field's type) as the field's type; ValueError if not."""
    toml_types = {"int": (int,), "float": (int, float)}.get(kind, ())
    if isinstance(raw, bool) or not isinstance(raw, (str, *toml_types)):
        raise ValueError(f"a TOML {type(raw).__name__} is not {kind}")
    return {"int": int, "float": float}.get(kind, str)(raw)


def _value(field: dataclasses.Field, raw: object, source: str) -> object:
    """The checked value of one setting; a ValueError names the setting, its source, the value and what is allowed."""
    rule: Rule = field.metadata["rule"]
    where = f"setting {field.name!r} (from {source}) = {_SHOWN.repr(raw)}"
    try:
        value = _typed(field.type, raw)
    except ValueError:
        raise ValueError(f"{where}: must be {rule.allowed}") from None
    if not rule.ok(value):
        raise ValueError(f"{where}: must be {rule.allowed}")
    if field.type != "Path":
        return value
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~name of an unknown user
        raise ValueError(f"{where}: cannot expand {value.split('/')[0]} (no such user)") from None
    return path if path.is_absolute() else REPO_ROOT / path


def _suggestion(key: str, keys: list[str], prefix: str = "") -> str:
    """The nearest known key (compared without the shared prefix, which would make anything look close)."""
    match = difflib.get_close_matches(key, keys, n=1)
    if match:
        return f"; did you mean {prefix}{match[0]}?"
    return f"; the settings are {', '.join(prefix + k for k in keys)}"


def _refuse_unknown(environ: Mapping[str, str], file_keys: list[str], names: list[str], defaults_file: Path) -> None:
    """ValueError for each STACK_* variable and each key of the file that is not a setting (typos, mostly)."""
    keys = [name.upper() for name in names]
    problems = [f"{var} is not a setting{_suggestion(var[len(ENV_PREFIX):].upper(), keys, ENV_PREFIX)}"
                for var in sorted(environ) if var.startswith(ENV_PREFIX)
                and var[len(ENV_PREFIX):] not in keys and var not in OTHER_STACK_VARIABLES]
    if problems:
        problems.append("(if another tool needs such a variable, add it to OTHER_STACK_VARIABLES in stack/config.py)")
    problems += [f"{defaults_file}: {key!r} is not a setting{_suggestion(key.lower(), names)}"
                 for key in sorted(file_keys) if key not in names]
    if problems:
        raise ValueError("\n".join(problems))


def _refuse_shared_ports(cfg: StackConfig, sources: dict[str, str]) -> None:
    """ValueError if two listeners would share a port (a cluster node's ports are its first node's plus steps)."""
    owners: dict[int, str] = {}
    for name, port in cfg.ports().items():
        if port > 65535:
            setting = name.split()[0]
            raise ValueError(f"setting {setting!r} (from {sources[setting]}) gives {name} port {port}, above 65535: "
                             f"lower it or cluster_port_step")
        first = owners.setdefault(port, name)
        if first != name:
            raise ValueError(f"'{first}' (from {sources[first.split()[0]]}) and '{name}' (from "
                             f"{sources[name.split()[0]]}) are both port {port}: each needs a port of its own"
                             + (" (a cluster node's port is its first node's + n * cluster_port_step)"
                                if " of " in first + name else ""))


def load_config(defaults_file: Path = DEFAULTS_FILE, environ: Mapping[str, str] | None = None) -> StackConfig:
    """Read the defaults file, apply `STACK_<KEY>` overrides, and return checked settings (else ValueError)."""
    environ = os.environ if environ is None else environ
    with defaults_file.open("rb") as fh:
        file_values = tomllib.load(fh)
    fields = {f.name: f for f in dataclasses.fields(StackConfig)}
    _refuse_unknown(environ, list(file_values), list(fields), defaults_file)
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name, field in fields.items():
        env_name = ENV_PREFIX + name.upper()
        if name in ENVIRONMENT_ONLY and name in file_values:
            raise ValueError(f"{defaults_file}: {name!r} cannot be set in this file: set {env_name} instead (the "
                             f"runtime parts read it too, runtime/settings.py; default {DEFAULT_STACK_DIR!r})")
        if env_name in environ:
            raw, sources[name] = environ[env_name], env_name
        elif name in ENVIRONMENT_ONLY:
            raw, sources[name] = DEFAULT_STACK_DIR, "runtime/settings.py"
        elif name in file_values:
            raw, sources[name] = file_values[name], str(defaults_file)
        else:
            raise ValueError(f"{defaults_file}: setting {name!r} is missing (or set {env_name})")
        values[name] = _value(field, raw, sources[name])
    cfg = StackConfig(**values)
    _refuse_shared_ports(cfg, sources)
    return cfg
