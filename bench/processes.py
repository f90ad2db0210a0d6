"""What the benchmarks share: their own gateway and streaming-job processes, and CPU time per process group."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

import paho.mqtt.client as mqtt

from runtime.health import is_up
from runtime.waiting import wait_until
from stack.process import cpu_seconds, group_members


def start_group(command: list[str], log: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` in its own process group, its output to `log` (or nowhere)."""
    out = log.open("a") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    if log:
        out.close()
    return process


def start_until_up(command: list[str], health_file: Path, what: str, log: Path | None = None,
                   timeout_s: float = 180, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` (given `--health-file health_file`) in its own process group; wait until it says it is up."""
    health_file.unlink(missing_ok=True)
    process = start_group(command, log, env)
    hint = f" (log: {log})" if log else ""
    wait_until(lambda: is_up(health_file), timeout_s, what,
               abort=lambda: f"exited with {process.returncode}{hint}" if process.poll() is not None else None)
    return process


def gateway_command(gateway_id: str, workers: int, topic_filter: str, kafka_topic: str,
                    health_file: Path) -> list[str]:
    """A gateway of the benchmark's own: its MQTT topics into its Kafka topic (the stack's gateway carries the
    alerts and the edge verdicts)."""
    return [sys.executable, "-m", "gateway", "--workers", str(workers), "--gateway-id", gateway_id,
            "--topic-filter", topic_filter, "--share-group", gateway_id, "--kafka-topic", kafka_topic,
            "--metrics-interval", "3600", "--no-alerts", "--no-verdicts", "--health-file", str(health_file)]


def start_gateway(gateway_id: str, workers: int, topic_filter: str, kafka_topic: str,
                  health_file: Path) -> subprocess.Popen:
    """The benchmark's own gateway (`gateway_command`), once it says it is up."""
    return start_until_up(gateway_command(gateway_id, workers, topic_filter, kafka_topic, health_file),
                          health_file, f"gateway {gateway_id}")


def stop_group(process: subprocess.Popen, timeout_s: float = 120) -> None:
    """SIGTERM to the process group, then wait (the gateway drains, Spark stops its query); SIGKILL if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def forget_sessions(settings: dict[str, str], gateway_id: str, workers: int) -> None:
    """End a bench gateway's persistent MQTT sessions, so the broker stops queueing bench readings for them."""
    for index in range(workers):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{gateway_id}-{index}",
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(settings["MQTT_USERNAME"], settings["MQTT_PASSWORD"])
        client.connect(settings["MQTT_HOST"], int(settings["MQTT_PORT"]), clean_start=True)  # expiry 0 by default
        client.loop_start()
        client.disconnect()
        client.loop_stop()


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system, including reaped children) of a process group's live members."""
    return cpu_seconds(group_members(pgid))


# The JVM's JIT compiler threads, as Linux names them (15 characters of "C2 CompilerThread0").
JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")


def threads_cpu_seconds(pids: Iterable[int], name_prefixes: tuple[str, ...]) -> float:
    """CPU seconds (user + system) of the live threads of `pids` whose name starts with one of `name_prefixes`
    (Linux's /proc; a thread that ended is not counted)."""
    ticks = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with suppress(OSError):  # the thread or its process ended meanwhile
                if (task / "comm").read_text().startswith(name_prefixes):
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    ticks += int(fields[11]) + int(fields[12])  # utime, stime (proc(5), counted from `state`)
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
