"""The ports tests give their servers: never from the kernel's ephemeral range, where every
Thespian actor binds its own listening port and might take one between choice and use."""

from __future__ import annotations

import socket

from ports import _ephemeral_start, free_port, free_ports


def test_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    ports = [*free_ports(5), free_port(), free_port()]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= p < _ephemeral_start() for p in ports)
    for port in ports:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
