#!/usr/bin/env bash
# make setup: install everything the project needs on a fresh Debian/Ubuntu machine, idempotently.
#   1. Debian packages (only those missing): mosquitto, mosquitto-clients, a JDK 17+, Maven, python3-venv, and
#      chromium + chromium-driver (the dashboard's browser test drives them through Selenium)
#   2. Python packages into .venv (pins in pyproject.toml), redone only when pyproject.toml changes
#   3. JVM parts from Maven Central + Spark connectors + secrets: `python -m stack install`
# Needs root or sudo for step 1 only when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
PYTHON=${PYTHON:-python3}
VENV=.venv
installed=()

step() { printf '\n[setup %s] %s\n' "$1" "$2"; step_started=$(date +%s); }
took() { echo "$(( $(date +%s) - step_started )) s"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "error: need root (or sudo) to run: $*" >&2; exit 1
  fi
}

step 1/3 "Debian packages"
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have mosquitto || missing+=(mosquitto)
have mosquitto_passwd || missing+=(mosquitto)
have mosquitto_sub || missing+=(mosquitto-clients)
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1 || true)
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then missing+=(openjdk-17-jdk-headless); fi
have mvn || missing+=(maven)
have chromium || missing+=(chromium)
have chromedriver || missing+=(chromium-driver)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update
  as_root apt-get install -y --no-install-recommends "${missing[@]}"
  installed+=("apt: ${missing[*]} ($(took))")
  # Debian starts a system-wide Mosquitto on port 1883 where systemd runs; the project runs its own broker
  # (password auth, its own persistence) on that port, so the system one we just installed is switched off.
  if [[ " ${missing[*]} " == *" mosquitto "* ]] && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now mosquitto.service && echo "disabled the system mosquitto.service (the stack runs its own)"
  fi
else
  echo "already installed"
fi

step 2/3 "Python packages (.venv, pins in pyproject.toml)"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
  || { echo "error: Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 1; }
stamp="$VENV/.installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "already installed"
else
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  progress=$([ -t 1 ] && echo on || echo off)
  "$VENV/bin/python" -m pip install --progress-bar "$progress" --disable-pip-version-check -q --upgrade pip
  "$VENV/bin/python" -m pip install --progress-bar "$progress" --disable-pip-version-check -e '.[dev]'
  echo "$want" > "$stamp"
  installed+=("Python packages ($(took))")
fi

step 3/3 "JVM parts, Spark connectors, secrets"
# install.py prints the one-line summary of the whole setup, including what the steps above installed.
"$VENV/bin/python" -m stack install --started-at "$started" ${installed[@]+"${installed[@]/#/--installed=}"}
