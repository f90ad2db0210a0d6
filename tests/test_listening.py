"""Nothing the stack runs listens beyond 127.0.0.1."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from stack.process import PidRecord, group_members

pytestmark = pytest.mark.stack

LISTEN = "0A"


def listening_sockets() -> dict[str, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """inode -> (local address, port) of every listening TCP socket (IPv4 and IPv6) on this machine."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != LISTEN:
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc/net stores the address as host-order 32-bit words.
            ip_bytes = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(ip_bytes)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped  # a JVM's IPv6 socket bound to 127.0.0.1
            found[inode] = (address, int(hex_port, 16))
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def test_every_listening_socket_of_the_stack_is_on_loopback(local_stack):
    listening = listening_sockets()
    started = [s for s in local_stack.services if PidRecord.load(s.pid_file)]
    seen: dict[str, list] = {}
    for service in started:
        for pid in group_members(PidRecord.load(service.pid_file).pid):
            seen.setdefault(service.name, []).extend(listening[i] for i in socket_inodes(pid) & listening.keys())
    servers = [s for s in started if s.listen_port is not None]  # the job is only a client
    assert len(servers) >= 6 and all(seen.get(s.name) for s in servers), f"a server listens nowhere: {seen}"
    beyond_loopback = {name: [a for a in sockets if str(a[0]) != "127.0.0.1"] for name, sockets in seen.items()}
    assert not any(beyond_loopback.values()), beyond_loopback
