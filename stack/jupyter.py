"""`make lab` (`python -m stack lab`): JupyterLab over the lab notebooks, in the foreground until Ctrl+C.

What it prints is short: where Jupyter's own log goes, then, once JupyterLab really answers, the one URL to open
(with its token) on the last line. Ctrl+C, SIGTERM or the terminal closing stops JupyterLab and its kernels
(exit code 0); if JupyterLab ends by itself, the end of its log is shown (exit code 1).

- Address: `--ip` (default: the stack's `host`, 127.0.0.1, STACK_HOST) and `--port` (default: the stack's
  `lab_port`, 8888, STACK_LAB_PORT; stack/stack.toml). A taken port is an error that names the process holding it
  when it can be seen; `--port 0` asks for any free port. Jupyter's own port retries are off: it never moves to
  another port by itself.
- Token: JUPYTER_TOKEN if set, else a new one each start (`secrets.token_urlsafe`). Jupyter gets it through its
  environment, not its command line, which every user of the machine can read.
- Jupyter's log: `logs/jupyterlab.log` under the stack's directory, readable by its owner only (it shows the token).
- Ready means answering: GET /api/status with the token returns 200, awaited with a deadline (`--timeout`,
  default: the stack's `ready_timeout_s`).
- Quiet: `stack/jupyter_config/` comes first on JUPYTER_CONFIG_PATH: no news feed and no update check on the
  server, and the notification settings default to "never", so JupyterLab does not ask "Would you like to get
  notified about official Jupyter news?". The environment also disables MLflow's telemetry in the kernels
  (runtime.settings.ENVIRONMENT_DEFAULTS).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import psutil

from runtime.settings import REPO_ROOT, with_environment_defaults
from runtime.waiting import NotReady, wait_until
from stack.config import StackConfig
from stack.process import PidRecord, start_time_of, stop_group

CONFIG_DIR = Path(__file__).resolve().parent / "jupyter_config"
NOTEBOOKS = REPO_ROOT / "notebooks"
LOG_NAME = "jupyterlab.log"
# Ctrl+C, `kill`/`make` passing its own on, and the terminal closing: each stops JupyterLab the same way.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE_S = 30.0  # after SIGTERM, how long JupyterLab may take to shut its kernels down before it is killed
LOG_LINES_ON_ERROR = 15
# Straight to the server: a proxy from the environment must not stand between us and 127.0.0.1.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0..65535; 0 picks a free one)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ip", metavar="ADDRESS",
                        help="address to listen on (default: the stack's host setting, STACK_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=_port, metavar="N",
                        help="port to listen on (default: the stack's lab_port setting, STACK_LAB_PORT, 8888); "
                             "0 picks a free one. A taken port is an error.")
    parser.add_argument("--notebook-dir", type=Path, default=NOTEBOOKS, metavar="DIR",
                        help="the folder JupyterLab opens (default: the repository's notebooks/)")
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help="how long to wait for JupyterLab to answer (default: the stack's ready_timeout_s, 120)")


def _address(ip: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    family, _, _, _, address = socket.getaddrinfo(ip, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return family, address


def _try_bind(ip: str, port: int) -> int:
    """Bind `ip:port` as a server would (SO_REUSEADDR, as Jupyter's Tornado does) and let go; the port bound."""
    family, address = _address(ip, port)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        return sock.getsockname()[1]


def _holder(port: int) -> str:
    """Which process listens on `port`, as far as this user may see."""
    with suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                with suppress(psutil.Error):
                    process = psutil.Process(conn.pid)
                    command = " ".join(" ".join(process.cmdline()).split()) or process.name()
                    return f"pid {conn.pid} ({command[:120]})"
                return f"pid {conn.pid}"
    return "another process (not one this user can see)"


def _url_host(ip: str) -> str:
    if ip in ("", "0.0.0.0"):
        return "127.0.0.1"
    if ip == "::":
        return "[::1]"
    return f"[{ip}]" if ":" in ip else ip


def _answers(base_url: str, token: str) -> bool:
    request = urllib.request.Request(f"{base_url}/api/status", headers={"Authorization": f"token {token}"})
    with _DIRECT.open(request, timeout=2) as response:
        return response.status == 200


def _open_log(log_file: Path) -> int:
    """The log file, for appending, readable by its owner only: Jupyter's log shows the token."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _log_tail(log_file: Path, offset: int) -> str:
    """The last lines Jupyter wrote since `offset`, indented, to show why it failed."""
    with suppress(OSError), log_file.open("rb") as fh:
        fh.seek(offset)
        lines = fh.read().decode(errors="replace").splitlines()[-LOG_LINES_ON_ERROR:]
        return "\n".join("  " + line for line in lines)
    return ""


def _say(text: str, error: bool = False) -> None:
    """Print, unless the terminal is gone (closed: SIGHUP), which must not stop the clean-up."""
    with suppress(OSError):
        print(text, file=sys.stderr if error else sys.stdout, flush=True)


def _wait_for_stop(proc: subprocess.Popen, wake_fd: int, stops: list[int]) -> bool:
    """Block until a stop signal arrives (True) or JupyterLab exits by itself (False). The signal handlers only
    note the signal (an exception raised from a handler can land anywhere, even where it is lost); the wake-up fd
    ends the select, and JupyterLab's pidfd does when it exits."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: look at the process each second instead
        pidfd = None
    watched, timeout_s = ([wake_fd], 1.0) if pidfd is None else ([wake_fd, pidfd], None)
    try:
        while not stops and proc.poll() is None:
            select.select(watched, [], [], timeout_s)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return bool(stops)


def run_lab(cfg: StackConfig, args: argparse.Namespace) -> int:
    """Start JupyterLab over the lab notebooks; once it answers, print the one URL to open (with its token) as the
    last line, and run until Ctrl+C or SIGTERM, which stop it and its kernels (exit code 0). A taken port is an
    error (exit code 1) that names the process holding it; --port 0 picks a free port."""
    ip = args.ip or cfg.host
    notebook_dir = args.notebook_dir.expanduser().resolve()
    timeout_s = args.timeout or cfg.ready_timeout_s
    if not notebook_dir.is_dir():
        print(f"error: {notebook_dir} is not a folder (--notebook-dir)", file=sys.stderr)
        return 2
    port = cfg.lab_port if args.port is None else args.port
    try:
        port = _try_bind(ip, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"error: port {port} on {ip} is taken by {_holder(port)}.\nStop that, or choose another port: "
                  f"python -m stack lab --port N (--port 0: any free port), or STACK_LAB_PORT=N make lab",
                  file=sys.stderr)
        else:
            print(f"error: cannot listen on {ip}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_urlsafe(32)
    env = with_environment_defaults()
    env["JUPYTER_TOKEN"] = token
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(filter(None, [str(CONFIG_DIR), os.environ.get("JUPYTER_CONFIG_PATH")]))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={ip}", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", "--ServerApp.base_url=/", f"--ServerApp.root_dir={notebook_dir}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    base_url = f"http://{_url_host(ip)}:{port}"
    log_file = cfg.logs_dir / LOG_NAME

    stops: list[int] = []  # the stop signals received; the handlers do nothing else
    previous = {sig: signal.signal(sig, lambda signum, _frame: stops.append(signum)) for sig in STOP_SIGNALS}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous_wakeup = signal.set_wakeup_fd(wake_w)
    proc: subprocess.Popen | None = None
    try:
        fd = _open_log(log_file)
        offset = os.lseek(fd, 0, os.SEEK_END)
        try:
            os.write(fd, f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
            print(f"Starting JupyterLab on {base_url} over {notebook_dir}; its log: {log_file}", flush=True)
            # Its own session: Ctrl+C in the terminal reaches this process only, which then stops JupyterLab.
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, env=env,
                                    cwd=REPO_ROOT, start_new_session=True)
        finally:
            os.close(fd)
        try:
            wait_until(lambda: _answers(base_url, token), timeout_s, f"JupyterLab on {base_url}",
                       abort=lambda: "stop asked" if stops else
                       None if proc.poll() is None else f"it exited (code {proc.returncode})")
        except NotReady as exc:
            if not stops:
                _say(f"error: {exc}; the end of its log ({log_file}):\n{_log_tail(log_file, offset)}", error=True)
                return 1
        else:
            print(f"JupyterLab is ready (Ctrl+C stops it; the stack keeps running); open:\n"
                  f"{base_url}/lab?token={token}", flush=True)
            if not _wait_for_stop(proc, wake_r, stops):
                _say(f"error: JupyterLab exited by itself (code {proc.returncode}); the end of its log ({log_file}):"
                     f"\n{_log_tail(log_file, offset)}", error=True)
                return 1
        _say("\nStopping JupyterLab and its kernels ...")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            killed = stop_group(PidRecord(proc.pid, start_time_of(proc.pid) or "?"), grace_s=STOP_GRACE_S)
            proc.poll()  # stop_group reaped it; this tells the Popen object so
            _say(f"JupyterLab did not stop within {STOP_GRACE_S:.0f} s of SIGTERM: killed it" if killed
                 else "JupyterLab stopped.")
        signal.set_wakeup_fd(previous_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
