"""infra.ray_local: a local Ray cluster listens on the loopback interface only, and another
process joins it there through RAY_ADDRESS (as the demo's learner joins the demo's cluster)."""

import os
import subprocess
import sys

import psutil
import pytest
import ray

from infra.ray_local import ensure_ray, is_loopback

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
JOIN = "import ray; from infra.ray_local import ensure_ray; ensure_ray(); print(ray.get(ray.remote(lambda: 'joined').remote()))"


@pytest.fixture
def local_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ensure_ray(num_cpus=1)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_a_local_cluster_listens_on_loopback_only_and_is_joined_there(local_ray):
    assert is_loopback(local_ray), local_ray
    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker process is up and listening too
    listening = {(process.name(), conn.laddr.ip, conn.laddr.port)
                 for process in psutil.Process().children(recursive=True)
                 for conn in process.net_connections(kind="tcp") if conn.status == psutil.CONN_LISTEN}
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, names
    assert all(ip in LOOPBACK for _, ip, _ in listening), sorted(listening)

    # A fresh process told only the address (not how this one configured Ray) joins and runs a task.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"RAY_ADDRESS": local_ray}
    joined = subprocess.run([sys.executable, "-c", JOIN], env=env, capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0 and joined.stdout.strip().endswith("joined"), joined.stderr[-2000:]


def test_only_loopback_addresses_count_as_loopback():
    assert all(map(is_loopback, ["127.0.0.1:6379", "localhost:6379", "ray://127.0.0.1:10001", "[::1]:6379"]))
    assert not any(map(is_loopback, ["10.0.0.5:6379", "ray://gensar-head-svc:10001", "auto"]))
