"""Learner freshness with the DEFAULT refresh schedule: how long from an event's
production until the first promoted adapter that was trained on it.

Everything is real and on loopback: a Kafka broker (KRaft), one stream worker process
(`python -m streams run`), and the learner as `python -m cli.main learner` on its own
local Ray cluster, with `LearnerSettings` defaults (refresh every 2,000 samples, or every
300 s with at least 200; window 4,096, replay 8,192, hold-out 0.15, 3 epochs of 512-token
batches, the results file records which; the collaborative updater too when the learner
has one). `--epochs` overrides only the
refresh's training epochs (a `--quick`-style run); the schedule always stays at its
defaults. The world is the demo's quick bootstrap (`demo.bootstrap`, in a temporary state
directory): the `--items` most active items of the bundled data, an identifier map and a
small base model from the first 70% of their events by time. The rest is the stream.

Method.
1. The catalogue is produced; once the worker has read it and the learner's intake has
   joined its consumer group, the stream's user events are produced one by one at a steady
   `--rate` (`gensar.replay`, acks=all); each event's ack wall time is recorded by event id.
   The events of the first `--measure-seconds` are MEASURED; production continues at the
   same rate after that (so the measured events see a steady load, not the end of a
   stream) until every measured event's sample has been taken by a refresh and one more
   refresh was decided (giving held-out samples their chance to be replayed), or
   `--max-seconds` passed.
2. A read_committed consumer of `training-samples` notes when each event's sample became
   readable (partition, offset).
3. What each refresh trained on: the learner's intake saves its buffer
   (`<state>/learner/buffer.json`, atomically replaced) right before it hands a snapshot to
   the trainer. A watcher hard-links every new version of that file within 50 ms. After the
   run each one is loaded with `learner.samples.SampleBuffer` and the snapshot is rebuilt
   exactly as `learner.service.Intake.snapshot` and `learner.refresh.Refresher.run` do it:
   the recent window in arrival order, its newest `holdout_fraction` held out (NOT trained
   on), the rest plus the seeded replay draw of older samples (`peek_replay`) trained on.
   Each snapshot is matched to its registry version by its manifest (`window`: first/last
   event time of the trained recent part, number replayed; the number of samples rendered
   is compared too); a version without an exactly matching snapshot is reported as
   unverified and counts as covering nothing.
4. Freshness of a measured event = the timestamp of the first `promoted` decision in the
   registry (`decisions.jsonl`) of the first version whose TRAINED set holds its sample,
   minus the event's ack time. Events never covered are counted by why: never taken by a
   decided refresh, held out and not replayed into a promoted version afterwards, or
   trained only into rejected versions. Serving a promoted version adds the replicas'
   registry poll (`poll_s`) and load (see the serving benchmark), not included here.

    .venv/bin/python -m bench.learner_freshness [--rate 20] [--measure-seconds 480] [--items 1000]
                                                [--epochs N] [--max-seconds 1020] [--keep]
    .venv/bin/python -m bench.learner_freshness --analyse /tmp/gensar-freshness-XXXX   # a --keep run again

Results: bench/results/learner_freshness.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PREFIX = "freshbench."


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- watchers ----------------------------------------------------------------------------------


class BufferWatcher(threading.Thread):
    """Hard-links every new version of the learner's buffer file (replaced atomically by
    the intake before each refresh and after each decision)."""

    def __init__(self, path: Path, out: Path):
        super().__init__(daemon=True)
        self.path, self.out = path, out
        self.captures: list[tuple[Path, float]] = []  # (hard link, file mtime)
        self.stopped = threading.Event()
        out.mkdir(parents=True, exist_ok=True)

    def run(self) -> None:
        last = None
        while not self.stopped.is_set():
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                time.sleep(0.05)
                continue
            if (st.st_ino, st.st_mtime_ns) != last:
                dest = self.out / f"buffer-{len(self.captures):04d}.json"
                try:
                    os.link(self.path, dest)
                except FileNotFoundError:
                    continue
                linked = os.stat(dest)  # the inode actually linked (it may be newer than `st`)
                last = (linked.st_ino, linked.st_mtime_ns)
                self.captures.append((dest, linked.st_mtime_ns / 1e9))
            time.sleep(0.05)


class SampleReader(threading.Thread):
    """When each sample became readable to a read_committed consumer."""

    def __init__(self, kafka):
        super().__init__(daemon=True)
        self.kafka = kafka
        self.readable: dict[str, tuple[float, int, int]] = {}  # "task:source event" -> (time, partition, offset)
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from gensar.topics import TRAINING_SAMPLES

        topic = TRAINING_SAMPLES.full_name(self.kafka)
        consumer = KafkaConsumer(**self.kafka.client_options(), group_id=None, enable_auto_commit=False,
                                 isolation_level="read_committed", auto_offset_reset="earliest")
        consumer.assign([TopicPartition(topic, p) for p in range(TRAINING_SAMPLES.partition_count(self.kafka))])
        try:
            while not self.stopped.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    now = time.time()
                    for r in records:
                        sample = json.loads(r.value)
                        self.samples += 1
                        self.readable.setdefault(f"{sample['task']}:{sample['source_event_id']}",
                                                 (now, r.partition, r.offset))
        finally:
            consumer.close()


def scrape_pending(port: int) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gensar_learner_pending_samples":
                return s.value
    return None


def committed_offsets(kafka, group: str) -> dict[int, int]:
    """The learner group's committed offsets on training-samples, by partition."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from gensar.topics import TRAINING_SAMPLES

    admin = KafkaAdminClient(**kafka.client_options(), client_id="freshbench-admin")
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except KafkaError:
        offsets = {}
    finally:
        admin.close()
    topic = TRAINING_SAMPLES.full_name(kafka)
    return {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic}


def group_has_members(kafka, group: str) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(**kafka.client_options(), client_id="freshbench-admin")
    try:
        return bool(admin.describe_groups([group]).get(group, {}).get("members"))
    except KafkaError:
        return False
    finally:
        admin.close()


# --- processes ---------------------------------------------------------------------------------


def stop_tree(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Signal `proc`, wait, then SIGKILL it and every descendant seen before the signal
    (its local Ray cluster: gcs, raylet, workers)."""
    import psutil

    if proc.poll() is not None:
        return
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"pid {proc.pid} did not stop within {timeout:.0f}s: killed")
        proc.kill()
        proc.wait(30)
    _, alive = psutil.wait_procs(family, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


# --- analysis ----------------------------------------------------------------------------------


def rebuild_snapshot(path: Path, holdout_fraction: float) -> dict:
    """A refresh's inputs from the buffer it was saved as (see the module docstring)."""
    from learner.samples import SampleBuffer

    buffer = SampleBuffer()
    buffer.load(path)
    recent = list(buffer.recent)
    replayed = buffer.peek_replay(len(recent))
    cut = max(1, int(len(recent) * (1 - holdout_fraction)))
    train, holdout = recent[:cut], recent[cut:]
    key = lambda s: f"{s.task}:{s.source_event_id}"  # noqa: E731 - the learner's dedup key
    times = [s.timestamp for s in train]
    return {"recent": [key(s) for s in recent], "train": [key(s) for s in train], "holdout": [key(s) for s in holdout],
            "replayed": [key(s) for s in replayed], "first_event_time": min(times, default=None),
            "last_event_time": max(times, default=None)}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.array(values)
    return {"n": len(values), "p50": round(float(np.percentile(a, 50)), 1), "p90": round(float(np.percentile(a, 90)), 1),
            "max": round(float(a.max()), 1), "min": round(float(a.min()), 1), "mean": round(float(a.mean()), 1)}


def analyse(registry_root: Path, captures: list[tuple[Path, float]], holdout_fraction: float, t0: float,
            acked: dict[str, float], measured: set[str], sample_key: dict[str, str],
            readable: dict[str, tuple[float, int, int]]) -> dict:
    from learner.registry import LocalArtifactStore, Registry

    registry = Registry(LocalArtifactStore(registry_root))
    decisions = registry.decisions()
    promoted_at: dict[str, float] = {}
    final: dict[str, str] = {}
    for d in decisions:
        if d.status == "promoted":
            promoted_at.setdefault(d.version, d.timestamp)
        if d.status in ("promoted", "rejected"):
            final.setdefault(d.version, d.status)
    decided_at: dict[str, float] = {}
    for d in decisions:
        if d.status in ("promoted", "rejected"):
            decided_at.setdefault(d.version, d.timestamp)
    snapshots = []
    for path, mtime in captures:
        snap = rebuild_snapshot(path, holdout_fraction)
        if snap["recent"]:  # an empty recent window: the save after a decision, not a snapshot
            snapshots.append({**snap, "saved_at": mtime, "file": path.name})
    versions, used = [], set()
    for manifest, latest in registry.versions():
        w = manifest.window
        match = next((i for i, s in enumerate(snapshots) if i not in used
                      and s["first_event_time"] == w.first_event_time and s["last_event_time"] == w.last_event_time
                      and len(s["replayed"]) == w.replayed), None)
        row = {"version": manifest.version, "status": final.get(manifest.version, latest.status),
               "reason": latest.reason[:160], "refresh_seconds": round(manifest.refresh_seconds or 0, 1),
               "samples_in_manifest": w.samples, "replayed_in_manifest": w.replayed,
               "decided_at_s": round(decided_at[manifest.version] - t0, 1) if manifest.version in decided_at else None,
               "snapshot": None}
        if match is not None:
            used.add(match)
            s = snapshots[match]
            trained = len(s["train"]) + len(s["replayed"])
            row["snapshot"] = {"file": s["file"], "saved_at_s": round(s["saved_at"] - t0, 1), "recent": len(s["recent"]),
                               "trained_recent": len(s["train"]), "held_out": len(s["holdout"]),
                               "replayed": len(s["replayed"]), "trained_total": trained,
                               "all_rendered": trained == w.samples}
            if manifest.version in decided_at:
                row["snapshot_to_decision_s"] = round(decided_at[manifest.version] - s["saved_at"], 1)
            readable_times = [readable[k][0] for k in s["recent"] if k in readable]
            if readable_times:  # how long the oldest / median sample of this snapshot had been waiting
                row["snapshot"]["oldest_sample_wait_s"] = round(s["saved_at"] - min(readable_times), 1)
                row["snapshot"]["median_sample_wait_s"] = round(s["saved_at"] - statistics.median(readable_times), 1)
        versions.append((row, snapshots[match] if match is not None else None))

    # Per measured event: the first promoted version whose trained set holds its sample.
    first_taken: dict[str, tuple[str, float, bool]] = {}  # key -> (version, snapshot time, held out)
    covered: dict[str, tuple[str, float, bool]] = {}  # key -> (version, promotion time, via replay)
    only_rejected: set[str] = set()
    for row, snap in versions:
        if snap is None or row["version"] not in final:
            continue
        held = set(snap["holdout"])
        for k in snap["recent"]:
            first_taken.setdefault(k, (row["version"], snap["saved_at"], k in held))
        trained_recent = set(snap["train"])
        for k in [*snap["train"], *snap["replayed"]]:
            if final[row["version"]] == "promoted":
                covered.setdefault(k, (row["version"], promoted_at[row["version"]], k not in trained_recent))
            else:
                only_rejected.add(k)
    fresh, wait, refresh, ready = [], [], [], []
    why_not = {"no_sample": 0, "never_taken_by_a_decided_refresh": 0, "held_out_not_replayed_into_a_promoted_version": 0,
               "trained_only_into_rejected_versions": 0, "other": 0}
    via_replay = 0
    for event_id in measured:
        k = sample_key.get(event_id)
        if k is None or k not in readable:
            why_not["no_sample"] += 1
            continue
        if k in covered:
            version, at, replayed = covered[k]
            fresh.append(at - acked[event_id])
            via_replay += replayed
            ready.append(readable[k][0] - acked[event_id])
            if not replayed:
                wait.append(first_taken[k][1] - readable[k][0])
                refresh.append(at - first_taken[k][1])
        elif k not in first_taken:
            why_not["never_taken_by_a_decided_refresh"] += 1
        elif first_taken[k][2]:
            why_not["held_out_not_replayed_into_a_promoted_version"] += 1
        elif k in only_rejected:
            why_not["trained_only_into_rejected_versions"] += 1
        else:
            why_not["other"] += 1
    rows = [row for row, _ in versions]
    return {"versions": rows,
            "decided": sum(1 for r in rows if r["status"] in ("promoted", "rejected")),
            "promoted": sum(1 for r in rows if r["status"] == "promoted"),
            "rejected": sum(1 for r in rows if r["status"] == "rejected"),
            "unverified_versions": [r["version"] for r in rows if r["snapshot"] is None],
            "buffer_saves_captured": len(captures), "snapshots_captured": len(snapshots),
            "freshness_s": percentiles(fresh),
            "covered_via_replay": via_replay,
            "never_covered": sum(why_not.values()), "never_covered_by_reason": why_not,
            "components_s": {
                "ack_to_sample_readable": percentiles(ready),
                "sample_readable_to_snapshot": percentiles(wait),
                "snapshot_to_promotion": percentiles(refresh)},
            "refresh_seconds_manifest": percentiles([r["refresh_seconds"] for r in rows if r["status"] != "candidate"]),
            "snapshot_to_decision_s": percentiles([r["snapshot_to_decision_s"] for r in rows
                                                   if "snapshot_to_decision_s" in r])}


# --- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="user events per second")
    parser.add_argument("--measure-seconds", type=float, default=480.0, help="events produced in this first span are measured")
    parser.add_argument("--max-seconds", type=float, default=1020.0, help="at most this long from the first event to stopping")
    parser.add_argument("--items", type=int, default=1000, help="the bootstrap's catalogue: the N most active items")
    parser.add_argument("--epochs", type=float, default=None, help="override the refresh's training epochs (default: the learner's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory (logs, registry)")
    parser.add_argument("--analyse", type=Path, default=None, help="only analyse a kept run directory again")
    args = parser.parse_args()
    if args.analyse:
        finish(args.analyse)
        return

    root = Path(tempfile.mkdtemp(prefix="gensar-freshness-"))
    state = root / "state"
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"})  # library switches
    from gensar.layout import Layout
    layout = Layout.under(state, cache=root / "cache")  # given to every part here and, as variables, to the learner
    from demo.bootstrap import BASE_NAME, ensure_base_model, ensure_identifiers, prepare_world
    from demo.settings import QUICK
    from gensar.replay import make_producer, replay
    from gensar.settings import BUNDLED_DATA, BrokerSettings, KafkaSettings, Settings
    from infra.broker import KafkaBroker, ensure_topics
    from infra.ports import free_port
    from learner.samples import consumer_group
    from learner.settings import LearnerSettings
    from streams.process import WorkerProcess

    started = time.time()
    timings: dict[str, float] = {}
    git = {"commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
           "dirty": subprocess.run(["git", "status", "--short", "learner", "streams", "gensar", "demo"], cwd=REPO,
                                   capture_output=True, text=True).stdout.splitlines()}
    demo = QUICK.model_copy(update={"items": args.items, "qdrant": True, "replay_events": None})
    world = prepare_world(BUNDLED_DATA, state, demo)
    idmap = ensure_identifiers(world, layout, demo, log)
    ensure_base_model(world, idmap, layout, demo, log)
    timings["bootstrap_s"] = round(time.time() - started, 1)
    log(f"bootstrap: {len(world.ds.items):,} items, {len(world.bootstrap):,} bootstrap events, "
        f"{len(world.stream):,} stream events ({timings['bootstrap_s']:.0f}s)")

    broker = KafkaBroker(root / "kafka", port=free_port(), controller_port=free_port(),
                         version=BrokerSettings().kafka_version, cache_dir=Settings().cache_dir)
    worker = learner = producer = None
    threads: list = []
    metrics_port = free_port()
    learner_env = {"GENSAR_LEARNER__METRICS_PORT": str(metrics_port)}
    if args.epochs is not None:
        learner_env["GENSAR_LEARNER__TRAINING__EPOCHS"] = str(args.epochs)
    settings = LearnerSettings(**{"metrics_port": metrics_port,
                                  **({"training": {"epochs": args.epochs}} if args.epochs is not None else {})})
    acked: dict[str, float] = {}
    measured: set[str] = set()
    sample_key: dict[str, str] = {}
    pending_series: list[tuple[float, float]] = []
    stop_reason = "?"
    restarts = {"streams": 0, "learner": 0}
    try:
        status = broker.start()
        kafka = KafkaSettings(bootstrap_servers=status.bootstrap, topic_prefix=PREFIX)
        ensure_topics(status.bootstrap, kafka)
        worker = WorkerProcess(kafka, root / "streams").start()
        replay(list(world.ds.items.values()), kafka, progress=False)
        worker.wait_processed(len(world.ds.items), timeout_s=300)
        env = {**os.environ, **layout.environment(), **learner_env, "GENSAR_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
               "GENSAR_KAFKA__TOPIC_PREFIX": PREFIX, "RAY_ADDRESS": ""}

        def start_learner() -> subprocess.Popen:
            with open(root / "learner.log", "ab") as learner_log:
                return subprocess.Popen([sys.executable, "-m", "cli.main", "learner", "--base", BASE_NAME,
                                         "--data", str(world.data_dir)], env=env, stdout=learner_log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                        cwd=REPO)

        learner = start_learner()
        group = consumer_group(kafka)
        deadline = time.monotonic() + 420
        while not group_has_members(kafka, group):
            if learner.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the learner did not join its consumer group:\n"
                                   + (root / "learner.log").read_text(errors="replace")[-4000:])
            time.sleep(1)
        timings["stack_up_s"] = round(time.time() - started - timings["bootstrap_s"], 1)
        log(f"broker {status.bootstrap}, worker pid {worker.process.pid}, learner pid {learner.pid} joined "
            f"({timings['stack_up_s']:.0f}s)")

        watcher = BufferWatcher(layout.learner_buffer, root / "captures")
        reader = SampleReader(kafka)
        threads = [watcher, reader]
        for t in threads:
            t.start()
        producer = make_producer(kafka, linger_ms=0)
        events = world.stream
        n_measure = min(len(events), int(args.rate * args.measure_seconds))
        need: dict[int, int] | None = None  # per partition: past the last measured sample
        decided_when_taken: int | None = None
        last_check = 0.0
        t0 = time.time()
        i = 0
        from learner.registry import LocalArtifactStore, Registry
        registry = Registry(LocalArtifactStore(layout.registry))
        while True:
            now = time.time()
            if i < len(events) and now >= t0 + i / args.rate:
                e = events[i]
                replay([e], kafka, producer=producer, progress=False)
                acked[e.event_id] = time.time()
                sample_key[e.event_id] = f"{'rec' if e.type == 'interaction' else 'search'}:{e.event_id}"
                if i < n_measure:
                    measured.add(e.event_id)
                i += 1
                continue
            if now - last_check >= 5:
                last_check = now
                # A child that died is restarted once or twice, as a supervisor would (both resume
                # from their committed state); the restarts are reported with the results.
                if learner.poll() is not None:
                    if restarts["learner"] >= 2:
                        raise RuntimeError("the learner exited:\n" + (root / "learner.log").read_text(errors="replace")[-4000:])
                    restarts["learner"] += 1
                    log(f"the learner exited with code {learner.returncode}: restarting it")
                    learner = start_learner()
                if worker.process.poll() is not None:
                    if restarts["streams"] >= 2:
                        raise RuntimeError("the stream worker exited:\n" + worker.log_tail())
                    restarts["streams"] += 1
                    log(f"the stream worker exited with code {worker.process.returncode}: restarting it")
                    worker.start()
                if (pending := scrape_pending(metrics_port)) is not None:
                    pending_series.append((round(now - t0, 1), pending))
                decided = len({d.version for d in registry.decisions() if d.status in ("promoted", "rejected")})
                if i >= n_measure and need is None:
                    seen = [reader.readable.get(sample_key[e]) for e in measured]
                    if all(seen) or now - acked[events[n_measure - 1].event_id] > 60:
                        need = {}
                        for s in filter(None, seen):
                            need[s[1]] = max(need.get(s[1], 0), s[2] + 1)
                        log(f"measured: {n_measure:,} events, {sum(map(bool, seen)):,} samples readable")
                if need is not None and decided_when_taken is None:
                    committed = committed_offsets(kafka, group)
                    if all(committed.get(p, 0) >= o for p, o in need.items()):
                        decided_when_taken = decided
                        log(f"every measured sample taken by a decided refresh ({decided} decided); one more")
                if decided_when_taken is not None and decided > decided_when_taken:
                    stop_reason = "every measured sample taken by a decided refresh, and one more refresh decided"
                    break
                if now - t0 > args.max_seconds:
                    stop_reason = f"--max-seconds {args.max_seconds:.0f} reached"
                    break
                if int(now - t0) % 60 < 5:
                    log(f"t={now - t0:.0f}s produced {i:,}, samples readable {len(reader.readable):,}, "
                        f"learner pending {pending_series[-1][1] if pending_series else '?'}, decided {decided}")
            time.sleep(min(0.05, max(0.0, t0 + i / args.rate - time.time())) if i < len(events) else 0.5)
        t_end = time.time()
        timings["replay_s"] = round(t_end - t0, 1)
        log(f"stopping: {stop_reason} (t={t_end - t0:.0f}s, {i:,} events produced)")
    except BaseException:
        log(f"failed; logs kept in {root}")
        raise
    finally:
        for t in threads:
            t.stopped.set()
        if producer is not None:
            producer.close()
        if learner is not None:
            stop_tree(learner, signal.SIGINT, 90)
        if worker is not None:
            worker.stop()
        broker.stop()
    for t in threads:
        t.join(10)

    timings["total_s"] = round(time.time() - started, 1)  # to the end of the run, before the analysis
    from gensar.machine import machine

    raw = {"machine": machine(), "t0": t0, "acked": acked, "measured": sorted(measured), "sample_key": sample_key,
           "readable": reader.readable, "captures": [(p.name, mtime) for p, mtime in watcher.captures],
           "pending_series": pending_series, "timings": timings, "restarts": restarts, "stop_reason": stop_reason, "started": started,
           "args": vars(args), "argv": sys.argv, "git": git, "settings": settings.model_dump(),
           "world": {"items": len(world.ds.items), "bootstrap_events": len(world.bootstrap),
                     "stream_events": len(world.stream), "bootstrap": demo.model_dump(),
                     "base_model": "demo.bootstrap quick recipe (model.recipe.train_gensar, default architecture)"}}
    (root / "raw.json").write_text(json.dumps(raw))
    try:
        finish(root)
    except BaseException:
        log(f"analysis failed; the run is kept in {root} (rerun: --analyse {root})")
        raise
    if args.keep:
        log(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def finish(root: Path) -> None:
    """Analyse a finished run (its raw.json, buffer captures, registry) and write the results."""
    from bench.output import write_results
    from gensar.layout import Layout
    from gensar.machine import machine
    from learner.settings import LearnerSettings

    raw = json.loads((root / "raw.json").read_text())
    settings = LearnerSettings(**raw["settings"])
    captures = [(root / "captures" / name, mtime) for name, mtime in raw["captures"]]
    readable = {k: tuple(v) for k, v in raw["readable"].items()}
    stats = analyse(Layout.under(root / "state").registry, captures, settings.holdout_fraction, raw["t0"], raw["acked"],
                    set(raw["measured"]), raw["sample_key"], readable)
    timings = raw["timings"]
    learner_lines = [line for line in (root / "learner.log").read_text(errors="replace").splitlines()
                     if "refresh r" in line or "collaborative" in line or "Error" in line]
    args = raw["args"]
    result = {
        "benchmark": "learner_freshness", "machine": raw.get("machine") or machine(), "git": raw["git"],
        "command": " ".join([".venv/bin/python -m bench.learner_freshness", *raw["argv"][1:]]),
        "rate_events_per_s": args["rate"], "measure_seconds": args["measure_seconds"],
        "produced_events": len(raw["acked"]), "measured_events": len(raw["measured"]),
        "produced_rate_achieved": round(len(raw["acked"]) / max(1e-9, timings["replay_s"]), 2),
        "stop_reason": raw["stop_reason"], "restarts": raw["restarts"], "world": raw["world"],
        "learner_settings": settings.model_dump(), "epochs_overridden": args["epochs"] is not None,
        "timings": timings, **stats,
        "learner_pending_series": raw["pending_series"], "learner_log": learner_lines[-60:],
    }
    lines = markdown(result)
    write_results("learner_freshness", result, lines)
    print("\n".join(lines))


def markdown(r: dict) -> list[str]:
    m, f, s = r["machine"], r["freshness_s"], r["learner_settings"]
    comp = r["components_s"]
    lines = [f"# Learner freshness ({m['date'][:10]}, {m['cpu']}, {m['cores']} cores, no GPU)", "",
             f"Default schedule (refresh every {s['refresh_every_samples']:,} samples or {s['refresh_every_seconds']:.0f} s "
             f"with at least {s['min_samples']}; window {s['window']:,}, replay {s['replay']:,}, hold-out "
             f"{s['holdout_fraction']}, {s['training']['epochs']} epochs"
             f"{' (overridden)' if r['epochs_overridden'] else ''}). Real broker, one stream worker, the learner on "
             f"its own local Ray; {r['world']['items']:,}-item bundled catalogue, demo quick base model. "
             f"{r['produced_events']:,} events produced at {r['rate_events_per_s']:.0f}/s "
             f"(achieved {r['produced_rate_achieved']}/s), the first {r['measured_events']:,} measured. "
             f"Stopped: {r['stop_reason']}.", "",
             "| freshness (ack -> promotion of the first version trained on it) | p50 s | p90 s | max s | events |",
             "|---|---|---|---|---|",
             f"| measured events covered by a promoted version | {f.get('p50', '-')} | {f.get('p90', '-')} | "
             f"{f.get('max', '-')} | {f['n']:,} |", "",
             f"Never covered by the end of the run: {r['never_covered']:,} of {r['measured_events']:,} "
             f"({', '.join(f'{k.replace(chr(95), chr(32))} {v}' for k, v in r['never_covered_by_reason'].items() if v) or 'none'}); "
             f"covered only through a later refresh's replay draw (they were held out first): "
             f"{r['covered_via_replay']:,}. A held-out sample is trained only if a later replay draw picks it "
             f"(about recent/reservoir of them per refresh), so this count depends on how long the run goes on.", "",
             f"Refreshes: {r['decided']} decided, {r['promoted']} promoted, {r['rejected']} rejected; "
             f"refresh (train + gate + publish, manifest) p50 {r['refresh_seconds_manifest'].get('p50', '-')} s "
             f"[{r['refresh_seconds_manifest'].get('min', '-')}-{r['refresh_seconds_manifest'].get('max', '-')}], "
             f"snapshot -> decision p50 {r['snapshot_to_decision_s'].get('p50', '-')} s.", "",
             "| component (events trained from the recent window) | p50 s | p90 s | max s |", "|---|---|---|---|"]
    for name, c in comp.items():
        lines.append(f"| {name.replace('_', ' ')} | {c.get('p50', '-')} | {c.get('p90', '-')} | {c.get('max', '-')} |")
    lines += ["", "| version | status | snapshot at s | recent | trained (recent + replayed) | held out | "
              "oldest sample waited s | refresh s | decided at s |", "|---|---|---|---|---|---|---|---|---|"]
    for v in r["versions"]:
        sn = v["snapshot"] or {}
        lines.append(f"| {v['version']} | {v['status']} | {sn.get('saved_at_s', '?')} | {sn.get('recent', '?')} | "
                     f"{sn.get('trained_recent', '?')} + {sn.get('replayed', '?')} | {sn.get('held_out', '?')} | "
                     f"{sn.get('oldest_sample_wait_s', '?')} | {v['refresh_seconds']} | {v['decided_at_s']} |")
    if r["unverified_versions"]:
        lines += ["", f"Versions without a matching captured snapshot (not counted as covering anything): "
                      f"{', '.join(r['unverified_versions'])}."]
    if any(r["restarts"].values()):
        lines += ["", f"Restarted during the run (a child process exited; supervisor-style restart): {r['restarts']}."]
    lines += ["", f"Times are seconds from the first produced event. Wall: bootstrap {r['timings']['bootstrap_s']} s, "
                  f"stack up {r['timings'].get('stack_up_s')} s, replay + drain {r['timings'].get('replay_s')} s, "
                  f"total {r['timings']['total_s']} s. Command: `{r['command']}`."]
    return lines


if __name__ == "__main__":
    main()
