"""`python -m sql` and `sql.client.cursor` when there is no SQL endpoint: one clear error, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from runtime.settings import REPO_ROOT
from runtime.waiting import port_open, wait_until
from sql.client import SqlUnavailable, cursor


def run_sql(port: int, *options: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SQL_")}
    env.update(SQL_HOST="127.0.0.1", SQL_PORT=str(port))
    return subprocess.run([sys.executable, "-m", "sql", *options, "select 1"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def assert_clean_error(result: subprocess.CompletedProcess, port: int) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: cannot reach the SQL endpoint at 127.0.0.1:{port} ("), result.stderr
    assert "make up" in result.stderr
    assert result.stdout == ""


@pytest.fixture
def http_server(free_ports) -> Iterator[int]:
    """A port that accepts TCP but speaks HTTP, not Thrift (and waits for a request line that never comes)."""
    port = free_ports(1)[0]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 15, "http.server listening",
                   abort=lambda: "http.server exited" if server.poll() is not None else None)
        yield port
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def closing_server() -> Iterator[int]:
    """A port that accepts each connection and closes it at once."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_nothing_listening_is_one_line_and_exit_1(free_ports):
    port = free_ports(1)[0]
    result = run_sql(port)
    assert_clean_error(result, port)
    assert "Connection refused" in result.stderr


def test_a_listener_that_speaks_no_thrift_is_given_up_after_the_timeout(http_server):
    started = time.monotonic()
    result = run_sql(http_server, "--timeout-s", "2")
    assert_clean_error(result, http_server)
    assert "no answer within 2 s" in result.stderr
    assert time.monotonic() - started < 20


def test_cursor_raises_sql_unavailable_a_connection_error(closing_server):
    expected = rf"127\.0\.0\.1:{closing_server} \(.+\): is the stack up\?"
    with pytest.raises(SqlUnavailable, match=expected) as caught, cursor("127.0.0.1", closing_server, timeout_s=5):
        pytest.fail("no session can be open")
    assert isinstance(caught.value, ConnectionError)


def test_a_bad_timeout_is_a_usage_error(free_ports):
    result = run_sql(free_ports(1)[0], "--timeout-s", "nan")
    assert result.returncode == 2
    assert "--timeout-s: 'nan' is not a finite number of seconds > 0" in result.stderr
