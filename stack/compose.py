"""The connection variables docker-compose.yml gives its services, read from the file itself.

The project's parts read the same variables everywhere (`.stack/connection.env` on the local stack); under Compose
the hosts are service names. `compose_settings` resolves a service's `environment` (YAML anchors and merges, `${VAR}`
interpolation from `.env`) and, given an address map, rewrites `service:port` to where those services really are:
this is how a test runs the Compose configuration's settings against the local stack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from runtime.settings import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\}")


def load_compose(path: Path = COMPOSE_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` (an unset required name raises)."""

    def substitute(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if variables.get(name):
            return variables[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name} is not set: {arg or 'required by docker-compose.yml'}")

    return INTERPOLATION.sub(substitute, value)


def service_environment(compose: dict, service: str, variables: Mapping[str, str]) -> dict[str, str]:
    """A service's environment as the container gets it."""
    environment = compose["services"][service].get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: interpolate(str(value), variables) for name, value in environment.items()}


def compose_settings(services: list[str], variables: Mapping[str, str],
                     addresses: Mapping[str, str] | None = None, compose: dict | None = None) -> dict[str, str]:
    """The union of the services' environments, with `host:port` rewritten through `addresses`
    (e.g. {"kafka-1:19092": "127.0.0.1:9092"}); a HOST/PORT pair is rewritten together."""
    compose = compose or load_compose()
    settings: dict[str, str] = {}
    for service in services:
        settings.update(service_environment(compose, service, variables))
    return remap(settings, addresses or {})


def remap(settings: dict[str, str], addresses: Mapping[str, str]) -> dict[str, str]:
    mapped = dict(settings)
    for name in settings:
        if name.endswith("_HOST") and f"{name[:-5]}_PORT" in settings:
            port_name = f"{name[:-5]}_PORT"
            target = addresses.get(f"{settings[name]}:{settings[port_name]}")
            if target:
                mapped[name], mapped[port_name] = target.rsplit(":", 1)
        else:
            for address, target in addresses.items():
                mapped[name] = re.sub(rf"(?<![\w.-]){re.escape(address)}(?![\w])", target, mapped[name])
    return mapped
