"""The running system of the demo, all on loopback: the Kafka broker, Ray (one local
cluster shared by the learner and Serve), the stream worker and the learner as child
processes, the Serve app. `Stack` is a context manager: leaving it, by the end of the demo,
an error or Ctrl-C, stops everything it started: the learner and the stream worker (each
commits only what it finished, so nothing is lost), then Serve and Ray, the broker last."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from gensar.artifacts import write_file
from gensar.layout import Layout
from gensar.settings import BrokerSettings, KafkaSettings, Settings
from infra.broker import KafkaBroker, ensure_topics
from infra.ports import free_port
from learner.samples import consumer_group
from learner.settings import LearnerSettings

from demo.settings import DemoSettings

MAX_RESTARTS = 3  # child restarts per demo run
PORTS = ("broker", "controller", "serve", "streams_web", "streams_metrics", "status")


def ports(root: Path) -> dict[str, int]:
    """Free ports chosen on the first run and kept (the broker's quorum names its port)."""
    path = root / "demo" / "ports.json"
    if path.exists():
        return json.loads(path.read_text())
    chosen = {name: free_port() for name in PORTS}
    write_file(path, json.dumps(chosen))
    return chosen


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, KafkaError):  # not up yet
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready within {timeout:.0f}s")


def learner_environment(s: DemoSettings) -> dict[str, str]:
    """The learner process's settings for this profile, as the variables LearnerSettings reads."""
    prior = dict(prior_cases=s.prior_refit_cases, prior_min_cases=s.prior_refit_min_cases) \
        if s.prior_refit_cases else dict(prior_pool=0)
    learner = LearnerSettings(refresh_every_samples=s.refresh_every_samples, min_samples=min(200, s.refresh_every_samples),
                              window=s.learner_window, replay=s.learner_replay, refresh_every_seconds=60.0,
                              gate_min_cases=s.gate_min_cases, metrics_port=0, seed=s.seed, **prior)
    env = {f"GENSAR_LEARNER__{k.upper()}": str(v) for k, v in learner.model_dump(include={
        "refresh_every_samples", "min_samples", "window", "replay", "refresh_every_seconds", "gate_min_cases",
        "prior_pool", "prior_cases", "prior_min_cases", "metrics_port", "seed"}).items()}
    env["GENSAR_LEARNER__TRAINING__EPOCHS"] = str(s.learner_epochs)
    return env


class Stack:
    def __init__(self, root: Path, layout: Layout, data_dir: Path, base_name: str, settings: DemoSettings, log):
        self.root, self.data_dir, self.base_name, self.settings, self.log = root, data_dir, base_name, settings, log
        self.layout = layout
        self.ports = ports(root)
        self.broker = KafkaBroker(root / "kafka", port=self.ports["broker"], controller_port=self.ports["controller"],
                                  version=BrokerSettings().kafka_version, cache_dir=Settings().cache_dir)
        self.kafka = KafkaSettings(bootstrap_servers=self.broker.bootstrap)
        self.children: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.restarts = 0
        self.logs = root / "demo" / "logs"
        self.serve_url = f"http://127.0.0.1:{self.ports['serve']}"
        self.streams_url = f"http://127.0.0.1:{self.ports['streams_web']}"
        self.streams_metrics_url = f"http://127.0.0.1:{self.ports['streams_metrics']}/metrics"

    # --- start ----------------------------------------------------------------------------

    def __enter__(self) -> "Stack":
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        status = self.broker.start()
        ensure_topics(status.bootstrap, self.kafka)
        self.log(f"Kafka broker at {status.bootstrap} (data in {status.home})")
        self._spawn("streams", [sys.executable, "-m", "streams", "run"], {
            "GENSAR_STREAMS__WEB_PORT": str(self.ports["streams_web"]),
            "GENSAR_STREAMS__METRICS_PORT": str(self.ports["streams_metrics"])})
        self._start_ray()
        env = learner_environment(self.settings)
        env["RAY_ADDRESS"] = self.ray_address
        self._spawn("learner", [sys.executable, "-m", "cli.main", "learner", "--base", self.base_name,
                                "--data", str(self.data_dir)], env)
        self._start_serve()  # the learner's start overlaps the replica's model loading
        wait_for(lambda: httpx.get(f"{self.streams_url}/users/nobody/history", timeout=1).status_code == 404, 120,
                 "the stream worker's read API")
        wait_for(self.learner_joined, 300, "the learner's sample consumer")
        self.log(f"stream worker at {self.streams_url}, learner (pid {self.children['learner'].pid}) on Ray "
                 f"{self.ray_address}, Serve app at {self.serve_url}")

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.commands[name] = (cmd, env)
        log = open(self.logs / f"{name}.log", "a")
        env = {**os.environ, **self.layout.environment(), "GENSAR_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers, **env}
        self.children[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True)

    def _start_ray(self) -> None:
        import ray

        from infra.ray_local import ensure_ray

        ensure_ray(num_cpus=4)  # logical CPUs: the Serve replica and the learner's actors share 2 cores
        self.ray_address = ray.get_runtime_context().gcs_address

    def _start_serve(self) -> None:
        from ray import serve

        from serving.app import build

        serve.start(http_options={"host": "127.0.0.1", "port": self.ports["serve"]})
        overrides = {"catalogue": str(self.data_dir), "base_model": self.base_name,
                     "streams_url": self.streams_url, "poll_s": 1.0, "dense": False, "replica_cpus": 1.0,
                     "device": "cpu"}
        serve.run(build(overrides, self.layout, self.kafka), name="gensar", route_prefix="/")
        wait_for(lambda: httpx.get(f"{self.serve_url}/readyz", timeout=5).status_code == 200, 300, "the Serve app")

    def learner_joined(self) -> bool:
        """Has the learner's intake joined its consumer group? (Replaying before that would
        leave the whole stream to one late refresh.)"""
        self.alive()
        admin = KafkaAdminClient(**self.kafka.client_options(), client_id="gensar-demo")
        try:
            group = consumer_group(self.kafka)
            return bool(admin.describe_groups([group]).get(group, {}).get("members"))
        finally:
            admin.close()

    def alive(self) -> None:
        """Restart a child process that died, as a supervisor would (both parts resume from
        their committed state); raise after MAX_RESTARTS (its log says why)."""
        for name, child in list(self.children.items()):
            if child.poll() is None:
                continue
            if self.restarts >= MAX_RESTARTS:
                raise RuntimeError(f"the {name} process exited with code {child.returncode}; see {self.logs / name}.log")
            self.restarts += 1
            self.log(f"the {name} process exited with code {child.returncode}: restarting it")
            self._spawn(name, *self.commands[name])

    # --- stop -----------------------------------------------------------------------------

    def __exit__(self, *_exc) -> None:
        # Both at once: each commits only what it finished (the learner after a decision, the
        # worker per transaction), so neither depends on the other stopping first.
        running = {name: child for name, child in self.children.items() if child.poll() is None}
        for name, child in running.items():
            child.send_signal(signal.SIGINT if name == "learner" else signal.SIGTERM)
        for name, child in running.items():
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.log(f"the {name} process did not stop within 60 s: killed")
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        try:
            import ray
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        finally:
            self.broker.stop()
