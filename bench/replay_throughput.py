"""Replay throughput: `gensar replay` (pydantic events, per-send callbacks, pacing logic)
against a bare kafka-python producer loop sending the same pre-serialised bytes with the
same durability settings (acks=all, idempotent), alternating rounds on one broker.

    .venv/bin/python -m bench.replay_throughput [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.output import write_results
from gensar.data import load
from gensar.machine import machine
from gensar.replay import make_producer, replay, replay_order
from gensar.settings import BUNDLED_DATA, KafkaSettings, Settings
from gensar.topics import INTERACTIONS, ITEMS, SEARCH_EVENTS
from infra.broker import KafkaBroker, ensure_topics
from infra.ports import free_port


def bare_loop(records: list[tuple[str, bytes, bytes]], kafka: KafkaSettings) -> float:
    producer = make_producer(kafka)
    start = time.perf_counter()
    for topic, key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    seconds = time.perf_counter() - start
    producer.close()
    return seconds


def ours(events, kafka: KafkaSettings) -> float:
    return replay(events, kafka, progress=False).seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    events = replay_order(load(BUNDLED_DATA))
    home = Path(tempfile.mkdtemp(prefix="gensar-bench-kafka-"))
    broker = KafkaBroker(home, port=free_port(), controller_port=free_port(),
                         version=Settings().broker.kafka_version, cache_dir=Settings().cache_dir)
    try:
        broker.start()
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="bench.")
        ensure_topics(broker.bootstrap, kafka)
        topic = {"item": ITEMS.full_name(kafka), "interaction": INTERACTIONS.full_name(kafka),
                 "search": SEARCH_EVENTS.full_name(kafka)}
        records = [(topic[e.type], e.key(), e.to_bytes()) for e in events]
        ours(events[:5000], kafka)  # warm-up: connections, JIT in the broker
        times = {"gensar replay": [], "bare kafka-python loop": []}
        for _ in range(args.rounds):
            times["gensar replay"].append(ours(events, kafka))
            times["bare kafka-python loop"].append(bare_loop(records, kafka))
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)

    n = len(events)
    rows = {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                   "events_per_s": n / statistics.median(t)} for name, t in times.items()}
    ratio = rows["gensar replay"]["events_per_s"] / rows["bare kafka-python loop"]["events_per_s"]
    result = {"benchmark": "replay_throughput", "machine": machine(), "events": n, "rounds": args.rounds,
              "kafka_version": Settings().broker.kafka_version, "results": rows,
              "ratio_ours_over_bare": round(ratio, 3), "raw_seconds": times}
    lines = [f"# Replay throughput ({result['machine']['date'][:10]}, {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores)", "",
             f"{n:,} events (bundled MovieLens: catalogue, ratings, tags), {args.rounds} alternating rounds, "
             f"one local Kafka {result['kafka_version']} broker, acks=all + idempotent producer for both.", "",
             "| way | median s | min–max s | events/s (median) |", "|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['median_s']:.2f} | {row['min_s']:.2f}–{row['max_s']:.2f} | {row['events_per_s']:,.0f} |")
    lines += ["", f"Ratio (ours / bare, events/s): **{ratio:.2f}**"]
    write_results("replay_throughput", result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
