"""The launcher's ports for a server started by tests and benchmarks (imem_serve.launcher.free_ports)."""

import socket
from pathlib import Path

from imem_serve.launcher import free_ports


def test_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        ports = free_ports(3)
        assert len(set(ports)) == 3 and all(1024 <= port < low for port in ports)
        held = []
        try:
            for port in ports:
                held.append(socket.socket())
                held[-1].bind(("127.0.0.1", port))
        finally:
            for s in held:
                s.close()

