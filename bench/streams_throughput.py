"""Stream workers: records/s through the Faust pipeline against a bare kafka-python
consumer reading the same topics in the same round, and the end-to-end latency from
producing an event to its training sample being readable (read_committed).

Each round replays the bundled data (catalogue, then user events) into fresh topics as a
backlog; the bare consumer reads it all; then one worker (a real `python -m streams run`
process) processes it, timed from its first processed record to its last. Then, with
the worker caught up, held-back user events are produced at a steady rate while a
read_committed consumer of the samples topic measures each sample's age against its
source record's produce time (the worker copies it into a header).

    .venv/bin/python -m bench.streams_throughput [--rounds 3] [--guarantees exactly_once,at_least_once] [--profile]

--profile adds one untimed exactly-once round on the same backlog with py-spy sampling the
worker (every thread, GIL holders only: where the CPU goes, not waits) and writes
bench/results/streams_profile.{json,md}: the share of samples by package at the leaf frame
and by our own functions anywhere on the stack. py-spy runs through `uv tool run` (it reads
the worker's memory from outside, so the worker runs unchanged).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from bench.output import write_results
from gensar.data import load
from gensar.machine import machine
from gensar.replay import make_producer, replay, replay_order
from gensar.settings import BUNDLED_DATA, KafkaSettings, Settings
from gensar.topics import INTERACTIONS, ITEMS, SEARCH_EVENTS, TRAINING_SAMPLES
from infra.broker import KafkaBroker, ensure_topics
from infra.ports import free_port
from streams.inspect import wait_caught_up
from streams.process import WorkerProcess


def bare_consume(kafka: KafkaSettings, expected: int) -> float:
    """Seconds for a bare kafka-python consumer to read every source record once."""
    consumer = KafkaConsumer(**kafka.client_options(), group_id=None, enable_auto_commit=False,
                             max_poll_records=5000)
    partitions = [TopicPartition(spec.full_name(kafka), p) for spec in (SEARCH_EVENTS, INTERACTIONS, ITEMS)
                  for p in range(spec.partition_count(kafka))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    start, seen = time.perf_counter(), 0
    while seen < expected:
        seen += sum(len(records) for records in consumer.poll(timeout_ms=1000).values())
    seconds = time.perf_counter() - start
    consumer.close()
    return seconds


def latencies(kafka: KafkaSettings, events: list, rate: float) -> list[float]:
    """Produce `events` at `rate`/s; return each sample's produce-to-readable delay (ms)."""
    consumer = KafkaConsumer(**kafka.client_options(), group_id=None, isolation_level="read_committed",
                             enable_auto_commit=False)
    consumer.assign([TopicPartition(TRAINING_SAMPLES.full_name(kafka), p)
                     for p in range(TRAINING_SAMPLES.partition_count(kafka))])
    consumer.seek_to_end()
    delays: list[float] = []
    wanted = sum(1 if e.type == "interaction" else len(set(e.clicked_items)) for e in events)

    def produce() -> None:
        producer = make_producer(kafka, linger_ms=0)
        for i in range(0, len(events), 10):
            replay(events[i:i + 10], kafka, progress=False, producer=producer)
            time.sleep(10 / rate)
        producer.close()

    feeder = threading.Thread(target=produce)
    feeder.start()
    deadline = time.monotonic() + len(events) / rate + 120
    while len(delays) < wanted and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            now_ms = time.time() * 1000
            delays += [now_ms - int(dict(r.headers)["source-timestamp-ms"]) for r in records]
    feeder.join()
    consumer.close()
    if len(delays) < wanted:
        raise RuntimeError(f"only {len(delays)} of {wanted} samples arrived")
    return delays


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--guarantees", default="exactly_once,at_least_once")
    parser.add_argument("--latency-events", type=int, default=3000)
    parser.add_argument("--limit", type=int, default=None, help="only the first N user events (a quick run)")
    parser.add_argument("--latency-rate", type=float, default=200.0, help="events/s produced while measuring latency")
    parser.add_argument("--profile", action="store_true", help="one more exactly-once round under py-spy")
    args = parser.parse_args()
    guarantees = args.guarantees.split(",")

    events = replay_order(load(BUNDLED_DATA), args.limit)
    backlog, held_back = events[:-args.latency_events], events[-args.latency_events:]
    home = Path(tempfile.mkdtemp(prefix="gensar-bench-streams-"))
    broker = KafkaBroker(home / "kafka", port=free_port(), controller_port=free_port(),
                         version=Settings().broker.kafka_version, cache_dir=Settings().cache_dir)
    runs: dict[str, dict[str, list]] = {g: {"faust_s": [], "bare_s": [], "latency_ms": []} for g in guarantees}
    try:
        broker.start()
        for round_ in range(args.rounds):
            for guarantee in guarantees:
                kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=f"b{round_}{guarantee[0]}.")
                ensure_topics(broker.bootstrap, kafka)
                replay(backlog, kafka, progress=False)
                runs[guarantee]["bare_s"].append(bare_consume(kafka, len(backlog)))
                worker = WorkerProcess(kafka, home / f"state-{round_}-{guarantee}",
                                       env={"GENSAR_STREAMS__PROCESSING_GUARANTEE": guarantee}).start()
                try:
                    first = worker.wait_processed(1, timeout_s=180, poll_s=0.05)
                    last = worker.wait_processed(len(backlog), timeout_s=1800, poll_s=0.05)
                    runs[guarantee]["faust_s"].append(last - first)
                    wait_caught_up(Settings(kafka=kafka), timeout_s=300)
                    runs[guarantee]["latency_ms"].append(latencies(kafka, held_back, args.latency_rate))
                finally:
                    worker.stop()
                print(f"round {round_} {guarantee}: faust {len(backlog) / runs[guarantee]['faust_s'][-1]:,.0f}/s, "
                      f"bare {len(backlog) / runs[guarantee]['bare_s'][-1]:,.0f}/s, "
                      f"latency p50 {percentile(runs[guarantee]['latency_ms'][-1], 0.5):.0f} ms", flush=True)
        if args.profile:
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="profile.")
            ensure_topics(broker.bootstrap, kafka)
            replay(backlog, kafka, progress=False)
            profile_report(profiled(kafka, home, len(backlog)), len(backlog))
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)
    report(args, len(backlog), runs)


def profiled(kafka: KafkaSettings, home: Path, n: int) -> tuple[str, float]:
    """py-spy's collapsed stacks of one exactly-once worker over the whole backlog, and the
    seconds it took (first to last record, as timed above, under sampling)."""
    worker = WorkerProcess(kafka, home / "state-profile", env={"GENSAR_STREAMS__PROCESSING_GUARANTEE": "exactly_once"}).start()
    out = home / "profile.txt"
    uv = Path(sys.executable).parent / "uv"
    first = worker.wait_processed(1, timeout_s=180, poll_s=0.05)  # sampled from here: processing, not start-up
    spy = subprocess.Popen([str(uv), "tool", "run", "py-spy", "record", "--pid", str(worker.process.pid), "--rate", str(SAMPLE_RATE),
                            "--gil", "--nonblocking", "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        last = worker.wait_processed(n, timeout_s=3600, poll_s=0.05)
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled on SIGINT
        _, err = spy.communicate(timeout=120)
        worker.stop()
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-2000:]}")
    return out.read_text(), last - first


SAMPLE_RATE = 50  # py-spy samples per second

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Which library a frame's file belongs to: the first of these packages among its folders, or
# of these single-file modules as its name (faust/streams.py is Faust's, not our streams/).
PACKAGES = ("streams", "gensar", "faust", "mode", "aiokafka", "kafka", "rocksdict", "pydantic", "pydantic_core",
            "prometheus_client", "asyncio", "json", "concurrent", "logging")
MODULES = ("selectors", "ssl", "socket", "threading")


ENTRY = {"__main__.py", "cli.py", "worker.py"}  # the worker's entry chain: on every main-thread stack


def package_of(path: str) -> str:
    parts = Path(path).parts
    folder = next((name for name in PACKAGES if name in parts[:-1]), None)
    return folder or next((name for name in MODULES if parts[-1:] == (f"{name}.py",)), "other (stdlib, interpreter)")


def profile_report(profile: tuple[str, float], n: int) -> None:
    stacks, seconds = profile
    by_leaf, ours, total = collections.Counter(), collections.Counter(), 0
    for line in stacks.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [m.groupdict() for m in map(FRAME.match, stack.split(";")) if m]
        total += int(count)
        if frames:
            by_leaf[package_of(frames[-1]["file"])] += int(count)
        own = {f"{Path(f['file']).parent.name}/{Path(f['file']).name}:{f['function']}" for f in frames
               if package_of(f["file"]) in ("streams", "gensar") and f["function"] != "<module>"
               and Path(f["file"]).name not in ENTRY}
        for name in own:
            ours[name] += int(count)
    share = lambda c: round(100 * c / total, 1)  # noqa: E731
    result = {"benchmark": "streams_profile", "machine": machine(), "records": n, "seconds": round(seconds, 1),
              "records_per_s": round(n / seconds), "samples": total, "sampler": f"py-spy record --gil --rate {SAMPLE_RATE}",
              # Samples only come while a thread holds the GIL: the share of the time the worker computes.
              "gil_held_percent": round(100 * total / (seconds * SAMPLE_RATE), 1),
              "leaf_package_percent": {k: share(v) for k, v in by_leaf.most_common()},
              "own_functions_inclusive_percent": {k: share(v) for k, v in ours.most_common(25)}}
    m = result["machine"]
    lines = [f"# Stream worker profile, exactly-once ({m['date'][:10]}, {m['cpu']}, {m['cores']} cores)", "",
             f"One worker over the {n:,}-record backlog of `bench/streams_throughput.md`, sampled by py-spy "
             f"({SAMPLE_RATE}/s, only threads holding the GIL: CPU, not waiting): {total:,} samples in {seconds:.0f} s "
             f"({n / seconds:,.0f} records/s under sampling): a thread held the GIL "
             f"{result['gil_held_percent']}% of the time: the worker is mostly busy in Python on one core, and waits the rest.", "",
             "Where the CPU is, by the package of the innermost frame:", "", "| package | share of samples |", "|---|---|"]
    lines += [f"| {k} | {v}% |" for k, v in result["leaf_package_percent"].items()]
    lines += ["", "Our functions, by the share of samples with them anywhere on the stack (inclusive):", "",
              "| function | inclusive share |", "|---|---|"]
    lines += [f"| `{k}` | {v}% |" for k, v in result["own_functions_inclusive_percent"].items()]
    write_results("streams_profile", result, lines)
    print("\n".join(lines))


def report(args, n: int, runs: dict) -> None:
    rows = {}
    for guarantee, run in runs.items():
        faust = [n / s for s in run["faust_s"]]
        bare = [n / s for s in run["bare_s"]]
        ratios = [f / b for f, b in zip(faust, bare)]
        p50s = [percentile(d, 0.5) for d in run["latency_ms"]]
        p99s = [percentile(d, 0.99) for d in run["latency_ms"]]
        rows[guarantee] = {
            "faust_records_per_s": {"median": statistics.median(faust), "min": min(faust), "max": max(faust)},
            "bare_records_per_s": {"median": statistics.median(bare), "min": min(bare), "max": max(bare)},
            "ratio_faust_over_bare": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
            "latency_p50_ms": {"median": statistics.median(p50s), "min": min(p50s), "max": max(p50s)},
            "latency_p99_ms": {"median": statistics.median(p99s), "min": min(p99s), "max": max(p99s)},
        }
    result = {"benchmark": "streams_throughput", "machine": machine(), "records": n, "rounds": args.rounds,
              "latency_events": args.latency_events, "latency_rate_per_s": args.latency_rate,
              "kafka_version": Settings().broker.kafka_version, "results": rows,
              "raw": {g: {"faust_s": r["faust_s"], "bare_s": r["bare_s"]} for g, r in runs.items()}}
    m = result["machine"]
    lines = [f"# Stream workers: throughput and latency ({m['date'][:10]}, {m['cpu']}, {m['cores']} cores)", "",
             f"{n:,} source records (bundled MovieLens: {n - 9742:,} user events after the 9,742-item catalogue) "
             f"replayed as a backlog, {args.rounds} rounds per guarantee; one worker process, 4 partitions, "
             f"broker on the same machine. Faust: first to last record processed (validation, user state, "
             f"item statistics, one sample per event, changelogs). Bare: kafka-python reading the same records, "
             f"nothing else. Latency: {args.latency_events:,} further events produced at "
             f"{args.latency_rate:.0f}/s, produce time to the sample being readable by a read_committed consumer.",
             "", "| guarantee | Faust records/s (median, min–max) | bare consumer records/s | ratio | "
             "latency p50 ms | latency p99 ms |", "|---|---|---|---|---|---|"]
    for guarantee, row in rows.items():
        f, b, r = row["faust_records_per_s"], row["bare_records_per_s"], row["ratio_faust_over_bare"]
        p50, p99 = row["latency_p50_ms"], row["latency_p99_ms"]
        lines.append(f"| {guarantee} | {f['median']:,.0f} ({f['min']:,.0f}–{f['max']:,.0f}) | "
                     f"{b['median']:,.0f} ({b['min']:,.0f}–{b['max']:,.0f}) | {r['median']:.3f} | "
                     f"{p50['median']:.0f} ({p50['min']:.0f}–{p50['max']:.0f}) | "
                     f"{p99['median']:.0f} ({p99['min']:.0f}–{p99['max']:.0f}) |")
    write_results("streams_throughput", result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
