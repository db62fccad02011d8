"""Free TCP ports on 127.0.0.1, for servers and Thespian admins a test starts.

Import as ``from ports import free_port`` (pytest puts tests/ on sys.path).

Chosen below the kernel's ephemeral range, never by binding port 0: a port the kernel hands
out is released here and only bound later by the server, and meanwhile every Thespian actor
binds a listening port of its own from that range. One that took it answers an HTTP scrape
by accepting and never replying (a CI run's metrics scrape timed out on exactly that).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000
_given: set[int] = set()
_shuffler = random.Random()  # of its own: a test's seeded random stream is left as it is


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now, none handed out before by this process."""
    candidates = [p for p in range(LOWEST, _ephemeral_start()) if p not in _given]
    _shuffler.shuffle(candidates)  # (another test process picks from the same range)
    chosen = [p for p in candidates[: n * 20] if _bindable(p)][:n]
    if len(chosen) < n:
        raise RuntimeError(f"fewer than {n} free ports between {LOWEST} and {_ephemeral_start()}")
    _given.update(chosen)
    return chosen


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    return free_ports(1)[0]
