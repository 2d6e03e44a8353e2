"""infra without a broker: the ports it hands out are free, distinct, and never from the
ranges the kernel or Ray give out without being asked (a client socket took such a port in
CI); the cluster ids it formats a broker with are ones Kafka's storage tool accepts."""

import base64
import socket

from infra.broker import new_cluster_id
from infra.ports import RAY_WORKER_PORTS_END, _ephemeral_start, free_port


def test_free_ports_are_distinct_bindable_and_outside_implicit_ranges():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(RAY_WORKER_PORTS_END < port < _ephemeral_start() for port in ports)
    with socket.socket() as server:  # the last one can be listened on at once
        server.bind(("127.0.0.1", ports[-1]))
        server.listen()


def test_a_port_held_by_a_listener_is_skipped(monkeypatch):
    monkeypatch.setattr("infra.ports.random.sample", lambda ports, k: list(ports)[:k])  # lowest port first
    first = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", first + 1))
        held.listen()
        assert free_port() == first + 2


def test_cluster_ids_are_kafka_uuids_that_never_read_as_an_option():
    ids = [new_cluster_id() for _ in range(2000)]  # a plain random id starts with "-" 1 time in 64
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
