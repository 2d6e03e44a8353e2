"""A real single-node Apache Kafka broker in KRaft mode (combined broker + controller).

The official jars come from Maven Central through `infra/kafka/pom.xml`; Maven keeps them
in ~/.m2 and we cache the resolved classpath, so only the first start needs the network.
The broker binds to 127.0.0.1, keeps its data under `home`, and runs detached from the
starting process (a pid file tracks it), so `gensar infra up` returns and `down` stops it.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from gensar.settings import KafkaSettings
from gensar.topics import ALL_TOPICS, TopicSpec

KAFKA_DIR = Path(__file__).parent / "kafka"


class BrokerError(RuntimeError):
    pass


def new_cluster_id() -> str:
    """A random cluster id as Kafka's own Uuid.randomUuid makes it: URL-safe base64 of 16
    bytes, never starting with "-" (the storage tool would read it as an option: 1 start
    in 64 failed that way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def resolve_classpath(version: str, cache_dir: Path) -> str:
    """The broker's runtime classpath, resolved by Maven once per Kafka version."""
    cached = cache_dir / f"kafka-{version}.classpath"
    if cached.exists():
        classpath = cached.read_text().strip()
        if all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return classpath
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    cmd = ["mvn", "-q", "-B", "-f", str(KAFKA_DIR / "pom.xml"), f"-Dkafka.version={version}",
           "dependency:build-classpath", f"-Dmdep.outputFile={tmp}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(f"Maven could not resolve the Kafka {version} jars:\n{result.stdout}{result.stderr}")
    os.replace(tmp, cached)
    return cached.read_text().strip()


@dataclass
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    home: Path


class KafkaBroker:
    def __init__(self, home: Path, *, port: int, controller_port: int, version: str, cache_dir: Path,
                 heap: str = "512m"):
        self.home = Path(home)
        self.port, self.controller_port = port, controller_port
        self.version, self.cache_dir, self.heap = version, cache_dir, heap

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _pid_file(self) -> Path:
        return self.home / "broker.pid"

    def _properties(self) -> str:
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.home / 'data'}",
            # One node: internal topics cannot be replicated.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # Our topics are created explicitly with their settings; typos must not create new ones.
            "auto.create.topics.enable=false",
            "group.initial.rebalance.delay.ms=0",
            "num.partitions=1",
            "",
        ])

    def pid(self) -> int | None:
        """The broker's pid while it lives (a reused pid or a zombie does not count)."""
        try:
            pid = int(self._pid_file.read_text())
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return None
        # The cmdline is briefly empty while the java launcher re-executes itself.
        return pid if not cmdline or b"kafka.Kafka" in cmdline else None

    def accepts_clients(self, timeout: float = 5.0) -> bool:
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(timeout * 1000),
                                     client_id="gensar-infra-probe")
        except KafkaError:
            return False
        try:
            admin.describe_cluster()
            return True
        except KafkaError:
            return False
        finally:
            admin.close()

    def status(self) -> BrokerStatus:
        pid = self.pid()
        return BrokerStatus(pid is not None and self.accepts_clients(), pid, self.bootstrap, self.home)

    def start(self, timeout: float = 90.0) -> BrokerStatus:
        """Start the broker unless it runs already; return once it accepts clients."""
        if self.pid() is None:
            self._launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise BrokerError(f"the broker exited during start-up; see {self.home / 'server.log'}:\n{self._log_tail()}")
            if self.accepts_clients(timeout=2.0):
                return self.status()
            time.sleep(0.5)
        raise BrokerError(f"the broker did not accept clients within {timeout:.0f}s:\n{self._log_tail()}")

    def _launch(self) -> None:
        classpath = resolve_classpath(self.version, self.cache_dir)
        self.home.mkdir(parents=True, exist_ok=True)
        props = self.home / "server.properties"
        props.write_text(self._properties())
        java = ["java", f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
                f"-Dkafka.logs.dir={self.home}",
                f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.yaml'}", "-cp", classpath]
        if not (self.home / "data" / "meta.properties").exists():
            fmt = subprocess.run([*java, "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(props)],
                                 capture_output=True, text=True)
            if fmt.returncode != 0:
                raise BrokerError(f"formatting the KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        with open(self.home / "stdout.log", "ab") as out:
            proc = subprocess.Popen([*java, "kafka.Kafka", str(props)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._pid_file.write_text(str(proc.pid))

    def stop(self, timeout: float = 60.0, *, hard: bool = False) -> bool:
        """Stop the broker (SIGTERM: a controlled shutdown; `hard`: SIGKILL). Returns
        whether a broker was running."""
        pid = self.pid()
        if pid is None:
            self._pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pid() is not None:
            try:  # reap it if we are its parent
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline += 10
            time.sleep(0.2)
        self._pid_file.unlink(missing_ok=True)
        return True

    def _log_tail(self, lines: int = 30) -> str:
        for name in ("server.log", "stdout.log"):
            path = self.home / name
            if path.exists():
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def ensure_topics(bootstrap: str, kafka: KafkaSettings, specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> list[str]:
    """Create the missing topics with their declared settings; return the names created.
    An existing topic with another partition count is an error, not silently accepted."""
    admin = KafkaAdminClient(**{**kafka.client_options(), "bootstrap_servers": bootstrap}, client_id="gensar-infra")
    try:
        existing = set(admin.list_topics())
        created = []
        for spec in specs:
            name = spec.full_name(kafka)
            if name in existing:
                described = admin.describe_topics([name])[0]
                partitions = len(described["partitions"])
                if partitions != spec.partition_count(kafka):
                    raise BrokerError(f"topic {name} has {partitions} partitions, "
                                      f"the declaration says {spec.partition_count(kafka)}")
                continue
            try:
                admin.create_topics([NewTopic(name, spec.partition_count(kafka), kafka.replication_factor,
                                              topic_configs=dict(spec.config))])
                created.append(name)
            except TopicAlreadyExistsError:  # created concurrently
                pass
        _wait_until_visible(admin, {spec.full_name(kafka): spec.partition_count(kafka) for spec in specs})
        return created
    finally:
        admin.close()


def _wait_until_visible(admin: KafkaAdminClient, partitions: dict[str, int], timeout: float = 60.0) -> None:
    """Topic creation returns before every broker's metadata shows the topic (a loaded
    machine makes that visible): wait until each topic has all its partitions."""
    deadline = time.monotonic() + timeout
    while True:
        described = {t["name"]: t for t in admin.describe_topics(list(partitions))}
        missing = [name for name, count in partitions.items()
                   if described.get(name, {}).get("error_code", 1) != 0
                   or len(described[name]["partitions"]) != count]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics not visible with all partitions after {timeout:.0f}s: {', '.join(missing)}")
        time.sleep(0.2)
