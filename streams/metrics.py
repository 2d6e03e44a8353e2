"""Prometheus metrics of one stream worker, in a registry of its own (so several apps can
live in one process, e.g. in tests), served on `metrics_port`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class StreamMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "gensar_stream_events", "Records per topic: consumed and processed, consumed and dead-lettered, or produced.",
            ["topic", "outcome"], registry=self.registry)
        self.dead_letters = Counter(
            "gensar_stream_dead_letters", "Events sent to the dead-letter topic, by reason.", ["reason"],
            registry=self.registry)
        self.lag = Gauge(
            "gensar_stream_consumer_lag", "Records in a source partition not yet processed by this worker.",
            ["topic", "partition"], registry=self.registry)
        self.processing = Histogram(
            "gensar_stream_processing_seconds", "Time to process one consumed record (validation, state, outputs queued).",
            ["topic"], registry=self.registry,
            buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0))

        # Children by label values: looking one up costs more than the increment.
        self._children: dict[tuple, Counter | Histogram] = {}

    def count(self, topic: str, outcome: str, records: int = 1) -> None:
        self._child(self.events, topic, outcome).inc(records)

    def processing_of(self, topic: str) -> Histogram:
        return self._child(self.processing, topic)

    def _child(self, metric: Counter | Histogram, *values: str):
        child = self._children.get((metric, *values))
        if child is None:
            child = self._children[(metric, *values)] = metric.labels(*values)
        return child

    def serve(self, host: str, port: int) -> None:
        if port:
            start_http_server(port, addr=host, registry=self.registry)
