"""How it scales, part 3 (issue 18): stream workers. 1, 2 and 4 worker processes in one
consumer group over 4 and 8 partitions, each cell on the same backlog replayed into fresh
topics, beside a bare kafka-python consumer reading that backlog (the competing way).

    .venv/bin/python -m bench.scale_streams [--partitions 4 8] [--workers 1 2 4] [--rounds 1] [--limit N]

Per cell: events/s from the first to the last record processed across all workers (their
Prometheus counters, sampled every SAMPLE_S), the lag drain time (workers started -> the
group's committed offsets reach the source topics' end offsets), the CPU seconds of the
workers and of the broker over the processing window, then produce-to-readable-sample
p50/p99 at a steady rate with the workers caught up (as bench.streams_throughput does).

On one small machine every worker, the broker and this driver share the same cores, so the
totals past one worker measure CPU contention: a simulation of a cluster, not one. What a
cluster adds per worker is estimated from events per worker CPU-second (see
cluster_estimates). Writes bench/results/scale_streams.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from matplotlib.figure import Figure

from bench.output import RESULTS, write_png, write_results
from bench.scale_catalogue import cpu_s
from bench.streams_throughput import bare_consume, latencies, percentile
from gensar.data import load
from gensar.machine import machine
from gensar.replay import replay, replay_order
from gensar.settings import BUNDLED_DATA, KafkaSettings, Settings
from infra.broker import KafkaBroker, ensure_topics
from infra.ports import free_port
from streams.app import app_id
from streams.inspect import source_topics
from streams.process import WorkerProcess

SAMPLE_S = 0.25  # counter and lag sampling; each sample scrapes every worker, so not much finer on 2 cores
DRAIN_TIMEOUT_S = 1800


def lag(committed: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> int:
    """Records not yet committed by the group: end offset minus committed offset, summed
    over the partitions (a partition the group never committed counts from 0). The sources
    are written without transactions, so no commit marker takes an offset."""
    return sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items())


class GroupLag:
    """The workers' group lag on the source topics; the end offsets are read once, since
    the backlog is produced before the workers start."""

    def __init__(self, kafka: KafkaSettings):
        settings = Settings(kafka=kafka)
        self.group = app_id(settings)
        self.admin = KafkaAdminClient(**kafka.client_options())
        consumer = KafkaConsumer(**kafka.client_options(), group_id=None, enable_auto_commit=False)
        try:
            self.ends = consumer.end_offsets([TopicPartition(t, p) for t in source_topics(settings)
                                              for p in consumer.partitions_for_topic(t)])
        finally:
            consumer.close()

    def __call__(self) -> int:
        try:
            offsets = self.admin.list_group_offsets({self.group: None}).get(self.group, {})
        except KafkaError:  # no coordinator yet: nothing committed
            offsets = {}
        return lag({tp: o.offset for tp, o in offsets.items()}, self.ends)

    def close(self) -> None:
        self.admin.close()


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the workers were started
    processed: tuple[float, ...]  # per worker, its records processed so far
    worker_cpu_s: tuple[float, ...]  # per worker, user + system CPU seconds so far
    broker_cpu_s: float
    lag: int


def drain(workers: list[WorkerProcess], group_lag: GroupLag, broker_pid: int, started: float) -> list[Sample]:
    """Sample the workers until the group's lag is 0."""
    samples: list[Sample] = []
    while not samples or samples[-1].lag:
        for w in workers:
            if w.process.poll() is not None:
                raise RuntimeError(f"worker {w.name} exited ({w.process.returncode}):\n{w.log_tail()}")
        if time.monotonic() - started > DRAIN_TIMEOUT_S:
            raise TimeoutError(f"lag {samples[-1].lag} after {DRAIN_TIMEOUT_S} s")
        samples.append(Sample(time.monotonic() - started, tuple(w.processed() for w in workers),
                              tuple(cpu_s([w.process.pid]) for w in workers), cpu_s([broker_pid]), group_lag()))
        time.sleep(SAMPLE_S)
    return samples


def summarize(samples: list[Sample], n: int) -> dict:
    """One drain's figures. The window is the first to the last record processed (the last:
    when the summed counters reach their final value, which counts records processed twice:
    a transaction aborted by a rebalance is processed again by the partition's next owner)."""
    total = [sum(s.processed) for s in samples]
    first = next(s for s, c in zip(samples, total) if c >= 1)
    last = next(s for s, c in zip(samples, total) if c >= total[-1])
    all_processing = next((s for s in samples if all(c >= 1 for c in s.processed)), None)
    # Who did the work once every worker is processing: before that, the first worker up works
    # alone, for longer here than in a cluster since the workers start on shared cores.
    since = all_processing or samples[0]
    done = [b - a for a, b in zip(since.processed, samples[-1].processed)]
    seconds = last.t - first.t
    worker_cpu = sum(last.worker_cpu_s) - sum(first.worker_cpu_s)
    broker_cpu = last.broker_cpu_s - first.broker_cpu_s
    return {"events_per_s": round(n / seconds, 1), "per_worker_events_per_s": round(n / seconds / len(first.processed), 1),
            "drain_s": round(next(s.t for s in samples if s.lag == 0), 2),
            "first_record_s": round(first.t, 2),
            "all_processing_s": None if all_processing is None else round(all_processing.t, 2),
            "processing_s": round(seconds, 2), "reprocessed": int(total[-1] - n),
            "busiest_worker_share": round(max(done) / sum(done), 3),
            "worker_cpu_s": round(worker_cpu, 2), "broker_cpu_s": round(broker_cpu, 2),
            "worker_cores": round(worker_cpu / seconds, 3), "broker_cores": round(broker_cpu / seconds, 3),
            "events_per_worker_cpu_s": round(n / worker_cpu, 1), "events_per_broker_cpu_s": round(n / broker_cpu, 1)}


def measure_cell(broker: KafkaBroker, home: Path, events: list, held_back: list, partitions: int, workers: int,
                 tag: str, latency_rate: float) -> dict:
    """Fresh topics, the backlog, the bare consumer, then `workers` worker processes over it."""
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=f"{tag}.", partitions=partitions)
    ensure_topics(broker.bootstrap, kafka)
    replay(events, kafka, progress=False)
    bare_s = bare_consume(kafka, len(events))
    group_lag = GroupLag(kafka)
    started = time.monotonic()
    procs = [WorkerProcess(kafka, home / tag, f"w{i}").start() for i in range(workers)]
    try:
        samples = drain(procs, group_lag, broker.pid(), started)
        delays = latencies(kafka, held_back, latency_rate)
    finally:
        group_lag.close()
        with ThreadPoolExecutor(len(procs)) as pool:  # in parallel: each stop rebalances the rest
            list(pool.map(WorkerProcess.stop, procs))
    return {**summarize(samples, len(events)), "bare_events_per_s": round(len(events) / bare_s, 1),
            "latency_p50_ms": round(percentile(delays, 0.5), 1), "latency_p99_ms": round(percentile(delays, 0.99), 1)}


def aggregate(partitions: int, workers: int, rounds: list[dict]) -> dict:
    """A cell's rounds -> the median of each figure (over the rounds that have it), rounds kept."""
    medians = {k: statistics.median(v) if (v := [r[k] for r in rounds if r[k] is not None]) else None
               for k in rounds[0]}
    return {"partitions": partitions, "workers": workers, **medians, "rounds": rounds}


def cluster_estimates(cells: list[dict]) -> None:
    """Add `cluster_events_per_s` to each cell: one worker's rate on a core of its own (the
    cell's events per worker CPU-second x the cores one worker used alone, in the 1-worker cell
    at that partition count) over the busiest worker's share of the records, since a cluster
    drains when its busiest worker does. The share (once every worker is processing) carries
    what balanced scaling would hide: the catalogue's single partition on one worker, uneven
    partitions, a worker past the partition count getting nothing. Assumes the broker keeps up
    on machines of its own, and a worker's CPU per event does not depend on contention."""
    alone = {c["partitions"]: c["worker_cores"] for c in cells if c["workers"] == 1}
    for c in cells:
        cores = alone.get(c["partitions"])
        c["cluster_events_per_s"] = None if cores is None else round(
            c["events_per_worker_cpu_s"] * cores / c["busiest_worker_share"], 1)


def markdown(result: dict) -> list[str]:
    m, st, cells = result["machine"], result["settings"], result["cells"]
    best = max(cells, key=lambda c: c["events_per_s"])
    one = [c for c in cells if c["workers"] == 1]
    lines = [f"# How it scales: stream workers ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, shared with other work (load average at the start "
             f"{st['load_average_at_start']}); the broker, every worker and this driver on it. Kafka "
             f"{st['kafka_version']}, exactly-once (the default), {st['rounds']} round(s) per cell (medians).", "",
             f"Each cell: the {result['records']:,}-record backlog (bundled MovieLens: the catalogue, then user "
             "events) replayed into fresh topics, the bare kafka-python consumer reading it, then N worker "
             "processes started in one consumer group. events/s: first to last record processed, over all "
             "workers; drain: workers started -> the group's committed offsets at the end offsets (start-up, "
             "group joins, rebalances and table recovery included); reprocessed: records processed twice after a "
             "rebalance aborted their transaction; CPU: user + system seconds in the processing window; latency: "
             f"{st['latency_events']:,} further events at {st['latency_rate']:.0f}/s with the workers caught up, "
             "produce -> sample readable (read_committed).", "",
             f"**On {m['cores']} cores this is a simulation of a cluster**: past one worker the processes compete "
             "for the same cores, so the totals show where this machine's ceiling is, not what a cluster does. "
             "The cluster column estimates that: one worker's rate on a core of its own (events per worker "
             "CPU-second as measured in the cell x the cores one worker used alone at that partition count) over "
             "the busiest worker's share of the records once all workers are processing (a cluster drains when "
             "its busiest worker does; the catalogue's single partition sits on one worker), assuming the broker "
             "keeps up on its own machines and a worker's CPU per event does not depend on contention.", "",
             "| partitions | workers | events/s | per worker | drain s | reprocessed | busiest worker's share | "
             "worker CPU s (cores) | broker cores | "
             "events per worker CPU-s | cluster estimate events/s | latency p50 / p99 ms | bare consumer events/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        cluster = "-" if c["cluster_events_per_s"] is None else f"{c['cluster_events_per_s']:,.0f}"
        lines.append(f"| {c['partitions']} | {c['workers']} | {c['events_per_s']:,.0f} | {c['per_worker_events_per_s']:,.0f} | "
                     f"{c['drain_s']:.1f} | {c['reprocessed']:,.0f} | {c['busiest_worker_share']:.0%} | "
                     f"{c['worker_cpu_s']:.1f} ({c['worker_cores']:.2f}) | "
                     f"{c['broker_cores']:.2f} | "
                     f"{c['events_per_worker_cpu_s']:,.0f} | {cluster} | "
                     f"{c['latency_p50_ms']:.0f} / {c['latency_p99_ms']:.0f} | {c['bare_events_per_s']:,.0f} |")
    lines += ["", f"Ceiling on this machine: {best['events_per_s']:,.0f} events/s ({best['workers']} worker(s), "
              f"{best['partitions']} partitions), with the workers using {best['worker_cores']:.2f} and the broker "
              f"{best['broker_cores']:.2f} of the {m['cores']} cores."]
    if one:
        lines.append("Per worker: one worker alone processes " + ", ".join(
            f"{c['events_per_s']:,.0f} events/s on {c['partitions']} partitions using {c['worker_cores']:.2f} cores"
            for c in one) + "; the broker handles about " + ", ".join(
            f"{c['events_per_broker_cpu_s']:,.0f}" for c in one) + " events per broker CPU-second.")
        widest = [c for c in cells if c["workers"] == max(w["workers"] for w in cells) and c["cluster_events_per_s"]]
        lines.append("What a cluster adds per worker (the estimate at the most workers, divided by them): "
                     + ", ".join(f"{c['cluster_events_per_s'] / c['workers']:,.0f} events/s at "
                                 f"{c['workers']} workers on {c['partitions']} partitions" for c in widest) + ".")
    bare = statistics.median(c["bare_events_per_s"] for c in cells)
    lines.append(f"The bare consumer reads the same backlog at {bare:,.0f} events/s (median over the cells): "
                 f"{bare / best['events_per_s']:.0f}x the ceiling.")
    return lines


def chart(cells: list[dict], path: Path) -> None:
    """events/s against workers (measured, and the cluster estimate dashed) and the drain time,
    one line per partition count. matplotlib's Figure directly, as bench.scale_report does."""
    fig = Figure(figsize=(10, 4))
    rate, drained = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for p in sorted({c["partitions"] for c in cells}):
        row = sorted((c for c in cells if c["partitions"] == p), key=lambda c: c["workers"])
        workers = [c["workers"] for c in row]
        line, = rate.plot(workers, [c["events_per_s"] for c in row], "o-", label=f"{p} partitions, measured")
        estimated = [(c["workers"], c["cluster_events_per_s"]) for c in row if c["cluster_events_per_s"]]
        if estimated:
            rate.plot(*zip(*estimated), "--", color=line.get_color(), alpha=0.6, label=f"{p} partitions, cluster estimate")
        drained.plot(workers, [c["drain_s"] for c in row], "o-", color=line.get_color(), label=f"{p} partitions")
    ticks = sorted({c["workers"] for c in cells})
    rate.set(xlabel="workers", ylabel="events/s", title="throughput (dashed: cluster estimate)", xticks=ticks)
    drained.set(xlabel="workers", ylabel="seconds", title="lag drain (workers started -> lag 0)", xticks=ticks)
    for ax in (rate, drained):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_png(fig, path)


def run(args: argparse.Namespace, broker: KafkaBroker, log=print) -> dict:
    """Every cell of the grid, args.rounds times (rounds outermost, so a slow spell on the
    shared machine does not land on one cell), on a running broker."""
    events = replay_order(load(BUNDLED_DATA), args.limit)
    backlog, held_back = events[:-args.latency_events], events[-args.latency_events:]
    grid = [(p, w) for p in args.partitions for w in args.workers]
    rounds: dict[tuple[int, int], list[dict]] = {cell: [] for cell in grid}
    settings = {**vars(args), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                "kafka_version": Settings().broker.kafka_version, "sample_s": SAMPLE_S}
    home = Path(tempfile.mkdtemp(prefix="gensar-bench-scale-streams-"))  # the workers' stores
    try:
        for r in range(args.rounds):
            for p, w in grid:
                rounds[p, w].append(cell := measure_cell(broker, home, backlog, held_back, p, w, f"r{r}p{p}w{w}",
                                                         args.latency_rate))
                log(f"round {r}, {p} partitions, {w} workers: {cell}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    cells = [aggregate(p, w, rounds[p, w]) for p, w in grid]
    cluster_estimates(cells)
    return {"benchmark": "scale_streams", "machine": machine(), "records": len(backlog), "settings": settings,
            "cells": cells}


def write(result: dict, out_dir: Path, name: str) -> list[str]:
    lines = markdown(result)
    chart(result["cells"], out_dir / f"{name}.png")
    write_results(name, result, lines + ["", f"![events/s and drain time against workers]({name}.png)"], out_dir)
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--partitions", type=int, nargs="+", default=[4, 8], help="partitions of the user-keyed topics")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="only the first N user events (a quick run)")
    p.add_argument("--latency-events", type=int, default=3000, help="events held back from the backlog for latency")
    p.add_argument("--latency-rate", type=float, default=200.0, help="events/s produced while measuring latency")
    p.add_argument("--name", default="scale_streams", help="results name: bench/results/<name>.json, .md, .png")
    return p


def main() -> None:
    args = parser().parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the workers inherit it
    home = Path(tempfile.mkdtemp(prefix="gensar-bench-scale-streams-kafka-"))
    broker = KafkaBroker(home, port=free_port(), controller_port=free_port(),
                         version=Settings().broker.kafka_version, cache_dir=Settings().cache_dir)
    try:
        broker.start()
        result = run(args, broker)
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)
    print("\n".join(write(result, RESULTS, args.name)))


if __name__ == "__main__":
    main()
