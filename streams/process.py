"""A stream worker as a child process (`python -m streams run`): what `gensar streams run
--workers N`, the integration tests and the benchmarks start, watch and stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gensar.settings import KafkaSettings
from infra.ports import free_port


@dataclass
class WorkerProcess:
    kafka: KafkaSettings
    state_dir: Path  # GENSAR_STATE_DIR of the child; its store and log go below it
    name: str = "w0"
    web_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)  # extra GENSAR_STREAMS__* settings
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    def start(self) -> "WorkerProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENSAR_")}
        env |= {"GENSAR_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
                "GENSAR_KAFKA__TOPIC_PREFIX": self.kafka.topic_prefix,
                "GENSAR_KAFKA__PARTITIONS": str(self.kafka.partitions),
                "GENSAR_STATE_DIR": str(self.state_dir), **self.env}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams", "run", "--worker-name", self.name, "--web-port", str(self.web_port),
                 "--metrics-port", str(self.metrics_port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample the worker exposes to Prometheus: (name, sorted labels) -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def processed(self) -> float:
        """Source records processed (valid or dead-lettered); 0 while the worker starts."""
        try:
            metrics = self.metrics()
        except OSError:
            return 0.0
        return sum(v for (name, labels), v in metrics.items() if name == "gensar_stream_events_total"
                   and dict(labels)["outcome"] in ("processed", "dead-lettered"))

    def wait_processed(self, at_least: float, timeout_s: float = 120.0, poll_s: float = 0.2) -> float:
        """Block until `at_least` records are processed; return when (time.monotonic())."""
        deadline = time.monotonic() + timeout_s
        while (done := self.processed()) < at_least:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.name} processed {done:.0f} < {at_least:.0f}:\n{self.log_tail()}")
            time.sleep(poll_s)
        return time.monotonic()

    def get(self, path: str) -> tuple[int, dict]:
        """GET from the worker's read API: (status, JSON body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (a clean stop), SIGKILL if that takes too long; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log_tail(self, characters: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""
