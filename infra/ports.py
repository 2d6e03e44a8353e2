"""Free TCP ports for the local services (broker, Serve, stream workers, status page).

`bind(0)` hands out a port from the kernel's ephemeral range: the range it also draws from
for the local end of every outgoing connection (Kafka clients, Ray's gRPC channels). Between
choosing such a port and the service binding it, a client socket can take it: CI saw Ray
Serve's proxy fail with "Failed to bind to address '127.0.0.1:39153'". We choose from the
ports below the ephemeral range and above Ray's worker ports (10002-19999), which nothing
takes without asking for them by number.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

RAY_WORKER_PORTS_END = 19999
LINUX_EPHEMERAL_START = 32768  # the default of net.ipv4.ip_local_port_range
_handed_out: set[int] = set()  # two services of one process never get the same port


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux
        return LINUX_EPHEMERAL_START


def free_port(host: str = "127.0.0.1") -> int:
    """A port no socket on `host` holds now, outside the ranges handed out implicitly."""
    low, high = RAY_WORKER_PORTS_END + 1, _ephemeral_start() - 1
    for port in random.sample(range(low, high + 1), min(1000, high - low + 1)):
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:  # taken
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port on {host} in {low}-{high}")
