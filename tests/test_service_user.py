"""The services run as an unprivileged user when root starts them (stack/service_user.py), as the images do."""

from __future__ import annotations

import getpass
import os
import stat
from pathlib import Path

import pytest

from stack.config import load_config
from stack.service_user import (
    ServiceUser,
    ServiceUserError,
    blocked_directory,
    check_reachable,
    grant_passage,
    hand_over,
    service_user,
)
from tests.fixtures.local_stack import users_of_services

STRANGER = ServiceUser("stranger", uid=54321, gid=54321)  # owns nothing here, in no group of ours
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root starts services as another user")


def tree(tmp_path: Path, mode: int) -> Path:
    """tmp_path/a/b/c in `mode`, tmp_path itself open to pass (pytest makes its own directories 0700)."""
    grant_passage(tmp_path, STRANGER)
    leaf = tmp_path / "a" / "b" / "c"
    leaf.mkdir(parents=True)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", leaf):
        directory.chmod(mode)
    return leaf


def test_a_directory_without_search_permission_for_others_blocks_the_way(tmp_path):
    leaf = tree(tmp_path, 0o755)
    (tmp_path / "a" / "b").chmod(0o750)
    assert blocked_directory(leaf, STRANGER) == tmp_path / "a" / "b"
    assert blocked_directory(tmp_path / "a", STRANGER) is None


@as_root
def test_the_owner_and_the_group_are_judged_by_their_own_bits(tmp_path):
    leaf = tree(tmp_path, 0o700)
    os.chown(tmp_path / "a", STRANGER.uid, 0)
    os.chown(tmp_path / "a" / "b", 0, STRANGER.gid)
    (tmp_path / "a" / "b").chmod(0o710)
    assert blocked_directory(leaf, STRANGER) == leaf  # a (owner rwx) and b (group x) let it pass; c does not


def test_grant_passage_opens_only_what_blocks_and_only_for_search(tmp_path):
    leaf = tree(tmp_path, 0o700)
    (tmp_path / "a").chmod(0o711)
    assert grant_passage(leaf / "not-made-yet", STRANGER) == [tmp_path / "a" / "b", leaf]
    assert blocked_directory(leaf, STRANGER) is None
    assert stat.S_IMODE(leaf.stat().st_mode) == 0o701  # search, not list
    assert grant_passage(leaf, STRANGER) == []


def test_no_user_switch_without_root_or_without_a_user(monkeypatch):
    assert service_user(load_config(environ={"STACK_RUN_AS": ""})) is None
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert service_user(load_config(environ={})) is None


@as_root
def test_a_missing_user_is_refused_with_what_to_do():
    with pytest.raises(ServiceUserError, match=r"user 'no-such-user-here'.*run `make setup`.*STACK_RUN_AS="):
        service_user(load_config(environ={"STACK_RUN_AS": "no-such-user-here"}))


@as_root
def test_an_unreachable_stack_is_refused_naming_the_directory(tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    cfg = load_config(environ={"STACK_DIR": str(hidden / "stack")})
    grant_passage(tmp_path, STRANGER)
    with pytest.raises(ServiceUserError, match=rf"cannot reach {hidden}/stack: {hidden} \(mode drwx------\).*"
                                               rf"chmod o\+x {hidden}"):
        check_reachable(cfg, STRANGER)


@as_root
def test_hand_over_gives_the_runtime_state_but_not_the_secrets_nor_the_pid_files(tmp_path):
    cfg = load_config(environ={"STACK_DIR": str(tmp_path / "stack"), "STACK_INSTALL_DIR": str(tmp_path / "parts")})
    for path in (cfg.data_dir / "kafka" / "meta.properties", cfg.conf_dir / "mosquitto.passwd",
                 cfg.secrets_file, cfg.pids_dir / "kafka.pid", cfg.install_dir / "jvm" / "kafka.jar"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    hand_over(cfg, STRANGER)
    owners = {p.relative_to(tmp_path).as_posix(): p.stat().st_uid for p in tmp_path.rglob("*")}
    handed = {p for p, uid in owners.items() if uid == STRANGER.uid}
    assert handed == {"stack/data", "stack/data/kafka", "stack/data/kafka/meta.properties", "stack/logs",
                      "stack/health", "stack/conf/mosquitto.passwd", "parts/ivy"}


@pytest.mark.stack
def test_every_service_runs_as_the_services_user_and_the_supervisor_as_the_launcher(local_stack):
    users = users_of_services(local_stack)
    launcher = getpass.getuser()
    expected = local_stack.cfg.run_as if os.geteuid() == 0 and local_stack.cfg.run_as else launcher
    assert users.pop("supervisor") == {launcher}
    assert users and all(owners == {expected} for owners in users.values()), users
