"""infra.ray_local: a local Ray cluster listens on the loopback interface only."""

import psutil
import pytest
import ray

from infra.ray_local import ensure_ray

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.fixture
def local_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ensure_ray(num_cpus=1)
    yield
    ray.shutdown()


def test_a_local_cluster_listens_on_loopback_only(local_ray):
    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker process is up and listening too
    listening = {(process.name(), conn.laddr.ip, conn.laddr.port)
                 for process in psutil.Process().children(recursive=True)
                 for conn in process.net_connections(kind="tcp") if conn.status == psutil.CONN_LISTEN}
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, names
    assert all(ip in LOOPBACK for _, ip, _ in listening), sorted(listening)
