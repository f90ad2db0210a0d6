"""Install the JVM parts of the stack from Maven Central, idempotently (the Python half of `make setup`).

- Kafka broker jars and the Kudu server binaries: `mvn package` on runtime/jvm/pom.xml.
- Spark connectors: resolved by `spark-submit --packages` from Maven Central (runtime/jvm/ivysettings.xml) into
  the stack's ivy cache, so later runs need no network.
- Secrets (MQTT password, model access key): generated once.
- As root: the unprivileged user the services run as, and its passage to the code and the stack
  (stack/service_user.py).

Each step is skipped when a stamp file shows it was done for the same pinned versions. The output is one progress
line per step and a summary: Maven's and Ivy's own output is kept out of it unless the tool fails, and then its
last lines are shown.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from runtime.kudu import kudu_environment
from runtime.spark import IVY_SETTINGS, JVM_POM, connector_packages, spark_environment, spark_submit_command
from stack.config import StackConfig
from stack.secrets import ensure_secrets
from stack.service_user import prepare_service_user, switching_user


def _fingerprint(*parts: str | Path) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.read_bytes() if isinstance(part, Path) else part.encode())
    return digest.hexdigest()


def _done(stamp: Path, fingerprint: str) -> bool:
    return stamp.exists() and stamp.read_text() == fingerprint


OUTPUT_TAIL_LINES = 40
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Maven's colour resets, printed even in batch mode


def _run_quietly(command: list[str], env: dict[str, str] | None = None) -> None:
    """Run a tool with its output (Maven's build log, Ivy's line per artifact) captured, not shown.

    On failure the error carries the last `OUTPUT_TAIL_LINES` lines of that output: the tool's own reason.
    """
    result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    if result.returncode != 0:
        tail = _ANSI.sub("", result.stdout).rstrip().splitlines()[-OUTPUT_TAIL_LINES:]
        raise RuntimeError(f"command failed with exit code {result.returncode}: {' '.join(command)}\n"
                           f"its last {len(tail)} lines of output:\n" + "\n".join(f"  | {line}" for line in tail))


def install_jvm_parts(cfg: StackConfig) -> bool:
    """Kafka jars and Kudu binaries via Maven. True if anything was (re)installed."""
    poms = sorted(JVM_POM.parent.rglob("pom.xml"))
    stamp = cfg.install_dir / "jvm" / ".installed"
    fingerprint = _fingerprint(*poms)
    if _done(stamp, fingerprint) and cfg.kafka_libs.is_dir():
        return False
    # Batch mode (no colours, no prompts), errors only (-q), no download lines.
    _run_quietly(["mvn", "-B", "-q", "--no-transfer-progress", "-f", str(JVM_POM),
                  f"-Dstack.home={cfg.install_dir}", "package"])
    _make_kudu_executable(cfg)
    _check_kudu_runs(cfg)
    stamp.write_text(fingerprint)
    return True


def _make_kudu_executable(cfg: StackConfig) -> None:
    """Jars do not keep file modes: mark Kudu's programs executable again."""
    for program in (cfg.kudu_home / "bin").iterdir():
        program.chmod(program.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _check_kudu_runs(cfg: StackConfig) -> None:
    """Fail now, with the loader's message, if a host library Kudu needs is missing."""
    kudu = cfg.kudu_home / "bin" / "kudu"
    result = subprocess.run([str(kudu), "--version"], env=kudu_environment(cfg.kudu_home),
                            capture_output=True, text=True)
    if result.returncode != 0:
        missing = subprocess.run(["ldd", str(kudu)], env=kudu_environment(cfg.kudu_home),
                                 capture_output=True, text=True).stdout
        not_found = [line.strip() for line in missing.splitlines() if "not found" in line]
        raise RuntimeError(f"Kudu does not run here: {result.stderr.strip()} "
                           f"missing libraries: {not_found or 'none reported by ldd'}")


def install_spark_connectors(cfg: StackConfig) -> bool:
    """Resolve the Spark connectors into the ivy cache with spark-submit itself. True if resolved now."""
    packages = connector_packages()
    stamp = cfg.ivy_dir / ".installed"
    fingerprint = _fingerprint(",".join(packages), IVY_SETTINGS)
    if _done(stamp, fingerprint):
        return False
    cfg.ivy_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        noop = Path(tmp) / "resolve_connectors.py"
        noop.write_text("print('Spark connectors resolved')\n")
        command = spark_submit_command(cfg.host, ivy=cfg.ivy_dir, app=[str(noop)], packages=packages, master="local[1]",
                                       conf={"spark.ui.enabled": "false"})
        _run_quietly(command, env=spark_environment(cfg.host))
    stamp.write_text(fingerprint)
    return True


def generate_secrets(cfg: StackConfig) -> bool:
    """Generate the stack's secrets unless they exist. True if generated now."""
    existed = cfg.secrets_file.exists()
    ensure_secrets(cfg.secrets_file)
    return not existed


def install(cfg: StackConfig, installed_before: list[str] | None = None, started_at: float | None = None) -> str:
    """Run every install step; return a one-line summary (including what earlier setup steps installed)."""
    t0 = time.monotonic()
    steps = [
        ("Kafka + Kudu from Maven Central", lambda: install_jvm_parts(cfg)),
        ("Spark connectors (" + ", ".join(connector_packages()) + ")", lambda: install_spark_connectors(cfg)),
        ("secrets (MQTT password, model access key)", lambda: generate_secrets(cfg)),
    ]
    if switching_user(cfg):
        steps.append((f"the services' user ({cfg.run_as}: they run as it when root starts them)",
                      lambda: prepare_service_user(cfg)))
    installed = list(installed_before or [])
    for index, (title, step) in enumerate(steps, start=1):
        print(f"[install {index}/{len(steps)}] {title}", flush=True)
        step_t0 = time.monotonic()
        if step():
            installed.append(f"{title.split(' (')[0]} ({time.monotonic() - step_t0:.0f} s)")
        else:
            print("  already installed", flush=True)
    total = time.time() - started_at if started_at else time.monotonic() - t0
    sizes = _size_mb(cfg.install_dir / "jvm") + _size_mb(cfg.ivy_dir)
    what = "; ".join(installed) if installed else "nothing new"
    return f"setup done in {total:.0f} s; installed: {what}; JVM parts {sizes:.0f} MB in {cfg.install_dir}"


def _size_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum((Path(root) / name).stat().st_size for name in files)
    return total / 2**20
