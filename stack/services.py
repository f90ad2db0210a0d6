"""The local stack's services: how each is configured, started, probed for readiness and initialised.

Start order matters only for readiness: every process is launched first, then each is awaited in this order.
"""

from __future__ import annotations

import base64
import dataclasses
import getpass
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from contract import InvalidReading, parse_job_status
from runtime.files import write_atomically
from runtime.health import Health, read_health
from runtime.kudu import KuduTables, kudu_cli, kudu_environment
from runtime.mqtt import retained_messages
from runtime.settings import (
    ALERTS_KUDU_TABLE,
    ALERTS_SQL_TABLE,
    ALERTS_TOPIC,
    DEAD_LETTER_TOPIC,
    EDGE_VERDICTS_KUDU_TABLE,
    EDGE_VERDICTS_SQL_TABLE,
    IOT_TOPIC,
    KUDU_TABLE,
    SCORED_TOPIC,
    SQL_TABLE,
    VERDICTS_TOPIC,
    job_status_topic,
)
from runtime.spark import jvm_versions, spark_environment, spark_home, spark_submit_command
from runtime.waiting import http_ok, wait_until
from sql.client import cursor
from sql.kudu_ddl import (
    EDGE_AGREEMENT_DDL,
    add_missing_columns,
    ensure_table,
    load_stack_specs,
    register_in_sql,
    replace_view,
)
from stack import probes
from stack.config import StackConfig
from stack.connection import local_stack_settings
from stack.service_user import switching_user


class Service:
    """One daemon of the stack. Subclasses fill in the blanks."""

    name = ""
    needs_others_ready = False  # True: start only once every service before it in the order is ready
    runs_as_launcher = False  # True: not handed to the services' user (stack/service_user.py)
    quorum = ""  # the nodes of one quorum (the cluster's Kafka nodes) stop together

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg

    @property
    def address(self) -> str:
        raise NotImplementedError

    @property
    def listen_port(self) -> int | None:
        """The port the service listens on (None for a pure client such as the streaming job)."""
        return int(self.address.rsplit(":", 1)[1])

    @property
    def metrics_url(self) -> str:
        """Where the service's Prometheus metrics are ("" if it has none yet)."""
        return ""

    @property
    def data_dir(self) -> Path:
        return self.cfg.data_dir / self.name

    @property
    def log_file(self) -> Path:
        return self.cfg.logs_dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.cfg.pids_dir / f"{self.name}.pid"

    @property
    def wanted_file(self) -> Path:
        """Present while the service should run: `up` creates it, `down` removes it, the supervisor obeys it."""
        return self.cfg.pids_dir / f"{self.name}.wanted"

    @property
    def health_file(self) -> Path | None:
        """Where the process reports its own state (runtime/health.py); None for services probed from outside."""
        return None

    def health(self) -> Health | None:
        """The process's own report, if written since this start (newer than the pid file), as it stands now."""
        if self.health_file is None:
            return None
        report = read_health(self.health_file)
        try:
            started = self.pid_file.stat().st_mtime
        except FileNotFoundError:
            return None
        return report.effective() if report and report.updated >= started else None

    def prepare(self, secrets: dict[str, str]) -> None:
        """Write configuration and initialise storage before the first start (idempotent)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self, secrets: dict[str, str]) -> dict[str, str]:
        return dict(os.environ)

    def connected_environment(self, secrets: dict[str, str]) -> dict[str, str]:
        """The environment with the local stack's connection settings: what a client of the other services reads."""
        return {**os.environ, **self.cfg.location_environment(), **local_stack_settings(self.cfg, secrets)}

    def is_ready(self, secrets: dict[str, str]) -> bool:
        raise NotImplementedError

    def initialise(self, secrets: dict[str, str]) -> str | None:
        """Create what the project expects once the service is ready; return a note of what was done."""
        return None


class Mosquitto(Service):
    """Eclipse Mosquitto with password authentication and persistence (for persistent sessions)."""

    name = "mosquitto"

    @property
    def address(self) -> str:
        return f"mqtt://{self.cfg.host}:{self.cfg.mqtt_port}"

    @property
    def conf_file(self) -> Path:
        return self.cfg.conf_dir / "mosquitto.conf"

    @property
    def password_file(self) -> Path:
        return self.cfg.conf_dir / "mosquitto.passwd"

    def prepare(self, secrets: dict[str, str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.conf_dir.mkdir(parents=True, exist_ok=True)
        self.password_file.unlink(missing_ok=True)
        subprocess.run(
            ["mosquitto_passwd", "-b", "-c", str(self.password_file),
             secrets["MQTT_USERNAME"], secrets["MQTT_PASSWORD"]],
            check=True, capture_output=True,
        )
        os.chmod(self.password_file, 0o600)
        self.conf_file.write_text(
            "# Generated by the local stack (stack/services.py); edit stack/stack.toml instead.\n"
            f"listener {self.cfg.mqtt_port} {self.cfg.host}\n"
            "allow_anonymous false\n"
            f"password_file {self.password_file}\n"
            # Started as root, Mosquitto would switch to user `mosquitto`, which cannot use our files.
            f"user {self.cfg.run_as if switching_user(self.cfg) else getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            # Mosquitto 2.0 keeps messages in memory and rewrites its whole database every autosave_interval + 1 s;
            # a kill -9 loses what it acknowledged since (measured: at most 2 s of messages with 1). No 2.0
            # setting does better; saving on every change collapses throughput (README, "Durability").
            "autosave_interval 1\n"
            # Small messages (a reading, an edge verdict) go out at once instead of waiting for the peer's delayed
            # ACK: an edge agent's reading-to-verdict round trip was ~44 ms without it, under 1 ms with it.
            "set_tcp_nodelay true\n"
            f"max_queued_messages {self.cfg.mqtt_max_queued_messages}\n"
            f"max_inflight_messages {self.cfg.mqtt_max_inflight_messages}\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            "log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
        )

    def command(self) -> list[str]:
        return [_require_binary("mosquitto"), "-c", str(self.conf_file)]

    def is_ready(self, secrets: dict[str, str]) -> bool:
        return probes.mqtt_login_ok(self.cfg.host, self.cfg.mqtt_port,
                                    secrets["MQTT_USERNAME"], secrets["MQTT_PASSWORD"])


class Kafka(Service):
    """Apache Kafka as a KRaft node, broker and controller: alone (`kafka`), or one of three (`kafka-1..3`)."""

    def __init__(self, cfg: StackConfig, node: int = 1):
        super().__init__(cfg)
        self.node = node
        self.name = f"kafka-{node}" if cfg.clustered else "kafka"
        self.quorum = "kafka" if cfg.clustered else ""
        self.port = cfg.node_port(cfg.kafka_port, node)
        self.controller_port = cfg.node_port(cfg.kafka_controller_port, node)

    @property
    def address(self) -> str:
        return f"{self.cfg.host}:{self.port}"

    @property
    def properties_file(self) -> Path:
        return self.cfg.conf_dir / f"{self.name}.properties"

    @property
    def log4j_file(self) -> Path:
        return self.cfg.conf_dir / "kafka-log4j2.properties"

    @property
    def cluster_id_file(self) -> Path:
        """The cluster id every node's storage is formatted with (a cluster's nodes must share it)."""
        return self.cfg.conf_dir / "kafka-cluster-id"

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            _require_binary("java"), f"-Xms{self.cfg.kafka_heap}", f"-Xmx{self.cfg.kafka_heap}",
            "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={self.log4j_file}",
            f"-Dkafka.logs.dir={self.cfg.logs_dir}", "-cp", f"{self.cfg.kafka_libs}/*", main_class, *args,
        ]

    def _quorum(self) -> str:
        """A lone node bootstraps a dynamic quorum of itself; three nodes are its static voters."""
        if not self.cfg.clustered:
            return f"controller.quorum.bootstrap.servers={self.cfg.host}:{self.controller_port}\n"
        voters = ",".join(f"{n}@{self.cfg.host}:{self.cfg.node_port(self.cfg.kafka_controller_port, n)}"
                          for n in self.cfg.nodes)
        return f"controller.quorum.voters={voters}\n"

    def prepare(self, secrets: dict[str, str]) -> None:
        if not self.cfg.kafka_libs.is_dir():
            raise FileNotFoundError(f"Kafka jars not found in {self.cfg.kafka_libs}: run `make setup` first")
        self.cfg.conf_dir.mkdir(parents=True, exist_ok=True)
        host, port, cport = self.cfg.host, self.port, self.controller_port
        replicas, min_isr = self.cfg.kafka_replication, self.cfg.kafka_min_insync_replicas
        self.properties_file.write_text(
            "# Generated by the local stack (stack/services.py); edit stack/stack.toml instead.\n"
            "process.roles=broker,controller\n"
            f"node.id={self.node}\n"
            + self._quorum() +
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}\n"
            f"advertised.listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}\n"
            "controller.listener.names=CONTROLLER\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
            f"log.dirs={self.data_dir}\n"
            "num.partitions=1\n"
            "auto.create.topics.enable=false\n"
            f"default.replication.factor={replicas}\n"
            # With acks=all (every producer of ours), a write is acknowledged once min.insync.replicas have it.
            f"min.insync.replicas={min_isr}\n"
            "unclean.leader.election.enable=false\n"
            f"offsets.topic.replication.factor={replicas}\n"
            f"transaction.state.log.replication.factor={replicas}\n"
            f"transaction.state.log.min.isr={min_isr}\n"
            f"share.coordinator.state.topic.replication.factor={replicas}\n"
            f"share.coordinator.state.topic.min.isr={min_isr}\n"
            "group.initial.rebalance.delay.ms=0\n"
            "log.retention.hours=168\n"
        )
        self.log4j_file.write_text(
            "status = warn\n"
            "appender.out.type = Console\n"
            "appender.out.name = STDOUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.out.ref = STDOUT\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
            "logger.apache.name = org.apache.kafka\nlogger.apache.level = INFO\n"
        )
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage()

    def _cluster_id(self) -> str:
        """The stack's Kafka cluster id, made once: a random UUID in Kafka's own form (22 url-safe base64)."""
        if not self.cluster_id_file.exists():
            write_atomically(self.cluster_id_file,
                             base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=").encode())
        return self.cluster_id_file.read_text().strip()

    def _format_storage(self) -> None:
        """Format the KRaft storage once, with the stack's cluster id."""
        # `--cluster-id=` form: a base64 id may start with "-", which would read as an option.
        options = [] if self.cfg.clustered else ["--standalone"]
        command = self._java("kafka.tools.StorageTool", "format", *options,
                             f"--cluster-id={self._cluster_id()}", f"--config={self.properties_file}")
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.properties_file))

    def is_ready(self, secrets: dict[str, str]) -> bool:
        probes.kafka_topics(self.address)
        return True

    def initialise(self, secrets: dict[str, str]) -> str | None:
        """Once the last node is ready: the stack's topics, each partition on every broker (min ISR as set)."""
        if self.node != len(self.cfg.nodes):
            return None
        from runtime.kafka import ensure_topic

        wait_until(lambda: len(probes.kafka_brokers(self.cfg.kafka_bootstrap)) == len(self.cfg.nodes),
                   self.cfg.ready_timeout_s, f"all {len(self.cfg.nodes)} Kafka brokers registered")
        # iot.scored and iot.verdicts (as many records as readings) keep iot's partitioning (key = sensor_id);
        # iot.alerts is small: one partition, one order.
        wanted = {IOT_TOPIC: self.cfg.kafka_iot_partitions, DEAD_LETTER_TOPIC: 1,
                  SCORED_TOPIC: self.cfg.kafka_iot_partitions, ALERTS_TOPIC: 1,
                  VERDICTS_TOPIC: self.cfg.kafka_iot_partitions}
        configs = {"min.insync.replicas": str(self.cfg.kafka_min_insync_replicas)}
        created = [name for name, partitions in sorted(wanted.items())
                   if ensure_topic(self.cfg.kafka_bootstrap, name, partitions, self.cfg.kafka_replication,
                                   client_id="stack-init", configs=configs)]
        return f"created topic(s) {', '.join(created)}" if created else None


class _KuduDaemon(Service):
    """Shared flags of kudu-master and kudu-tserver on one unsynchronised machine."""

    role = ""

    def __init__(self, cfg: StackConfig, node: int = 1):
        super().__init__(cfg)
        self.node = node
        self.name = f"kudu-{self.role}-{node}" if cfg.clustered else f"kudu-{self.role}"

    @property
    def address(self) -> str:
        return f"{self.cfg.host}:{self.rpc_port}"

    def prepare(self, secrets: dict[str, str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.cfg.logs_dir / self.name).mkdir(parents=True, exist_ok=True)

    def common_flags(self) -> list[str]:
        home = self.cfg.kudu_home
        return [
            f"--fs_wal_dir={self.data_dir}",
            f"--log_dir={self.cfg.logs_dir / self.name}",
            f"--rpc_bind_addresses={self.address}",
            f"--webserver_interface={self.cfg.host}",
            f"--webserver_port={self.web_port}",
            f"--webserver_doc_root={home / 'www'}",
            # One machine without NTP sync: use the system clock as is (Kudu's own mini cluster does this).
            "--time_source=system_unsync",
            "--unlock_unsafe_flags",
            "--enable_minidumps=false",
            # Admin calls (ksck, tablet moves) come from the launcher's user; the daemons may run as another one.
            f"--superuser_acl={getpass.getuser()}",
            # No preallocation of data containers (32 MiB each) and WAL segments (8 MiB each): the cluster profile
            # has 72 tablet replicas, which preallocated 3.4 GB on disk before a row was written.
            "--log_container_preallocate_bytes=0",
            "--log_preallocate_segments=false",
        ]

    def environment(self, secrets: dict[str, str]) -> dict[str, str]:
        return kudu_environment(self.cfg.kudu_home)

    def is_ready(self, secrets: dict[str, str]) -> bool:
        return http_ok(f"http://{self.cfg.host}:{self.web_port}/healthz")


class KuduMaster(_KuduDaemon):
    role = "master"

    def __init__(self, cfg: StackConfig, node: int = 1):
        super().__init__(cfg, node)
        self.rpc_port = cfg.node_port(cfg.kudu_master_port, node)
        self.web_port = cfg.node_port(cfg.kudu_master_web_port, node)

    def command(self) -> list[str]:
        # Three masters elect a leader among themselves (Raft); each is given all three.
        quorum = [f"--master_addresses={self.cfg.kudu_master_address}"] if self.cfg.clustered else []
        return [str(self.cfg.kudu_home / "bin" / "kudu-master"), *self.common_flags(), *quorum,
                f"--default_num_replicas={self.cfg.kudu_replicas}"]


class KuduTabletServer(_KuduDaemon):
    role = "tserver"

    def __init__(self, cfg: StackConfig, node: int = 1):
        super().__init__(cfg, node)
        self.rpc_port = cfg.node_port(cfg.kudu_tserver_port, node)
        self.web_port = cfg.node_port(cfg.kudu_tserver_web_port, node)

    def command(self) -> list[str]:
        return [
            str(self.cfg.kudu_home / "bin" / "kudu-tserver"), *self.common_flags(),
            f"--tserver_master_addrs={self.cfg.kudu_master_address}",
            f"--memory_limit_hard_bytes={self.cfg.kudu_tserver_memory_mb * 1024 * 1024}",
            "--block_cache_capacity_mb=128",
        ]

    def is_ready(self, secrets: dict[str, str]) -> bool:
        """Healthy, and registered with the master (a table can only be created after that)."""
        if not super().is_ready(secrets):
            return False
        listing = kudu_cli(self.cfg.kudu_home, "tserver", "list", self.cfg.kudu_master_address, timeout_s=10)
        return self.address in listing

    def initialise(self, secrets: dict[str, str]) -> str | None:
        """Once the last tablet server is ready: create the stack's Kudu tables (`sensors` of the lab-9 DDL, `alerts`,
        `edge_verdicts`) with a replica on each tablet server, or add the columns they have to a table an older
        version made."""
        if self.node != len(self.cfg.nodes):
            return None
        kudu = KuduTables(self.cfg.kudu_master_address, self.cfg.kudu_home)
        done = []
        for spec in (dataclasses.replace(spec, replicas=self.cfg.kudu_replicas) for spec in load_stack_specs()):
            if ensure_table(kudu, spec):
                done.append(f"created Kudu table {spec.name}")
            elif added := add_missing_columns(kudu, spec):
                done.append(f"added column(s) {', '.join(added)} to Kudu table {spec.name}")
        return "; ".join(done) or None


class _SparkDaemon(Service):
    """A daemon of Spark's standalone cluster (the cluster profile), run by `spark-class` in the foreground."""

    main_class = ""
    port = web_port = 0

    @property
    def address(self) -> str:
        return f"{self.cfg.host}:{self.port}"

    @property
    def web_url(self) -> str:
        return f"http://{self.cfg.host}:{self.web_port}"

    def prepare(self, secrets: dict[str, str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [str(spark_home() / "bin" / "spark-class"), self.main_class, "--host", self.cfg.host,
                "--port", str(self.port), "--webui-port", str(self.web_port), *self.flags()]

    def flags(self) -> list[str]:
        return []

    def environment(self, secrets: dict[str, str]) -> dict[str, str]:
        # The daemons' own heap (Spark's default, 1 GiB, is far more than they use); executors get theirs apart.
        return {**spark_environment(self.cfg.host), "SPARK_DAEMON_MEMORY": self.cfg.spark_daemon_memory,
                "SPARK_NO_DAEMONIZE": "1"}


class SparkMaster(_SparkDaemon):
    """The standalone master: the streaming job is submitted to it (`SPARK_MASTER` in connection.env)."""

    name = "spark-master"
    main_class = "org.apache.spark.deploy.master.Master"

    def __init__(self, cfg: StackConfig):
        super().__init__(cfg)
        self.port, self.web_port = cfg.spark_master_port, cfg.spark_master_web_port

    def is_ready(self, secrets: dict[str, str]) -> bool:
        return probes.spark_master_state(self.web_url).get("status") == "ALIVE"


class SparkWorker(_SparkDaemon):
    """A standalone worker: runs an executor of the streaming job (its tasks, the scoring among them)."""

    main_class = "org.apache.spark.deploy.worker.Worker"

    def __init__(self, cfg: StackConfig, node: int):
        super().__init__(cfg)
        self.node, self.name = node, f"spark-worker-{node}"
        self.port = cfg.node_port(cfg.spark_worker_port, node)
        self.web_port = cfg.node_port(cfg.spark_worker_web_port, node)

    def flags(self) -> list[str]:
        # --work-dir: without it Spark writes under $SPARK_HOME/work, which an unprivileged user cannot create.
        return ["--cores", str(self.cfg.spark_worker_cores), "--memory", self.cfg.spark_worker_memory,
                "--work-dir", str(self.data_dir), self.cfg.spark_master_url]

    def is_ready(self, secrets: dict[str, str]) -> bool:
        """The master counts it among its ALIVE workers."""
        master = SparkMaster(self.cfg)
        workers = probes.spark_master_state(master.web_url).get("workers", [])
        return any(w.get("state") == "ALIVE" and w.get("port") == self.port for w in workers)


class SqlServer(Service):
    """Spark Thrift Server: a HiveServer2 endpoint (what impyla speaks to Impala) over the Kudu table."""

    name = "sql"

    @property
    def address(self) -> str:
        return f"{self.cfg.host}:{self.cfg.sql_port}"

    def prepare(self, secrets: dict[str, str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return spark_submit_command(
            self.cfg.host,
            ivy=self.cfg.ivy_dir,
            master="local[2]",
            packages=[jvm_versions()["spark.connector.kudu"]],
            conf={
                "spark.ui.enabled": "false",
                "spark.sql.warehouse.dir": str(self.data_dir / "warehouse"),
                # The Hive metastore (Derby) keeps the table definitions under the stack's data dir.
                "spark.driver.extraJavaOptions": f"-Dderby.system.home={self.data_dir}",
                "spark.hadoop.javax.jdo.option.ConnectionURL":
                    f"jdbc:derby:;databaseName={self.data_dir / 'metastore_db'};create=true",
            },
            submit_options=["--driver-memory", self.cfg.sql_driver_memory, "--name", "iot-sql",
                            "--class", "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"],
            app=["spark-internal",
                 "--hiveconf", f"hive.server2.thrift.bind.host={self.cfg.host}",
                 "--hiveconf", f"hive.server2.thrift.port={self.cfg.sql_port}",
                 # Hive's default, /tmp/hive, is shared by every stack and user of the machine.
                 "--hiveconf", f"hive.exec.scratchdir={self.data_dir / 'scratch'}"],
        )

    def environment(self, secrets: dict[str, str]) -> dict[str, str]:
        return spark_environment(self.cfg.host)

    def is_ready(self, secrets: dict[str, str]) -> bool:
        return probes.sql_answers(self.cfg.host, self.cfg.sql_port)

    def initialise(self, secrets: dict[str, str]) -> str | None:
        """(Re)register `sensors`, `alerts` and `edge_verdicts` as Spark tables over their Kudu tables, with their
        columns now, and (re)create the view `edge_agreement` over them."""
        tables = {SQL_TABLE: KUDU_TABLE, ALERTS_SQL_TABLE: ALERTS_KUDU_TABLE,
                  EDGE_VERDICTS_SQL_TABLE: EDGE_VERDICTS_KUDU_TABLE}
        with cursor(self.cfg.host, self.cfg.sql_port) as cur:
            for sql_name, kudu_name in tables.items():
                register_in_sql(cur, sql_name, kudu_name, self.cfg.kudu_master_address, replace=True)
            view = replace_view(cur, EDGE_AGREEMENT_DDL)
        return ", ".join([*(f"SQL table {sql_name} -> Kudu {kudu_name}" for sql_name, kudu_name in tables.items()),
                          f"SQL view {view}"])


class ModelServer(Service):
    """The Flask model server behind gunicorn, serving the promoted model (trained on first use)."""

    name = "model"
    FIRST_MODEL = (20, 20)  # the workshop's first run: 20 trees, depth 20

    @property
    def address(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.model_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.address}/metrics"

    def prepare(self, secrets: dict[str, str]) -> None:
        if self.cfg.model_file.exists():
            return
        trees, depth = self.FIRST_MODEL
        print(f"  {self.name:<14} no served model yet: training one ({trees} trees, depth {depth}) ...", flush=True)
        # Through the model's own CLI: the launcher drives the model package, it does not import it.
        result = subprocess.run([sys.executable, "-m", "model.train", "--num-trees", str(trees), "--max-depth",
                                 str(depth), "--promote"], env={**os.environ, "MODEL_PATH": str(self.cfg.model_file)},
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"training the first model failed: {(result.stderr or result.stdout).strip()[-2000:]}")
        run_line = next((line for line in result.stdout.splitlines() if line.startswith("run ")), "a run")
        print(f"  {self.name:<14} trained and promoted {run_line}", flush=True)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "model", "serve", "--host", self.cfg.host, "--port", str(self.cfg.model_port)]

    def environment(self, secrets: dict[str, str]) -> dict[str, str]:
        return {**self.connected_environment(secrets), "MODEL_PATH": str(self.cfg.model_file)}

    def is_ready(self, secrets: dict[str, str]) -> bool:
        return http_ok(f"{self.address}/health")


class _PipelineClient(Service):
    """A pipeline process that reports its own state in a health file."""

    needs_others_ready = True  # it connects to the brokers and servers started before it

    @property
    def listen_port(self) -> int | None:
        return None

    @property
    def health_file(self) -> Path:
        return self.cfg.health_dir / f"{self.name}.health"

    def prepare(self, secrets: dict[str, str]) -> None:
        self.health_file.parent.mkdir(parents=True, exist_ok=True)
        self.health_file.unlink(missing_ok=True)

    def environment(self, secrets: dict[str, str]) -> dict[str, str]:
        return self.connected_environment(secrets)

    def is_ready(self, secrets: dict[str, str]) -> bool:
        """Ready once the process says it is up (it writes its state every 2 s)."""
        report = self.health()
        return bool(report and report.state == "up")


class Gateway(_PipelineClient):
    """The MQTT -> Kafka bridge (python -m gateway): one worker, so each machine's readings stay in order."""

    name = "gateway"
    WORKERS = 1

    @property
    def address(self) -> str:
        return f"mqtt:{self.cfg.mqtt_port}->kafka:{self.cfg.kafka_port}"

    # No listen_port: the gateway checks its metrics port itself (it exits naming the port if it is taken). The
    # launcher's check raced with the supervisor restarting a gateway killed with -9 and refused the new one.
    @property
    def metrics_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.gateway_metrics_port}/metrics"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway", "--workers", str(self.WORKERS), "--gateway-id", "gw-local",
                "--health-file", str(self.health_file), "--metrics-host", self.cfg.host,
                "--metrics-port", str(self.cfg.gateway_metrics_port)]


class StreamingJob(_PipelineClient):
    """The lab-9 spark-submit job (python -m streaming): Kafka `iot` -> model server -> Kudu `sensors`."""

    name = "streaming"

    @property
    def address(self) -> str:
        return f"kafka:{self.cfg.kafka_port}->kudu:{self.cfg.kudu_master_port}"

    @property
    def listen_port(self) -> int | None:
        return self.cfg.streaming_metrics_port  # its metrics endpoint

    @property
    def metrics_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.streaming_metrics_port}/metrics"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "streaming", "--checkpoint", str(self.cfg.streaming_checkpoint),
                "--health-file", str(self.health_file), "--metrics-host", self.cfg.host,
                "--metrics-port", str(self.cfg.streaming_metrics_port)]

    def environment(self, secrets: dict[str, str]) -> dict[str, str]:
        return {**super().environment(secrets), "SPARK_LOCAL_IP": self.cfg.host}


class EdgeAgent(_PipelineClient):
    """The simulated fleet's edge agent (python -m edge): takes approved model versions rolled out over MQTT,
    scores each reading with ONNX Runtime and publishes its verdict on `verdicts/<sensor_id>`."""

    name = "edge"
    AGENT_ID = "edge-1"

    @property
    def address(self) -> str:
        return f"{self.AGENT_ID}@mqtt:{self.cfg.mqtt_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.edge_metrics_port}/metrics"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "edge", "--agent-id", self.AGENT_ID, "--state-dir", str(self.data_dir),
                "--health-file", str(self.health_file), "--metrics-host", self.cfg.host,
                "--metrics-port", str(self.cfg.edge_metrics_port)]

    def initialise(self, secrets: dict[str, str]) -> str | None:
        """An agent that has no model yet gets the served version, if it is approved (through the model's CLI:
        the launcher drives the model package, it does not import it)."""
        settings = local_stack_settings(self.cfg, secrets)
        status = retained_messages(settings, job_status_topic(self.AGENT_ID)).get(job_status_topic(self.AGENT_ID))
        try:
            current = parse_job_status(status)["model_version"] if status else None
        except InvalidReading:
            current = None
        if current is not None:
            return f"scoring with model v{current}"
        result = subprocess.run([sys.executable, "-m", "model", "rollout", "served", "--agent", self.AGENT_ID],
                                env={**self.connected_environment(secrets), "MODEL_PATH": str(self.cfg.model_file)},
                                capture_output=True, text=True)
        if result.returncode != 0:
            problem = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"no model at the edge yet ({problem[0]})"
        return "the served model rolled out to it"


class Dashboard(Service):
    """The live dashboard (python -m dashboard): a `panel serve` app over Kafka and the pipeline's metrics."""

    name = "dashboard"

    @property
    def address(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.dashboard_port}/"

    @property
    def listen_port(self) -> int | None:
        return self.cfg.dashboard_port

    def command(self) -> list[str]:
        return [sys.executable, "-m", "dashboard", "--host", self.cfg.host, "--port", str(self.cfg.dashboard_port)]

    def environment(self, secrets: dict[str, str]) -> dict[str, str]:
        return self.connected_environment(secrets)

    def is_ready(self, secrets: dict[str, str]) -> bool:
        """GET /liveness answers: the page server runs. Not GET /, which builds a whole page (about a CPU-second:
        on a busy machine a status call timed out on it and reported a serving dashboard as `starting`)."""
        return http_ok(f"{self.address}liveness")


class Supervisor(_PipelineClient):
    """The supervisor (stack/supervisor.py): restarts what `up` started when it exits or stops reporting."""

    name = "supervisor"
    needs_others_ready = False
    runs_as_launcher = True  # it starts and stops the others, as the launcher does

    @property
    def address(self) -> str:
        return "-"

    def environment(self, secrets: dict[str, str]) -> dict[str, str]:
        # The supervisor restarts services with its own environment: it must name this stack, whatever the caller's.
        return {**os.environ, **self.cfg.as_environment()}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stack", "supervise", "--health-file", str(self.health_file)]


CLIENT_CLASSES: tuple[type[Service], ...] = (SqlServer, ModelServer, Gateway, StreamingJob, EdgeAgent, Dashboard)


def all_services(cfg: StackConfig) -> list[Service]:
    """Every service of the profile, in readiness order: the brokers, Kudu and Spark nodes, then their clients."""
    return [
        Mosquitto(cfg),
        *(Kafka(cfg, n) for n in cfg.nodes),
        *(KuduMaster(cfg, n) for n in cfg.nodes),
        *(KuduTabletServer(cfg, n) for n in cfg.nodes),
        *([SparkMaster(cfg)] if cfg.clustered else []),
        *(SparkWorker(cfg, n) for n in cfg.spark_workers),
        *(client(cfg) for client in CLIENT_CLASSES),
    ]


def service_names(cfg: StackConfig) -> list[str]:
    return [service.name for service in all_services(cfg)]


def _require_binary(name: str) -> str:
    # Debian installs the mosquitto daemon in /usr/sbin, which is not on every user's PATH.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise FileNotFoundError(f"`{name}` is not installed or not on PATH: run `make setup` first")
    return found
