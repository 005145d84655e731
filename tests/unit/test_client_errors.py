"""A server that cannot be reached is named as such, however gRPC words it (no server runs here: nothing
listens on the port)."""

import socket
import threading

import pytest

from imem_client.client import Client, ServiceError


@pytest.fixture
def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"grpc://127.0.0.1:{port}"


def test_a_chat_to_a_server_that_is_not_there_says_it_is_unavailable(closed_port_url):
    with Client(closed_port_url, timeout=20) as client, \
            pytest.raises(ServiceError, match=r"the server at 127\.0\.0\.1:\d+ is unavailable"):
        client.chat("c1", "Hello?")


def test_a_memory_operation_to_a_server_that_is_not_there_says_it_is_unavailable(closed_port_url):
    with Client(closed_port_url, timeout=20) as client, pytest.raises(ServiceError, match="is unavailable"):
        client.export("c1")


def test_failed_streams_leave_no_thread_behind(closed_port_url, threads_still_running):
    """Each gRPC stream has a thread that feeds its requests to gRPC; a stream that failed must end it, or a
    client that retries through an outage (a load test, the crash bench) gathers threads until it cannot
    start one."""
    before = set(threading.enumerate())
    with Client(closed_port_url, timeout=20) as client:
        for _ in range(8):
            with pytest.raises(ServiceError):
                client.chat("c1", "Hello?")
    assert not threads_still_running(set(threading.enumerate()) - before)
