"""Nothing the project runs phones home: every environment the project gives its processes turns MLflow's usage
telemetry off, as MLflow itself decides it (mlflow.telemetry.utils.is_telemetry_disabled), so a misspelt variable
fails here. JupyterLab's news and update checks: tests/test_jupyter.py. No services needed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.settings import ENVIRONMENT_DEFAULTS, REPO_ROOT, with_environment_defaults
from stack.cli import main as stack_cli

# Run in a fresh interpreter (MLflow decides once, at `import mlflow`) with no network at all: when telemetry is on
# (the control case) MLflow's client tries to fetch its configuration from the internet.
ASK_MLFLOW = """
import json, socket

def refuse(*args, **kwargs):
    raise OSError("no network in this test")

socket.socket.connect = refuse
socket.create_connection = refuse

import mlflow.telemetry
from mlflow.telemetry.utils import is_telemetry_disabled

answer = {"disabled": is_telemetry_disabled(), "client": mlflow.telemetry.get_telemetry_client() is not None}
if answer["disabled"]:
    from mlflow.server import app  # what `make mlflow-ui` serves tells the UI whether to send telemetry

    answer["ui"] = app.test_client().get("/ajax-api/3.0/mlflow/ui-telemetry").get_json()
print(json.dumps(answer))
"""


@pytest.fixture
def bare_environment(tmp_path: Path) -> dict[str, str]:
    """An environment with nothing that would turn telemetry off by itself (CI and pytest markers, say)."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def ask_mlflow(env: dict[str, str]) -> dict:
    result = subprocess.run([sys.executable, "-c", ASK_MLFLOW], env=env, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment `make` gives the commands of its targets (the Makefile's exported variables)."""
    result = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "print-environment: ; @env",
                             "print-environment"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def dockerfile_environment() -> dict[str, str]:
    """The ENV instructions of the Dockerfile (the image of the Compose services), as name -> value."""
    text = re.sub(r"\\\n", " ", (REPO_ROOT / "Dockerfile").read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line.split()[1:])
    return env


def test_without_the_project_environment_mlflow_would_send_telemetry(bare_environment):
    """The control: the bare environment does not turn telemetry off by itself, so the tests below mean something."""
    assert ask_mlflow(bare_environment) == {"disabled": False, "client": True}


@pytest.mark.parametrize("source", ["python -m stack", "make", "Dockerfile"])
def test_the_environment_the_project_gives_its_processes_turns_mlflow_telemetry_off(source, bare_environment):
    env = {"python -m stack": lambda: with_environment_defaults(bare_environment),
           "make": lambda: make_environment(bare_environment),
           "Dockerfile": lambda: {**bare_environment, **dockerfile_environment()}}[source]()
    assert {name: env.get(name) for name in ENVIRONMENT_DEFAULTS} == ENVIRONMENT_DEFAULTS
    answer = ask_mlflow(env)
    assert answer["disabled"] is True
    assert answer["client"] is False  # no telemetry client started, so nothing queued, nothing sent
    assert answer["ui"]["disable_ui_telemetry"] is True  # `make mlflow-ui`: its web page sends nothing either


def test_a_variable_set_in_the_environment_wins_over_the_default():
    assert with_environment_defaults({"MLFLOW_DISABLE_TELEMETRY": "false"})["MLFLOW_DISABLE_TELEMETRY"] == "false"


def test_python_m_stack_gives_the_defaults_to_what_it_starts(monkeypatch, capsys):
    """`python -m stack` puts them in its own environment, which every service, the first training run and
    JupyterLab inherit (stack/services.py builds theirs from it)."""
    for name in ENVIRONMENT_DEFAULTS:
        monkeypatch.setenv(name, "")  # so that the end of the test puts back what was there before
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit):
        stack_cli(["--help"])
    capsys.readouterr()
    assert {name: os.environ.get(name) for name in ENVIRONMENT_DEFAULTS} == ENVIRONMENT_DEFAULTS
