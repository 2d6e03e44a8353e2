"""Run one stream worker in the foreground until SIGTERM/SIGINT (a clean stop) or
SIGKILL (what was not committed is processed again, here or on another worker)."""

from __future__ import annotations

import shutil

import faust

from gensar.layout import Layout
from gensar.settings import Settings
from streams.app import StreamApp
from streams.settings import StreamSettings


def run_worker(settings: Settings, streams: StreamSettings) -> None:
    store = Layout.of(settings).stream_store(streams.worker_name)
    if streams.processing_guarantee == "exactly_once" and store.exists():
        # The local store may hold writes of transactions that never committed (a crash,
        # or a stop that Faust could not commit), and samples re-emitted from a store
        # that is ahead would carry shortened histories. The committed changelogs are
        # the truth: rebuild from them.
        shutil.rmtree(store)
    store.mkdir(parents=True, exist_ok=True)
    stream_app = StreamApp(settings, streams)
    stream_app.metrics.serve(streams.metrics_host, streams.metrics_port)
    worker = faust.Worker(stream_app.app, loglevel=streams.log_level, quiet=True)
    worker.execute_from_commandline()  # exits the process when the worker stops
