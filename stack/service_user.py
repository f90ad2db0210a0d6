"""The unprivileged user the services run as when `make up` runs as root, as the images' `USER iot` does.

Root only launches and supervises. Each service is spawned as the `run_as` user (stack.toml; STACK_RUN_AS),
which owns the stack's runtime state (data/, logs/, health/, the generated config files but not the secrets,
and the Spark connector cache that spark-submit writes) and only reads the installed parts and the code. A daemon
that writes where an image would not let it (Spark's `$SPARK_HOME/work`, say) fails here as it would there.

`make setup` (as root) creates the user and lets it pass the directories on the way to the code, the installed
parts and the stack (search permission only, not listing). A launcher that is not root runs the services as
itself, which is unprivileged already.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from runtime.settings import REPO_ROOT
from stack.config import StackConfig


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int


class ServiceUserError(RuntimeError):
    """The services cannot run as the configured user; the message says what to do."""


def switching_user(cfg: StackConfig) -> bool:
    """True when the services are to run as another user: the launcher is root and `run_as` is set."""
    return os.geteuid() == 0 and bool(cfg.run_as)


def service_user(cfg: StackConfig) -> ServiceUser | None:
    """The user to spawn the services as, or None to run them as the launcher itself."""
    if not switching_user(cfg):
        return None
    try:
        entry = pwd.getpwnam(cfg.run_as)
    except KeyError:
        raise ServiceUserError(
            f"the services run as user {cfg.run_as!r} (setting run_as) when started by root, and that user does not "
            "exist: run `make setup` (it creates it), or set STACK_RUN_AS= to run them as root") from None
    return None if entry.pw_uid == 0 else ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def create_service_user(name: str) -> bool:
    """Create `name` as a system user with its own group, no home and no login shell. True if created now."""
    with suppress(KeyError):
        pwd.getpwnam(name)
        return False
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True, text=True)
    return True


def _may_search(directory: Path, user: ServiceUser) -> bool:
    mode = directory.stat()
    if mode.st_uid == user.uid:
        return bool(mode.st_mode & stat.S_IXUSR)
    if mode.st_gid == user.gid:
        return bool(mode.st_mode & stat.S_IXGRP)
    return bool(mode.st_mode & stat.S_IXOTH)


def _way_to(path: Path) -> list[Path]:
    """The directories passed on the way to `path` (itself included if it is one), from the root down."""
    path = path.resolve()
    way = [*reversed(path.parents), path]
    return [d for d in way if d.is_dir()]  # one not made yet will be, by root, open to pass


def blocked_directory(path: Path, user: ServiceUser) -> Path | None:
    """The first directory on the way to `path` that `user` may not pass (no search permission), or None.

    File modes only: an ACL that grants more is not read."""
    return next((d for d in _way_to(path) if not _may_search(d, user)), None)


def grant_passage(path: Path, user: ServiceUser) -> list[Path]:
    """Let `user` pass every directory on the way to `path` (o+x: search, not list); return those changed."""
    changed = []
    for directory in _way_to(path):
        if not _may_search(directory, user):
            directory.chmod(directory.stat().st_mode | stat.S_IXOTH)
            changed.append(directory)
    return changed


def places_to_reach(cfg: StackConfig) -> list[Path]:
    """What the services read or run: the code, the Python that runs it, the installed parts, the stack."""
    return [REPO_ROOT, Path(sys.executable), cfg.install_dir, cfg.dir]


def check_reachable(cfg: StackConfig, user: ServiceUser) -> None:
    """Refuse, saying what to do, when `user` cannot reach what the services need."""
    for place in places_to_reach(cfg):
        blocked = blocked_directory(place, user)
        if blocked is not None:
            raise ServiceUserError(
                f"the services run as user {user.name!r} (setting run_as), which cannot reach {place}: {blocked} "
                f"(mode {stat.filemode(blocked.stat().st_mode)}) does not let it pass. Run `make setup` (it grants "
                f"passage to the code and the stack), `chmod o+x {blocked}`, or set STACK_RUN_AS= to run them as root")


def prepare_service_user(cfg: StackConfig) -> bool:
    """`make setup`'s part: create the services' user and let it reach what they need. True if anything changed."""
    created = create_service_user(cfg.run_as)
    user = service_user(cfg)
    opened = [d for place in places_to_reach(cfg) for d in grant_passage(place, user)] if user else []
    for directory in opened:
        print(f"  let user {cfg.run_as} pass {directory} (o+x: search, not list)", flush=True)
    return created or bool(opened)


def runtime_paths(cfg: StackConfig) -> list[Path]:
    """What the services write: the stack's state, and the connector cache that spark-submit updates."""
    return [cfg.data_dir, cfg.logs_dir, cfg.health_dir, cfg.ivy_dir]


def hand_over(cfg: StackConfig, user: ServiceUser) -> None:
    """Make `user` the owner of the runtime paths and of the generated config files (not the secrets).

    Done before every start, because a service's `prepare` (as root) may have written files since."""
    for path in runtime_paths(cfg):
        path.mkdir(parents=True, exist_ok=True)
    config_files = [p for p in cfg.conf_dir.iterdir() if p.is_file()] if cfg.conf_dir.is_dir() else []
    _chown_all([*runtime_paths(cfg), *config_files], user)


def _chown_all(paths: Iterable[Path], user: ServiceUser) -> None:
    for top in paths:
        _chown(top, user)
        for root, dirs, files in os.walk(top):
            for name in (*dirs, *files):
                _chown(Path(root) / name, user)


def _chown(path: Path, user: ServiceUser) -> None:
    # A file may vanish under a running service (a Kafka segment deleted, a partial file renamed): skip it.
    with suppress(FileNotFoundError):
        if path.lstat().st_uid != user.uid:
            os.chown(path, user.uid, user.gid, follow_symlinks=False)
