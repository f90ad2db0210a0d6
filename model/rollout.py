"""Rolling model versions out to the edge agents (`python -m edge`): the operator's side of the edge protocol.

    fleet(settings)                                     # {agent_id: its last status}, from jobs/+/status
    job_id = send_job(settings, ["edge-1"], 3)          # a retained job on jobs/edge-1/model
    wait_for(settings, ["edge-1"], job_id, 60)          # {agent_id: status}, once each is SUCCEEDED or FAILED
    rollout(settings, 3, canary=1)                      # the first agent (sorted) first; the rest if it succeeded
    rollback(settings)                                  # the newest version with an artifact older than the fleet's

`settings` are the connection settings (runtime.settings.connection_settings()): MQTT_* to reach the broker,
MODEL_URL for the artifact's address. Only versions with an ONNX artifact (`model.edge_model.find_artifact`:
approved, with acceptable parity) can be rolled out. A job is one document, retained on each agent's
`jobs/<agent_id>/model`: an agent that is away finds it when it comes back; a newer job replaces it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from contract import AGENT_ID_PATTERN, InvalidReading, model_job_json, parse_job_status
from model.edge_model import Artifact, artifacts_dir, find_artifact, stored_versions
from runtime.mqtt import connect, mqtt_client, retained_messages
from runtime.settings import MQTT_JOBS_PREFIX, job_status_topic, model_job_topic

log = logging.getLogger("model.rollout")

FINAL = ("SUCCEEDED", "FAILED")
TIMED_OUT, NOT_SENT = "TIMED_OUT", "NOT_SENT"


class RolloutError(RuntimeError):
    """A rollout that cannot start: the message says why and what to do."""


@dataclass(frozen=True)
class RolloutSummary:
    """How a rollout ended: per agent its final state (SUCCEEDED, FAILED, TIMED_OUT or NOT_SENT) and status."""

    version: int
    job_id: str
    waves: list[list[str]]
    states: dict[str, str]
    statuses: dict[str, dict | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(state == "SUCCEEDED" for state in self.states.values())

    def lines(self) -> list[str]:
        """One line per agent: its state, and the reason when it did not succeed."""
        out = []
        for agent_id, state in sorted(self.states.items()):
            status = self.statuses.get(agent_id) or {}
            reason = f": {status['reason']}" if status.get("reason") and state != "SUCCEEDED" else ""
            out.append(f"{agent_id}: {state}{reason}")
        return out


def fleet(settings: dict[str, str]) -> dict[str, dict]:
    """Every agent that has a status (retained on jobs/<agent_id>/status), {agent_id: status}; a status that does
    not parse, or names another agent than its topic, is skipped with a warning."""
    found = {}
    for topic, payload in retained_messages(settings, f"{MQTT_JOBS_PREFIX}/+/status").items():
        agent_id = topic.split("/")[1]
        try:
            status = parse_job_status(payload)
        except InvalidReading as exc:
            log.warning("skipping the status on %s: %s", topic, exc)
            continue
        if status["agent_id"] != agent_id:
            log.warning("skipping the status on %s: it is agent %r's", topic, status["agent_id"])
            continue
        found[agent_id] = status
    return dict(sorted(found.items()))


def artifact_of(version: int) -> Artifact:
    """The version's ONNX artifact, or RolloutError if it has none."""
    artifact = find_artifact(version)
    if artifact is None:
        raise RolloutError(f"model version {version} has no ONNX artifact in {artifacts_dir()}: only approved "
                           f"versions with acceptable ONNX parity are rolled out (python -m model approve {version})")
    return artifact


def new_job_id(version: int) -> str:
    return f"v{version}-{uuid.uuid4().hex[:8]}"


def send_job(settings: dict[str, str], agent_ids: Iterable[str], version: int, artifact: Artifact | None = None,
             job_id: str | None = None) -> str:
    """Publish one job (model `version`, a new job_id unless given), retained, on each agent's jobs/<id>/model;
    returns the job_id once the broker acknowledged every one."""
    agent_ids = list(agent_ids)
    if not agent_ids:
        raise RolloutError("no agents to send the job to")
    for agent_id in agent_ids:
        if not isinstance(agent_id, str) or not AGENT_ID_PATTERN.fullmatch(agent_id):
            raise RolloutError(f"agent id {agent_id!r} must match {AGENT_ID_PATTERN.pattern}")
    artifact = artifact or artifact_of(version)
    if artifact.version != version:
        raise RolloutError(f"the artifact given is version {artifact.version}'s, not version {version}'s")
    if not settings.get("MODEL_URL"):
        raise RolloutError("MODEL_URL is not set: the agents need the model server's address (run `make up`, or "
                           "export it)")
    job_id = job_id or new_job_id(version)
    job = {"job_id": job_id, "model_version": version,
           "artifact_url": f"{settings['MODEL_URL'].rstrip('/')}/model/versions/{version}/onnx",
           "sha256": artifact.sha256, "size_bytes": artifact.size_bytes, "issued_at": time.time_ns() // 1000}
    client = mqtt_client(settings, f"rollout-{uuid.uuid4().hex[:12]}")
    connect(client, settings)
    try:
        sent = [client.publish(model_job_topic(agent_id), model_job_json(job), qos=1, retain=True)
                for agent_id in agent_ids]
        for agent_id, info in zip(agent_ids, sent, strict=True):
            info.wait_for_publish(10)
            if not info.is_published():
                raise RolloutError(f"the MQTT broker did not acknowledge the job for {agent_id}")
    finally:
        client.disconnect()
        client.loop_stop()
    return job_id


def wait_for(settings: dict[str, str], agent_ids: Iterable[str], job_id: str,
             timeout_s: float) -> dict[str, dict | None]:
    """Each agent's latest status once every one is final (SUCCEEDED or FAILED) for `job_id`, or as it stands
    after `timeout_s` (None: no status seen). Statuses are retained: finals reported before the call count."""
    agent_ids = list(agent_ids)
    if not agent_ids:
        return {}
    topics = {job_status_topic(agent_id): agent_id for agent_id in agent_ids}
    latest: dict[str, dict | None] = dict.fromkeys(agent_ids)
    changed = threading.Condition()

    def on_message(_client, _userdata, message: mqtt.MQTTMessage) -> None:
        try:
            status = parse_job_status(message.payload)
        except InvalidReading as exc:
            log.warning("ignoring the status on %s: %s", message.topic, exc)
            return
        with changed:
            latest[topics[message.topic]] = status
            changed.notify_all()

    def done() -> bool:
        return all(s is not None and s["job_id"] == job_id and s["state"] in FINAL for s in latest.values())

    client = mqtt_client(settings, f"rollout-wait-{uuid.uuid4().hex[:12]}")
    client.on_message = on_message
    connect(client, settings)
    deadline = time.monotonic() + timeout_s
    try:
        client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in topics])
        with changed:
            while not done() and (remaining := deadline - time.monotonic()) > 0:
                changed.wait(remaining)
            return dict(latest)
    finally:
        client.disconnect()
        client.loop_stop()


def final_state(status: dict | None, job_id: str) -> str:
    """SUCCEEDED or FAILED for a final status of `job_id`; TIMED_OUT otherwise."""
    if status and status["job_id"] == job_id and status["state"] in FINAL:
        return status["state"]
    return TIMED_OUT


def rollout(settings: dict[str, str], version: int, canary: int = 0, timeout_s: float = 60.0,
            progress: Callable[[str], None] = print, agents: Iterable[str] | None = None) -> RolloutSummary:
    """Install model `version` on the fleet (every agent with a status, sorted, unless `agents` given). With
    `canary` N > 0 the first N agents get it first; the rest only if all of them SUCCEEDED within `timeout_s`.
    Each wave waits up to `timeout_s`."""
    if canary < 0:
        raise RolloutError(f"canary must be 0 (no canary) or a number of agents, got {canary}")
    agents = sorted(agents) if agents is not None else list(fleet(settings))
    if not agents:
        raise RolloutError(f"no edge agents: none has a status on {MQTT_JOBS_PREFIX}/+/status (start python -m edge)")
    artifact = artifact_of(version)
    job_id = new_job_id(version)
    waves = [agents[:canary], agents[canary:]] if 0 < canary < len(agents) else [agents]
    states = dict.fromkeys(agents, NOT_SENT)
    statuses: dict[str, dict | None] = {}
    for number, wave in enumerate(waves):
        label = "canary" if len(waves) == 2 and number == 0 else "rollout"
        progress(f"{label}: job {job_id} (model v{version}) to {', '.join(wave)}")
        send_job(settings, wave, version, artifact, job_id)
        answers = wait_for(settings, wave, job_id, timeout_s)
        for agent_id, status in answers.items():
            statuses[agent_id], states[agent_id] = status, final_state(status, job_id)
            reason = f": {status['reason']}" if status and status["reason"] and states[agent_id] != "SUCCEEDED" else ""
            progress(f"  {agent_id}: {states[agent_id]}{reason}")
        if any(states[agent_id] != "SUCCEEDED" for agent_id in wave):
            if number + 1 < len(waves):
                progress(f"canary did not succeed everywhere: not sent to {', '.join(waves[number + 1])}")
            break
    return RolloutSummary(version, job_id, waves, states, statuses)


def previous_version(statuses: dict[str, dict], versions: Iterable[int]) -> tuple[int, int]:
    """(the version the fleet runs, the one to roll back to): the highest model_version among the statuses, and
    the newest of `versions` older than it. RolloutError if either is missing."""
    running = [s["model_version"] for s in statuses.values() if s.get("model_version") is not None]
    if not running:
        raise RolloutError("no edge agent runs a model: there is nothing to roll back")
    current = max(running)
    older = [v for v in versions if v < current]
    if not older:
        raise RolloutError(f"no version older than v{current} has an ONNX artifact: there is nothing to roll back to")
    return current, max(older)


def rollback(settings: dict[str, str], canary: int = 0, timeout_s: float = 60.0,
             progress: Callable[[str], None] = print) -> RolloutSummary:
    """Roll the whole fleet back to the previous version: the newest version with an artifact that is older than
    the newest version the fleet runs."""
    statuses = fleet(settings)
    current, target = previous_version(statuses, stored_versions())
    progress(f"rollback: the fleet runs up to v{current}; rolling back to v{target}")
    return rollout(settings, target, canary, timeout_s, progress, agents=statuses)
