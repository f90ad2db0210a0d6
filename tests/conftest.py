"""Fixtures that start real services of the local stack on free loopback ports, in a temporary directory.

Tests never use a stack someone left running: each session starts its own under a pytest temp dir (the
installed parts, .stack/jvm and .stack/ivy, are shared read-only) and stops it at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.registry import ModelInfo, promote
from model.train import RunResult, train
from stack.config import StackConfig, load_config
from stack.launcher import Stack
from stack.secrets import ensure_secrets

PORT_SETTINGS = (
    "mqtt_port", "kafka_port", "kafka_controller_port", "kudu_master_port", "kudu_master_web_port",
    "kudu_tserver_port", "kudu_tserver_web_port", "sql_port", "model_port",
)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together while choosing, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stack_environment(stack_dir: Path) -> dict[str, str]:
    """Environment that points the stack's CLI and config at `stack_dir` with free ports."""
    env = dict(os.environ)
    env["STACK_DIR"] = str(stack_dir)
    for name, port in zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True):
        env["STACK_" + name.upper()] = str(port)
    return env


@pytest.fixture(scope="session", autouse=True)
def private_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the tests' MLflow runs out of the project's own store."""
    store = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        patch.setenv("MLFLOW_ARTIFACT_ROOT", str(store / "artifacts"))
        yield store


@pytest.fixture(scope="session")
def workshop_run() -> RunResult:
    """The workshop's first run, 20 trees of depth 20, trained once for the session (tracked in MLflow)."""
    return train(20, 20)


@pytest.fixture(scope="session")
def served_model_file(workshop_run: RunResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That run promoted to a served-model file."""
    path = tmp_path_factory.mktemp("model") / "iot_model.joblib"
    info: ModelInfo = promote(workshop_run.run_id, path)
    assert info.run_id == workshop_run.run_id
    return path


@pytest.fixture(scope="session")
def stack_config(tmp_path_factory: pytest.TempPathFactory) -> StackConfig:
    return load_config(environ=stack_environment(tmp_path_factory.mktemp("stack")))


@pytest.fixture(scope="session")
def local_stack(stack_config: StackConfig, served_model_file: Path) -> Iterator[Stack]:
    """The whole local stack, up for the test session, serving the session's workshop model."""
    stack_config.model_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(served_model_file, stack_config.model_file)
    stack = Stack(stack_config)
    try:
        # Without the streaming job: the tests that need one start their own, with their own checkpoint.
        stack.up([s.name for s in stack.services if s.name != "streaming"])
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def secrets(stack_config: StackConfig) -> dict[str, str]:
    return ensure_secrets(stack_config.secrets_file)
