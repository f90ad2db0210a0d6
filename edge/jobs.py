"""Model jobs at the edge: what a job document means to an agent (`plan`, pure and total), the download
(`Downloader`: bearer key, HTTP Range resume, retries, size and sha256 checks) and the job thread (`JobRunner`)
that takes one job at a time through QUEUED -> IN_PROGRESS -> SUCCEEDED | FAILED.

- Any payload on `jobs/<agent_id>/model` gives a `plan`: run the job, re-report a job already finished, report a
  bad document as FAILED (when it has a usable job_id: the reason names the field), or ignore it (an empty
  retained message, an unusable document: logged). `plan` never raises.
- The last document wins: a job with another job_id replaces the one in progress, which is reported FAILED
  ("replaced by job <id>") and its partial download deleted.
- A SUCCEEDED job is remembered in state.json and never run again; a FAILED one is not run again by this process,
  but is retried after a restart (its retained document comes back: the cause may be fixed, e.g. the key).
- Downloads go to `<state-dir>/<job_id>.part`; an existing part file is resumed with `Range` (and `If-Range` on
  the job's sha256, the server's ETag, so a changed artifact is sent whole). Transient trouble (server away,
  timeouts, 5xx, 408, 429) is retried with backoff forever, the job staying IN_PROGRESS with the reason; 401,
  403, 404, a size or sha256 mismatch, a model that does not load or gets the workshop examples wrong end the job
  FAILED, the previous model still scoring. The access key is sent, never logged or reported, and only to the
  agent's own model server (MODEL_URL): a job whose artifact_url points elsewhere is FAILED without a request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from contract import (
    AGENT_ID_FIELD,
    JOB_ID_PATTERN,
    MAX_PAYLOAD_BYTES,
    MODEL_VERSION,
    InvalidReading,
    clip,
    parse_model_job,
    show,
)
from edge.scoring import BadModel, Scorer, load_model
from edge.state import AgentState, save_state
from runtime.files import sync_directory
from runtime.retry import Backoff

log = logging.getLogger("edge.jobs")

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0  # a stalled transfer is retried (resuming) after this long
MAX_BACKOFF_S = 15.0
CHUNK_BYTES = 64 * 1024
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
FINAL_STATES = ("SUCCEEDED", "FAILED")


# -- what a document on jobs/<agent_id>/model means (pure) --

@dataclass(frozen=True)
class Run:
    """A new job: run it."""

    job: dict

    @property
    def job_id(self) -> str:
        return self.job["job_id"]


@dataclass(frozen=True)
class Report:
    """A job this agent already finished: publish its final status again, do nothing else."""

    job_id: str
    status: dict


@dataclass(frozen=True)
class Reject:
    """A document that is no job but names a usable job_id: that job is FAILED with `reason`."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class Ignore:
    """Nothing to do or to report; `error` says whether the document deserved an error log line."""

    reason: str
    error: bool = False


Action = Run | Report | Reject | Ignore


def plan(payload: object, finished: Mapping[str, dict], active: str | None) -> Action:
    """What to do with one payload of jobs/<agent_id>/model, given the finished jobs' final statuses (job_id ->
    status) and the job in progress. Pure and total: any payload gives an Action, never an exception."""
    if payload is None or (isinstance(payload, bytes | bytearray | str) and len(payload) == 0):
        return Ignore("no job: the retained job document was cleared")
    try:
        job = parse_model_job(payload)
    except InvalidReading as exc:
        job_id = usable_job_id(payload)
        reason = f"invalid job document: {exc}"
        return Reject(job_id, reason) if job_id else Ignore(f"{reason} (and no usable job_id to report it)", True)
    if job["job_id"] == active:
        return Ignore(f"job {job['job_id']} is already in progress")
    if job["job_id"] in finished:
        return Report(job["job_id"], finished[job["job_id"]])
    return Run(job)


def usable_job_id(payload: object) -> str | None:
    """The job_id of a document that failed the contract, if it has one a status can name; never raises."""
    try:
        if len(payload) > MAX_PAYLOAD_BYTES:
            return None
        document = json.loads(payload)
        job_id = document.get("job_id") if isinstance(document, dict) else None
    except Exception:  # noqa: BLE001 - total by design: no job_id then
        return None
    return job_id if isinstance(job_id, str) and JOB_ID_PATTERN.fullmatch(job_id) else None


def job_status(agent_id: str, job_id: str | None, state: str, model_version: int | None,
               target_version: int | None, reason: str = "") -> dict:
    """A job status as the contract has it (contract.JOB_STATUS_FIELDS), stamped now."""
    return {AGENT_ID_FIELD: agent_id, "job_id": job_id, "state": state, MODEL_VERSION: model_version,
            "target_version": target_version, "reason": reason, "ts": time.time_ns() // 1000}


# -- the download --

class JobFailed(Exception):
    """The job cannot succeed; `reason` says why. `discard` tells whether the part file is worthless."""

    def __init__(self, reason: str, discard: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.discard = discard


class Cancelled(Exception):
    """The job was replaced by another (`reason` says which) or the agent is stopping (`reason` None)."""

    def __init__(self, reason: str | None):
        super().__init__(reason or "stopping")
        self.reason = reason


class Transient(Exception):
    """Worth another try after a pause (server away, timeout, 5xx); the message is the reason to log."""


class Cancel(threading.Event):
    """Set to cancel a job; `reason` None means the agent is stopping (keep the part file for a restart)."""

    reason: str | None = None

    def cancel(self, reason: str | None) -> None:
        self.reason = reason
        self.set()

    def check(self) -> None:
        if self.is_set():
            raise Cancelled(self.reason)

    def pause(self, seconds: float) -> None:
        """Wait `seconds`, or raise Cancelled as soon as the job is cancelled."""
        if self.wait(seconds):
            raise Cancelled(self.reason)


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the default port filled in; None if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port


class Downloader:
    """Fetches a job's artifact into its part file, resuming, retrying and checking it. With `model_url` (the
    agent's MODEL_URL) the access key goes only to that server: a job naming another is FAILED unsent."""

    def __init__(self, access_key: str | None, max_rate: int | None = None, model_url: str | None = None):
        self._access_key = access_key
        self.max_rate = max_rate  # bytes per second, None: as fast as the link goes
        self.model_url = model_url
        self.session = requests.Session()

    def fetch(self, job: dict, part: Path, cancel: Cancel, on_retry: Callable[[str], None]) -> None:
        """Complete `part` with the job's artifact and check its size and sha256. Retries transient failures with
        backoff, telling `on_retry(reason)`; raises JobFailed or Cancelled."""
        if not self._access_key:
            raise JobFailed("MODEL_ACCESS_KEY is not set in the agent's environment: it cannot download models")
        if self.model_url and origin(job["artifact_url"]) != origin(self.model_url):
            raise JobFailed(f"artifact_url {clip(job['artifact_url'], 200)} is not on the agent's model server "
                            f"{self.model_url} (MODEL_URL): the access key is sent nowhere else")
        backoff = Backoff(0.5, MAX_BACKOFF_S)
        while True:
            cancel.check()
            try:
                self._attempt(job, part, cancel)
                break
            except Transient as exc:
                delay = backoff.next_delay()
                on_retry(f"{exc}; retrying in {delay:.1f} s (attempt {backoff.failures})")
                cancel.pause(delay)
        verify(job, part)

    def _attempt(self, job: dict, part: Path, cancel: Cancel) -> None:
        size = job["size_bytes"]
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            log.warning("job %s: part file of %s bytes exceeds the job's size_bytes %s: starting over", job["job_id"],
                        f"{offset:,}", f"{size:,}")
            part.unlink()
            offset = 0
        if offset == size:
            return  # downloaded before a restart; verify() decides
        headers = {"Authorization": f"Bearer {self._access_key}"}
        if offset:
            headers |= {"Range": f"bytes={offset}-", "If-Range": f'"{job["sha256"]}"'}
            log.info("job %s: resuming the download at byte %s of %s (HTTP Range)", job["job_id"], f"{offset:,}",
                     f"{size:,}")
        else:
            log.info("job %s: downloading %s (%s bytes)", job["job_id"], job["artifact_url"], f"{size:,}")
        try:
            with self.session.get(job["artifact_url"], headers=headers, stream=True,
                                  timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)) as response:
                start = self._check_response(job, response, offset)
                self._receive(job, part, response, start, cancel)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise Transient(f"model server unreachable or too slow: {clip(str(exc), 200)}") from None
        except requests.RequestException as exc:
            raise JobFailed(f"cannot download {job['artifact_url']}: {clip(str(exc), 200)}") from None

    def _check_response(self, job: dict, response: requests.Response, offset: int) -> int:
        """Where the body starts in the artifact (0 or `offset`), once the answer is one we can use."""
        code, url, size = response.status_code, job["artifact_url"], job["size_bytes"]
        if code in TRANSIENT_HTTP:
            raise Transient(f"model server answered HTTP {code} for {url}")
        if code in (401, 403):
            raise JobFailed(f"model server refused the access key (HTTP {code}) for {url}: check the agent's "
                            "MODEL_ACCESS_KEY")
        if code == 404:
            raise JobFailed(f"model server has no artifact at {url} (HTTP 404: {server_error(response)})")
        if code == 416:
            raise JobFailed(f"size mismatch: the server's artifact is smaller than the {offset:,} bytes already "
                            f"downloaded (HTTP 416); the job says size_bytes {size:,}", discard=True)
        if code not in (200, 206):
            raise JobFailed(f"model server answered HTTP {code} for {url}: {server_error(response)}")
        served_sha = response.headers.get("X-Content-SHA256")
        if served_sha and served_sha != job["sha256"]:
            raise JobFailed(f"sha256 mismatch: the server's artifact has sha256 {served_sha}, the job says "
                            f"{job['sha256']}", discard=True)
        if code == 206:
            start, total = content_range(response.headers.get("Content-Range", ""))
            if total != size:
                raise JobFailed(f"size mismatch: the server's artifact is {total} bytes, the job says size_bytes "
                                f"{size:,}", discard=True)
            if start != offset:
                raise Transient(f"server resumed at byte {start}, not {offset}")
            expected = size - offset
        else:
            if offset:
                log.info("job %s: the server sent the whole artifact (not a range): starting over", job["job_id"])
            start, expected = 0, size
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != expected:
            raise JobFailed(f"size mismatch: the server sends {int(length):,} bytes from byte {start:,}, the job's "
                            f"size_bytes {size:,} needs {expected:,}", discard=True)
        return start

    def _receive(self, job: dict, part: Path, response: requests.Response, start: int, cancel: Cancel) -> None:
        """Append the body to `part` (truncated to `start`), never beyond size_bytes, paced to max_rate."""
        size, received = job["size_bytes"], 0
        rate = self.max_rate
        chunk_bytes = CHUNK_BYTES if not rate else max(1024, min(CHUNK_BYTES, rate // 8))
        began = time.monotonic()
        with part.open("r+b" if part.exists() else "wb") as out:
            out.truncate(start)
            out.seek(start)
            for chunk in response.iter_content(chunk_bytes):
                cancel.check()
                if start + received + len(chunk) > size:
                    raise JobFailed(f"size mismatch: the server sends more than the job's size_bytes {size:,}",
                                    discard=True)
                out.write(chunk)
                out.flush()  # the part file shows progress as it goes (and survives a kill of this process)
                received += len(chunk)
                if rate:
                    cancel.pause(max(0.0, received / rate - (time.monotonic() - began)))
            os.fsync(out.fileno())
        if start + received < size:
            raise Transient(f"the transfer ended at byte {start + received:,} of {size:,}")


def verify(job: dict, part: Path) -> None:
    """The part file must be exactly size_bytes long with the job's sha256; else JobFailed (discard it)."""
    size = part.stat().st_size
    if size != job["size_bytes"]:
        raise JobFailed(f"size mismatch: downloaded {size:,} bytes, the job says size_bytes {job['size_bytes']:,}",
                        discard=True)
    digest = hashlib.sha256()
    with part.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != job["sha256"]:
        raise JobFailed(f"sha256 mismatch: the download has sha256 {digest.hexdigest()}, the job says "
                        f"{job['sha256']}", discard=True)


def content_range(header: str) -> tuple[int, int]:
    """(first byte, total size) of a `Content-Range: bytes a-b/total` header; (-1, -1) if it is not one."""
    unit, _, rest = header.partition(" ")
    span, _, total = rest.partition("/")
    first = span.partition("-")[0]
    if unit != "bytes" or not first.isdigit() or not total.isdigit():
        return -1, -1
    return int(first), int(total)


def server_error(response: requests.Response) -> str:
    """The model server's own error message (its JSON `error`), or the start of the body."""
    try:
        return clip(str(response.json()["error"]), 200)
    except Exception:  # noqa: BLE001 - any body at all: show a little of it
        return show(response.text[:200])


# -- the job thread --

class JobRunner:
    """One thread that runs an agent's jobs one at a time, reporting each step through `publish(status)` after
    saving it in state.json. `offer(payload)` is called from the MQTT thread and returns at once."""

    def __init__(self, agent_id: str, state_dir: Path, state: AgentState, scorer: Scorer, downloader: Downloader,
                 publish: Callable[[dict], None]):
        self.agent_id, self.state_dir, self.state = agent_id, state_dir, state
        self.scorer, self.downloader, self.publish = scorer, downloader, publish
        self.counts = dict.fromkeys(FINAL_STATES, 0)
        self._failed: dict[str, dict] = {}  # job_id -> FAILED status, for this process's life
        self._lock = threading.Condition()
        self._pending: Run | Report | Reject | None = None
        # Answers owed to documents that a newer one followed before the thread took them: each is still reported.
        self._answers: deque[Report | Reject] = deque()
        self._active: str | None = None
        self._cancel = Cancel()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="jobs", daemon=True)

    def start(self) -> JobRunner:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the current step; a download in progress keeps its part file for the next start."""
        with self._lock:
            self._stopping = True
            self._cancel.cancel(None)
            self._lock.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no job is pending or running; False if still busy after `timeout_s`."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending is None and not self._answers and self._active is None,
                                       timeout_s)

    def current_status(self) -> dict:
        """The status to publish now: the last one reported (IDLE before the first job), model_version current."""
        with self._lock:
            saved = self.state.status
        model = self.scorer.model
        version = model.version if model else None
        if saved is None:
            return job_status(self.agent_id, None, "IDLE", version, None)
        return {**saved, MODEL_VERSION: version}

    def offer(self, payload: object) -> None:
        """Take a payload of jobs/<agent_id>/model (MQTT thread: never blocks, never raises)."""
        with self._lock:
            action = plan(payload, {**self.state.succeeded, **self._failed}, self._active)
            if isinstance(action, Ignore):
                (log.error if action.error else log.info)("%s", action.reason)
                return
            if self._active is not None and action.job_id != self._active:
                self._cancel.cancel(f"replaced by job {action.job_id}")
            if isinstance(self._pending, (Report, Reject)):  # the last document wins, but an invalid one still
                self._answers.append(self._pending)        # gets its FAILED status, even when another follows at once
            self._pending = action
            self._lock.notify_all()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._answers and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                if self._answers:
                    action = self._answers.popleft()
                else:
                    action, self._pending = self._pending, None
                self._active, self._cancel = action.job_id, Cancel()
                cancel = self._cancel
            try:
                self._handle(action, cancel)
            except Exception as exc:  # noqa: BLE001 - the thread outlives any one job
                log.exception("job %s: unexpected error", action.job_id)
                self._fail(action.job_id, None, f"agent error: {type(exc).__name__}: {clip(str(exc), 200)}")
            finally:
                with self._lock:
                    self._active = None
                    self._lock.notify_all()

    def _handle(self, action: Run | Report | Reject, cancel: Cancel) -> None:
        if isinstance(action, Report):
            log.info("job %s already %s: reporting it again", action.job_id, action.status["state"])
            model = self.scorer.model
            self._report({**action.status, MODEL_VERSION: model.version if model else None,
                          "ts": time.time_ns() // 1000})
        elif isinstance(action, Reject):
            log.error("job %s: %s", action.job_id, action.reason)
            self._fail(action.job_id, None, action.reason)
        else:
            self._run(action.job, cancel)

    def _run(self, job: dict, cancel: Cancel) -> None:
        job_id, version = job["job_id"], job[MODEL_VERSION]
        log.info("job %s: model v%s from %s", job_id, version, job["artifact_url"])
        self._report(self._status(job_id, "QUEUED", version))
        self._report(self._status(job_id, "IN_PROGRESS", version))
        current = self.scorer.model
        if current and current.version == version and current.sha256 == job["sha256"]:
            self._succeed(job_id, version, f"already scoring with v{version} (same sha256): nothing to download")
            return
        part = self.state_dir / f"{job_id}.part"
        self._discard_parts(keep=part)
        retrying: list[str] = []

        def on_retry(reason: str) -> None:
            log.warning("job %s: %s", job_id, reason)
            problem = reason.partition("; retrying")[0]
            if retrying[-1:] != [problem]:  # report each new problem once, not every attempt
                retrying.append(problem)
                self._report(self._status(job_id, "IN_PROGRESS", version, f"retrying: {problem}"))

        try:
            self.downloader.fetch(job, part, cancel, on_retry)
            model = load_model(version, part.read_bytes(), job["sha256"])
        except Cancelled as exc:
            if exc.reason is None:
                log.info("job %s: stopping; the download resumes at the next start", job_id)
                return
            part.unlink(missing_ok=True)
            self._fail(job_id, version, exc.reason)
            return
        except (JobFailed, BadModel) as exc:
            reason = exc.reason if isinstance(exc, JobFailed) else str(exc)
            if not isinstance(exc, JobFailed) or exc.discard:
                part.unlink(missing_ok=True)
            self._fail(job_id, version, reason)
            return
        self.scorer.swap(model)
        kept = self._keep_model(part, model.version, model.sha256)
        self._succeed(job_id, version, f"scoring with model v{version}")  # saves state.json: it names `kept`
        for old in self.state_dir.glob("model-v*.onnx"):
            if old != kept:
                old.unlink(missing_ok=True)

    def _keep_model(self, part: Path, version: int, sha256: str) -> Path:
        """The part file becomes model-v<N>.onnx, the one the agent loads at its next start (once state.json,
        saved next, names it)."""
        final = self.state_dir / f"model-v{version}.onnx"
        os.replace(part, final)
        sync_directory(self.state_dir)
        with self._lock:
            self.state.model_version, self.state.model_file, self.state.model_sha256 = version, final.name, sha256
        return final

    def _discard_parts(self, keep: Path) -> None:
        for stale in self.state_dir.glob("*.part"):
            if stale != keep:
                log.info("deleting %s: its job was replaced", stale.name)
                stale.unlink(missing_ok=True)

    def _status(self, job_id: str, state: str, target: int | None, reason: str = "") -> dict:
        model = self.scorer.model
        return job_status(self.agent_id, job_id, state, model.version if model else None, target, reason)

    def _succeed(self, job_id: str, version: int, detail: str) -> None:
        status = self._status(job_id, "SUCCEEDED", version)
        with self._lock:
            self.state.remember_success(status)
        self.counts["SUCCEEDED"] += 1
        log.info("job %s SUCCEEDED: %s", job_id, detail)
        self._report(status)

    def _fail(self, job_id: str, version: int | None, reason: str) -> None:
        status = self._status(job_id, "FAILED", version, reason)
        with self._lock:
            self._failed[job_id] = status
        self.counts["FAILED"] += 1
        log.error("job %s FAILED: %s%s", job_id, reason,
                  f" (still scoring with v{status[MODEL_VERSION]})" if status[MODEL_VERSION] else "")
        self._report(status)

    def _report(self, status: dict) -> None:
        """Save the status as the agent's last, then publish it (retained). Only the job thread changes the
        state, under the lock the MQTT thread reads it with; it writes the file outside that lock."""
        with self._lock:
            self.state.status = status
        try:
            save_state(self.state_dir, self.state)
        except OSError as exc:
            log.error("cannot save %s: %s (a restart would not know this job's state)", self.state_dir, exc)
        self.publish(status)
