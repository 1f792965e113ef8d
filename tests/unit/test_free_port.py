"""``free_port`` hands out listening ports the kernel never gives an outgoing connection.

A port taken by binding port 0 comes from the ephemeral range, so a client connection opened
between choosing it and the service binding it could take it first (a CI run lost a ledger
service to exactly that). Ports drawn outside the range can only be taken by another explicit bind.
"""

from __future__ import annotations

import socket

from services.localservers import ephemeral_range, free_port


def test_free_ports_stay_out_of_the_ephemeral_range_and_can_be_bound() -> None:
    low, high = ephemeral_range()
    for _ in range(50):
        port = free_port()
        assert not low <= port <= high, f"{port} is in the ephemeral range {low}-{high}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_handed_out() -> None:
    taken = []
    try:
        for _ in range(200):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", free_port()))
            sock.listen()
            taken.append(sock)
        held = {s.getsockname()[1] for s in taken}
        assert len(held) == len(taken)
        assert all(free_port() not in held for _ in range(200))
    finally:
        for sock in taken:
            sock.close()
