"""Free TCP ports on 127.0.0.1, for servers and Thespian admins a test starts.

Import as ``from ports import free_port`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now (all bound at once, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    return free_ports(1)[0]
