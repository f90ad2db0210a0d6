"""The edge agent's MQTT side: one client that takes model jobs and readings, publishes verdicts, job statuses and
its own log lines, and a health report built from what it sees.

Threads: paho's network thread runs every callback (scoring included: a reading costs tens of microseconds) and
none of them may raise or block; the job thread (edge.jobs.JobRunner) downloads and loads models; the health
reporter writes the health file. A callback that meets anything unexpected logs it and carries on.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from contract import InvalidReading, clip, job_status_json
from edge.jobs import FINAL_STATES, Downloader, JobRunner
from edge.scoring import BadModel, Scorer, load_model
from edge.state import AgentState, StateError, load_state
from runtime.health import Health
from runtime.mqtt import mqtt_client
from runtime.settings import (
    MQTT_EDGE_LOGS_PREFIX,
    MQTT_JOBS_PREFIX,
    MQTT_VERDICTS_PREFIX,
    job_status_topic,
    model_job_topic,
)

log = logging.getLogger("edge.agent")

# Scoring latency buckets (seconds): parse, score and hand the verdict to paho.
LATENCY_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
MAX_QUEUED_PUBLISHES = 10_000  # verdicts paho holds for a slow broker before refusing more (counted as dropped)
# The broker keeps the agent's session (its subscriptions and the readings not yet acknowledged) this long while it
# is away: a restarted agent scores what arrived meanwhile. A reading is acknowledged only once its verdict is.
SESSION_EXPIRY_S = 24 * 3600
INVALID_LOG_EVERY_S = 5.0  # at most one log line per this many seconds about invalid readings
OWN_PREFIXES = tuple(f"{prefix}/" for prefix in (MQTT_JOBS_PREFIX, MQTT_VERDICTS_PREFIX, MQTT_EDGE_LOGS_PREFIX))


@dataclass(frozen=True)
class AgentConfig:
    agent_id: str
    state_dir: Path
    readings_filter: str
    access_key: str | None = None
    model_url: str | None = None  # the model server the access key may be sent to (None: any a job names)
    max_download_rate: int | None = None


@dataclass
class Counters:
    """What the agent counted; each field has one writer (the MQTT thread), so plain ints suffice."""

    scored: int = 0
    invalid: int = 0
    unscored: int = 0  # valid readings that came before the agent had a model
    published: int = 0
    dropped: int = 0
    scoring_errors: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum_s += seconds


class MqttLogHandler(logging.Handler):
    """Publishes each log line on `logs/<agent_id>` (QoS 0, not retained) while connected; drops it otherwise."""

    def __init__(self, client: mqtt.Client, agent_id: str):
        super().__init__()
        self.client = client
        self.topic = f"{MQTT_EDGE_LOGS_PREFIX}/{agent_id}"
        self._inside = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._inside, "busy", False) or not self.client.is_connected():
            return
        self._inside.busy = True
        try:
            self.client.publish(self.topic, self.format(record).encode(), qos=0)
        except Exception:  # noqa: BLE001 - a log line must never break the caller
            pass
        finally:
            self._inside.busy = False


class Redacting(logging.Formatter):
    """A formatter that replaces each of `secrets` with `[redacted]` in the formatted line."""

    def __init__(self, fmt: str, secrets: tuple[str, ...]):
        super().__init__(fmt)
        self.secrets = tuple(s for s in secrets if s)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for secret in self.secrets:
            line = line.replace(secret, "[redacted]")
        return line


def load_saved_model(state_dir: Path, state: AgentState):
    """The model state.json names, loaded and checked; None if there is none. BadModel if it is unusable."""
    if not state.model_file or state.model_version is None:
        return None
    path = state_dir / state.model_file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadModel(f"{path}: {exc}") from None
    sha256 = hashlib.sha256(data).hexdigest()
    if state.model_sha256 and sha256 != state.model_sha256:
        raise BadModel(f"{path}: sha256 {sha256} is not the {state.model_sha256} it had when installed")
    return load_model(state.model_version, data, sha256)


class EdgeAgent:
    """One edge site: `start()`, then `health()` and `counters` at any time, `stop()` at the end."""

    def __init__(self, settings: dict[str, str], config: AgentConfig):
        self.settings, self.config = settings, config
        self.agent_id = config.agent_id
        self.job_topic = model_job_topic(config.agent_id)
        self.status_topic = job_status_topic(config.agent_id)
        self.counters = Counters()
        self.scorer = Scorer(config.agent_id)
        self.client = mqtt_client(settings, f"edge-agent-{config.agent_id}", manual_ack=True)
        self.client.max_queued_messages_set(MAX_QUEUED_PUBLISHES)
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        # verdict's mid -> (the reading's mid, its QoS, the connection it came on): acknowledged on the verdict's
        # PUBACK, and only on the connection that delivered it (a mid means another message on a new one).
        self._unacknowledged: dict[int, tuple[int, int, int]] = {}
        self._connection = 0
        self.runner: JobRunner | None = None
        self._connected = False
        self._subscribed = False
        self._ever_connected = False
        self._mqtt_problem = "connecting"
        self._model_problem: str | None = None
        self._scoring_error: str | None = None
        self._last_invalid_log = 0.0
        self._invalid_since_log = 0

    # -- life --

    def start(self) -> EdgeAgent:
        """Load the last good model (scoring starts with it), start the job thread, connect (in the background,
        retrying with backoff)."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        try:
            model = load_saved_model(self.config.state_dir, state)
        except BadModel as exc:
            model = None
            self._model_problem = f"its model v{state.model_version} did not load ({exc}): not scoring"
            log.error("%s", self._model_problem)
        if model:
            self.scorer.swap(model)
            log.info("loaded model v%s from %s: scoring", model.version, self.config.state_dir / state.model_file)
        else:
            log.info("no model yet: not scoring until a job brings one")
        downloader = Downloader(self.config.access_key, self.config.max_download_rate, self.config.model_url)
        self.runner = JobRunner(self.agent_id, self.config.state_dir, state, self.scorer, downloader,
                                self._publish_status).start()
        log.info("connecting to MQTT %s:%s as agent %s", self.settings["MQTT_HOST"], self.settings["MQTT_PORT"],
                 self.agent_id)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(self.settings["MQTT_HOST"], int(self.settings["MQTT_PORT"]), clean_start=False,
                                  properties=properties)
        self.client.loop_start()
        return self

    def _load_state(self) -> AgentState:
        try:
            return load_state(self.config.state_dir)
        except StateError as exc:
            log.error("%s: starting afresh (no model, IDLE)", exc)
            return AgentState()

    def stop(self) -> None:
        """Stop the job thread (a download keeps its part file), then leave the broker."""
        if self.runner:
            self.runner.stop()
        self.client.disconnect()
        self.client.loop_stop()

    # -- MQTT callbacks (paho's network thread: none may raise) --

    def _on_connect(self, client, _userdata, _flags, reason, _properties) -> None:
        if reason.is_failure:
            self._mqtt_state(False, f"the MQTT broker refused the connection: {reason}")
            return
        self._connection += 1
        self._unacknowledged.clear()  # the broker delivers those readings again on this connection
        self._mqtt_state(True, "")
        client.subscribe([(self.job_topic, SubscribeOptions(qos=1)),
                          (self.config.readings_filter, SubscribeOptions(qos=1))])
        if self.runner:  # the retained status: IDLE before any job, else the last one
            self._publish_status(self.runner.current_status())

    def _on_connect_fail(self, _client, _userdata) -> None:
        self._mqtt_state(False, f"cannot reach the MQTT broker {self.settings['MQTT_HOST']}:"
                                f"{self.settings['MQTT_PORT']}; retrying")

    def _on_disconnect(self, _client, _userdata, _flags, reason, _properties) -> None:
        self._mqtt_state(False, f"disconnected from MQTT ({reason}); reconnecting with backoff")

    def _mqtt_state(self, connected: bool, problem: str) -> None:
        """Record the connection's state; log each change, and each new problem, once (not every retry)."""
        if connected and not self._connected:
            log.info("connected to MQTT %s:%s", self.settings["MQTT_HOST"], self.settings["MQTT_PORT"])
        elif not connected and (self._connected or problem != self._mqtt_problem):
            log.warning("%s", problem)
        self._connected, self._ever_connected = connected, self._ever_connected or connected
        self._subscribed = self._subscribed and connected
        self._mqtt_problem = problem

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            self._mqtt_problem = f"the broker refused the subscriptions: {', '.join(refused)}"
            log.error("%s (%s, %s)", self._mqtt_problem, self.job_topic, self.config.readings_filter)
            return
        self._subscribed = True
        log.info("ready: subscribed to %s and %s", self.job_topic, self.config.readings_filter)

    def _on_message(self, client, _userdata, message: mqtt.MQTTMessage) -> None:
        verdict_mid = None
        try:
            if message.topic == self.job_topic:
                self.runner.offer(message.payload)
            elif not message.topic.startswith(OWN_PREFIXES):  # never score what agents publish themselves
                verdict_mid = self.on_reading(message.topic, message.payload)
        except Exception:  # noqa: BLE001 - one message must never stop the agent
            log.exception("unexpected error handling a message on %s", clip(message.topic))
        if verdict_mid is None:
            client.ack(message.mid, message.qos)
        else:
            self._unacknowledged[verdict_mid] = (message.mid, message.qos, self._connection)

    def _on_publish(self, client, _userdata, mid, _reason, _properties) -> None:
        """The broker has a verdict: acknowledge its reading (a kill -9 before this leaves it with the broker)."""
        reading = self._unacknowledged.pop(mid, None)
        if reading is not None and reading[2] == self._connection:
            client.ack(reading[0], reading[1])

    # -- readings --

    def on_reading(self, topic: str, payload: bytes) -> int | None:
        """Score one reading and publish its verdict (QoS 1); count and log what cannot be scored. Returns the
        verdict's message id while the broker has yet to take it (None: nothing to wait for)."""
        counters = self.counters
        began = time.perf_counter()
        try:
            scored = self.scorer.score(payload)
        except InvalidReading as exc:
            counters.invalid += 1
            self._log_invalid(topic, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime failed on a valid reading: health shows it
            counters.scoring_errors += 1
            self._scoring_error = f"scoring failed: {type(exc).__name__}: {clip(str(exc), 200)}"
            log.error("%s (reading on %s)", self._scoring_error, clip(topic))
            return None
        if scored is None:
            counters.unscored += 1
            return None
        info = self.client.publish(scored[0], scored[1], qos=1)
        counters.observe(time.perf_counter() - began)
        counters.scored += 1
        self._scoring_error = None
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued, sent on reconnect
            counters.published += 1
            return info.mid
        counters.dropped += 1
        return None

    def _log_invalid(self, topic: str, exc: InvalidReading) -> None:
        """One line at most every INVALID_LOG_EVERY_S seconds: the latest invalid reading and how many there were."""
        self._invalid_since_log += 1
        now = time.monotonic()
        if now - self._last_invalid_log < INVALID_LOG_EVERY_S:
            return
        more = f" ({self._invalid_since_log - 1} more since the last such line)" if self._invalid_since_log > 1 else ""
        log.warning("invalid reading on %s, not scored: %s%s", clip(topic), exc, more)
        self._last_invalid_log, self._invalid_since_log = now, 0

    # -- statuses --

    def _publish_status(self, status: dict) -> None:
        info = self.client.publish(self.status_topic, job_status_json(status), qos=1, retain=True)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("could not publish the job status %s (%s)", status["state"], mqtt.error_string(info.rc))

    # -- health --

    def health(self) -> Health:
        """up while connected, subscribed and (with a model) scoring works; degraded naming why otherwise."""
        counters = self.health_counters()
        model = self.scorer.model
        if not self._connected:
            state = "degraded" if self._ever_connected or self._mqtt_problem != "connecting" else "starting"
            return Health(state, self._mqtt_problem or "not connected to MQTT", "mqtt", counters=counters)
        if not self._subscribed:
            state = "degraded" if self._mqtt_problem else "starting"
            return Health(state, self._mqtt_problem or "subscribing", "mqtt", counters=counters)
        if self.runner is None or not self.runner.is_alive():
            return Health("degraded", "the job thread stopped: no model jobs are taken", None, counters=counters)
        if self._scoring_error:
            return Health("degraded", self._scoring_error, "model", counters=counters)
        if model is None and self._model_problem:
            return Health("degraded", self._model_problem, "model", counters=counters)
        if model is None:
            return Health("up", "connected; no model yet: not scoring until a job brings one", counters=counters)
        return Health("up", f"scoring {self.config.readings_filter} with model v{model.version}", counters=counters)

    def health_counters(self) -> dict[str, float]:
        c = self.counters
        jobs = self.runner.counts if self.runner else dict.fromkeys(FINAL_STATES, 0)
        return {"scored": c.scored, "invalid": c.invalid, "published": c.published, "dropped": c.dropped,
                "scoring_errors": c.scoring_errors, "jobs_succeeded": jobs["SUCCEEDED"],
                "jobs_failed": jobs["FAILED"]}
