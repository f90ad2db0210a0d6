"""`make lab` (`python -m stack lab`): a real JupyterLab on a free port over a temporary folder, with Jupyter's own
configuration, settings and runtime folders private to the test. It prints the one URL to open, which works with its
token and not without; it never asks for or fetches Jupyter news or updates; Ctrl+C and SIGTERM stop it cleanly.
No services needed."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest

from runtime.settings import ENVIRONMENT_DEFAULTS, REPO_ROOT
from stack.jupyter import CONFIG_DIR

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 45  # JupyterLab's own grace (stack/jupyter.py, STOP_GRACE_S) and a margin
NOTIFICATION_SETTINGS = "@jupyterlab/apputils-extension:notification"
# No proxy from the environment between the test and 127.0.0.1, and redirects are seen, not followed.
_NO_REDIRECT = type("NoRedirect", (urllib.request.HTTPRedirectHandler,),
                    {"redirect_request": lambda *args, **kwargs: None})
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NO_REDIRECT)


@dataclass
class Lab:
    proc: subprocess.Popen
    lines: queue.Queue = field(default_factory=queue.Queue)  # stdout lines, then None at its end
    seen: list[str] = field(default_factory=list)

    def read_line(self, deadline: float) -> str | None:
        """The next line printed (None once output has ended); fails the test at the deadline."""
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no line printed in time; so far: {self.seen}")
        if line is not None:
            self.seen.append(line)
        return line

    def url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (line := self.read_line(deadline)) is not None:
            if line.startswith("http"):
                return line
        pytest.fail(f"it ended without printing a URL: {self.seen}\n{self.proc.stderr.read()}")

    def server(self) -> psutil.Process:
        """JupyterLab's own process, which `python -m stack lab` started."""
        (child,) = psutil.Process(self.proc.pid).children()
        return child


def lab_environment(tmp: Path) -> dict[str, str]:
    """This environment, with Jupyter's and the stack's folders in `tmp` and no project variable set beforehand."""
    env = {name: value for name, value in os.environ.items()
           if name not in ENVIRONMENT_DEFAULTS and not name.startswith(("JUPYTER", "STACK_"))}
    env.update(STACK_DIR=str(tmp / "stack"), JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
               JUPYTER_DATA_DIR=str(tmp / "jupyter-data"), JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "lab-user-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"), IPYTHONDIR=str(tmp / "ipython"))
    return env


def start_lab(tmp: Path, *args: str, **env: str) -> Lab:
    notebooks = tmp / "notebooks"
    notebooks.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "stack", "lab", "--notebook-dir", str(notebooks), *args],
                            env={**lab_environment(tmp), **env}, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lab = Lab(proc)

    def pump() -> None:
        for line in proc.stdout:
            lab.lines.put(line.rstrip("\n"))
        lab.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lab


def stop(lab: Lab) -> None:
    if lab.proc.poll() is None:
        lab.proc.send_signal(signal.SIGTERM)
        try:
            lab.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            lab.proc.kill()
            lab.proc.wait()


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie (one that has exited, which its new parent has not collected yet)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        with HTTP.open(urllib.request.Request(url, headers=headers, method=method), timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = start_lab(tmp_path_factory.mktemp("lab"), "--port", "0")
    lab.url()
    yield lab
    stop(lab)


def parts(url: str) -> tuple[str, str]:
    """The server's base URL and the token of a printed URL."""
    split = urlsplit(url)
    return f"{split.scheme}://{split.netloc}", parse_qs(split.query)["token"][0]


def test_it_prints_few_lines_ending_with_the_one_url_to_open(lab):
    url = lab.seen[-1]
    assert len(lab.seen) <= 3, lab.seen
    assert [line for line in lab.seen if "http" in line and "token=" in line] == [url]
    assert lab.seen[-2].startswith("JupyterLab is ready")
    assert "jupyterlab.log" in lab.seen[0]
    base, token = parts(url)
    assert base.startswith("http://127.0.0.1:") and urlsplit(url).path == "/lab" and len(token) >= 32


def test_the_url_opens_jupyterlab_with_its_token_and_nothing_without(lab):
    url = lab.seen[-1]
    base, token = parts(url)
    status, headers, body = get(url)
    assert status == 200 and b"JupyterLab" in body
    status, _, body = get(f"{base}/api/status", token)
    assert status == 200 and "started" in json.loads(body)

    assert get(f"{base}/api/status")[0] == 403
    assert get(f"{base}/api/status", "not-the-token")[0] == 403
    status, headers, _ = get(f"{base}/lab")
    assert status == 302 and headers["Location"].startswith("/login")


def test_jupyterlab_never_asks_for_nor_fetches_news_or_updates(lab):
    """The notification settings' effective values (schema defaults, with the project's overrides, under the
    user's settings, of which this test's private settings folder has none) say never: JupyterLab asks "Would you
    like to get notified about official Jupyter news?" only while fetchNews is "none". And the server fetches
    nothing even if asked."""
    base, token = parts(lab.seen[-1])
    status, _, body = get(f"{base}/lab/api/settings/{NOTIFICATION_SETTINGS}", token)
    assert status == 200
    answer = json.loads(body)
    effective = {name: spec.get("default") for name, spec in answer["schema"]["properties"].items()}
    effective.update(answer["settings"])
    assert effective["fetchNews"] == "false"
    assert effective["checkForUpdates"] is False

    assert json.loads(get(f"{base}/lab/api/news", token)[2]) == {"news": []}
    assert json.loads(get(f"{base}/lab/api/update", token)[2]) == {"notification": None}


def test_jupyterlab_and_its_kernels_get_the_project_environment(lab):
    env = lab.server().environ()
    assert {name: env.get(name) for name in ENVIRONMENT_DEFAULTS} == ENVIRONMENT_DEFAULTS
    assert env["JUPYTER_CONFIG_PATH"].split(os.pathsep)[0] == str(CONFIG_DIR)


def test_a_given_jupyter_token_is_the_one_in_the_url(tmp_path):
    env_token = "a-token-given-by-the-environment-0123456789"
    lab = start_lab(tmp_path, "--port", "0", JUPYTER_TOKEN=env_token)
    try:
        assert parts(lab.url())[1] == env_token
    finally:
        stop(lab)


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGINT, signal.SIGTERM]],
                         ids=["Ctrl+C", "SIGTERM", "Ctrl+C, again, then SIGTERM from make"])
def test_a_signal_stops_it_jupyterlab_and_its_kernels_cleanly(tmp_path, signals):
    lab = start_lab(tmp_path, "--port", "0")
    try:
        base, token = parts(lab.url())
        status, _, body = get(f"{base}/api/kernels", token, method="POST")
        assert status == 201, body
        server = lab.server()
        kernels = server.children(recursive=True)
        assert kernels
        for sig in signals:
            lab.proc.send_signal(sig)
        code = lab.proc.wait(timeout=STOP_TIMEOUT_S)
        stderr = lab.proc.stderr.read()
    finally:
        stop(lab)
    assert code == 0, stderr
    assert "Traceback" not in stderr and not stderr.strip(), stderr
    deadline = time.monotonic() + START_TIMEOUT_S
    while lab.read_line(deadline) is not None:
        pass
    assert lab.seen[-1] == "JupyterLab stopped.", lab.seen
    assert not alive(server)
    assert not [kernel for kernel in kernels if alive(kernel)]
    with socket.socket() as sock:  # the port is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(base.rsplit(":", 1)[1])))


def test_a_taken_port_is_an_error_that_names_who_holds_it(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "stack", "lab", "--port", str(port), "--notebook-dir",
                                 str(tmp_path)], env=lab_environment(tmp_path), cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken by pid {os.getpid()}" in result.stderr
    assert "--port 0" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "stack" / "logs" / "jupyterlab.log").exists()  # nothing was started


def processes_over(folder: Path) -> list[psutil.Process]:
    """Live processes whose command line names `folder` (JupyterLab's, given --notebook-dir)."""
    return [process for process in psutil.process_iter(["cmdline"])
            if any(str(folder) in part for part in process.info["cmdline"] or []) and alive(process)]


def test_ctrl_c_while_it_starts_stops_it_cleanly(tmp_path):
    lab = start_lab(tmp_path, "--port", "0")
    try:
        assert lab.read_line(time.monotonic() + START_TIMEOUT_S).startswith("Starting JupyterLab")
        lab.proc.send_signal(signal.SIGINT)
        code = lab.proc.wait(timeout=STOP_TIMEOUT_S)
        stderr = lab.proc.stderr.read()
    finally:
        stop(lab)
    assert code == 0 and not stderr.strip(), stderr
    assert not processes_over(tmp_path / "notebooks")


def test_jupyterlab_ending_by_itself_is_an_error_that_shows_the_end_of_its_log(tmp_path):
    lab = start_lab(tmp_path, "--port", "0")
    try:
        lab.url()
        lab.server().kill()
        code = lab.proc.wait(timeout=STOP_TIMEOUT_S)
        stderr = lab.proc.stderr.read()
    finally:
        stop(lab)
    assert code == 1
    assert "JupyterLab exited by itself (code -9)" in stderr and "Jupyter Server" in stderr, stderr
    assert "Traceback" not in stderr
