"""How fast a click shows up in the user's next answer: the real path, end to end on
loopback. A Kafka broker (KRaft), a stream worker (streams: user tables and their read API)
and the Serve application (serving.app) reading user state from that worker. For each of
N fresh users: produce one click on the interactions topic (wait for the broker's ack),
then ask /recommend every 20 ms until the answer is decoded from a history (source
"model" instead of the cold-start "popularity"). Lag = ack -> first such answer, so it
includes the stream worker's processing and commit interval and one serving request.

    .venv/bin/python -m bench.serving_state_lag [--users 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.output import write_results
from bench.serving_load import build_world
from gensar.layout import Layout
from infra.ports import free_port


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready within {timeout:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    import httpx

    from gensar.data import load
    from gensar.events import InteractionEvent
    from gensar.machine import machine
    from gensar.replay import make_producer, replay, replay_order
    from gensar.settings import BUNDLED_DATA, BrokerSettings, KafkaSettings, Settings
    from gensar.topics import INTERACTIONS
    from infra.broker import KafkaBroker, ensure_topics

    root = Path(tempfile.mkdtemp(prefix="gensar-lag-bench-"))
    broker = KafkaBroker(root / "kafka", port=free_port(), controller_port=free_port(), version=BrokerSettings().kafka_version,
                         cache_dir=Settings().cache_dir, heap="512m")
    status = broker.start()
    kafka = KafkaSettings(bootstrap_servers=status.bootstrap, topic_prefix="lagbench.")
    ensure_topics(status.bootstrap, kafka)
    ds = load(BUNDLED_DATA)
    replay(replay_order(ds, limit=0), kafka, progress=False)  # the catalogue only: the workers check items against it
    web_port = free_port()
    env = {**os.environ, "GENSAR_KAFKA__BOOTSTRAP_SERVERS": status.bootstrap, "GENSAR_KAFKA__TOPIC_PREFIX": "lagbench.",
           "GENSAR_STATE_DIR": str(root / "state"), "GENSAR_STREAMS__WEB_PORT": str(web_port),
           "GENSAR_STREAMS__METRICS_PORT": "0"}
    worker = subprocess.Popen([sys.executable, "-m", "streams", "run"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(root / "worker.log", "w"))
    overrides, _, _ = build_world(root / "serving", adapters=1)
    overrides["streams_url"] = f"http://127.0.0.1:{web_port}"  # catalogue from the files (items topic not followed)
    os.environ.update({"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"})
    import ray
    from ray import serve

    from infra.ray_local import ensure_ray
    from serving.app import build

    lags, results = [], {}
    try:
        ensure_ray(num_cpus=2)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(overrides, Layout.under(root / "serving")), name="gensar", route_prefix="/")
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

        def worker_up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{web_port}/users/nobody/history", timeout=1).status_code == 404
            except httpx.HTTPError:
                return False

        wait_for(worker_up, 120, "the stream worker's read API")
        producer = make_producer(kafka, linger_ms=0)
        topic = INTERACTIONS.full_name(kafka)
        items = list(ds.items)
        for u in range(args.users):
            user = f"lag-user-{u}"
            assert client.post("/recommend", json={"user_id": user, "k": 5}).json()["source"] == "popularity"
            click = InteractionEvent(event_id=f"lag-{u}-{time.time_ns()}", timestamp=time.time(), user_id=user,
                                     item_id=items[(u * 97) % len(items)], kind="click")
            producer.send(topic, key=click.key(), value=click.to_bytes()).get(timeout=30)
            acked = time.perf_counter()
            while True:
                answer = client.post("/recommend", json={"user_id": user, "k": 5}).json()
                if answer["source"] == "model":
                    lags.append(time.perf_counter() - acked)
                    break
                if time.perf_counter() - acked > 60:
                    raise TimeoutError(f"the click of {user} did not show up within 60 s")
                time.sleep(0.02)
            print(user, f"{lags[-1] * 1000:.0f} ms", flush=True)
        producer.close()
        client.close()
        results = {"machine": machine(), "users": args.users,
                   "lag_ms": {"p50": round(float(np.percentile(lags, 50)) * 1000, 1),
                              "p90": round(float(np.percentile(lags, 90)) * 1000, 1),
                              "max": round(max(lags) * 1000, 1), "min": round(min(lags) * 1000, 1),
                              "mean": round(statistics.mean(lags) * 1000, 1)},
                   "streams": {"processing_guarantee": "exactly_once (default)", "commit_interval_s": 0.5}}
    finally:
        serve.shutdown()
        ray.shutdown()
        worker.terminate()
        worker.wait(timeout=60)
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    m, lag = results["machine"], results["lag_ms"]
    write_results(
        "serving_state_lag", results,
        f"# Click-to-answer lag ({m['date']})\n\nMachine: {m['cpu']}, {m['cores']} cores (broker, stream worker, Ray and "
        f"the client on it). {args.users} fresh users, one click each; lag = broker ack -> first /recommend answer "
        f"decoded from the new history. Stream worker: exactly-once, commit interval 0.5 s (defaults).\n\n"
        f"| p50 ms | p90 ms | min ms | max ms |\n|---|---|---|---|\n| {lag['p50']} | {lag['p90']} | {lag['min']} | {lag['max']} |\n")


if __name__ == "__main__":
    main()
