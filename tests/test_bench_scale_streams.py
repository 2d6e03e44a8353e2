"""The stream-worker scale bench (bench.scale_streams, issue 18 part 3): its figures from given
samples and offsets, without a broker; and one tiny run on the real broker (slow)."""

from __future__ import annotations

import json

import pytest
from kafka import TopicPartition

from bench.scale_streams import Sample, aggregate, cluster_estimates, lag, markdown, parser, run, summarize, write

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def test_lag_counts_what_the_group_has_not_committed():
    assert lag({}, {A: 10, B: 0}) == 10  # never committed: from offset 0
    assert lag({A: 4}, {A: 10, B: 3}) == 9
    assert lag({A: 10, B: 3}, {A: 10, B: 3}) == 0


def test_summarize_times_the_window_and_counts_reprocessing():
    samples = [Sample(1.0, (0, 0), (1.0, 1.0), 5.0, 100),
               Sample(2.0, (10, 0), (2.0, 1.5), 6.0, 90),  # the first record
               Sample(3.0, (50, 20), (3.0, 2.5), 7.0, 30),  # both workers processing
               Sample(6.0, (70, 35), (4.0, 3.5), 8.0, 3),  # final count: 105 for 100 records
               Sample(7.0, (70, 35), (4.0, 3.5), 8.0, 0)]  # drained once committed
    s = summarize(samples, 100)
    assert s["processing_s"] == 4.0 and s["events_per_s"] == 25.0 and s["per_worker_events_per_s"] == 12.5
    assert s["first_record_s"] == 2.0 and s["all_processing_s"] == 3.0 and s["drain_s"] == 7.0
    assert s["reprocessed"] == 5 and s["busiest_worker_share"] == 0.571  # 20 of 35 since both process
    assert s["worker_cpu_s"] == 4.0 and s["worker_cores"] == 1.0 and s["events_per_worker_cpu_s"] == 25.0
    assert s["broker_cpu_s"] == 2.0 and s["events_per_broker_cpu_s"] == 50.0


def test_aggregate_takes_medians_and_cluster_estimate_scales_the_lone_worker():
    rounds = [{"events_per_s": 10.0, "all_processing_s": None}, {"events_per_s": 30.0, "all_processing_s": 2.0},
              {"events_per_s": 20.0, "all_processing_s": 4.0}]
    cell = aggregate(4, 2, rounds)
    assert cell["events_per_s"] == 20.0 and cell["all_processing_s"] == 3.0 and cell["rounds"] == rounds
    cells = [{"partitions": 4, "workers": 1, "worker_cores": 0.8, "events_per_worker_cpu_s": 1000.0,
              "busiest_worker_share": 1.0},
             {"partitions": 4, "workers": 8, "worker_cores": 2.0, "events_per_worker_cpu_s": 900.0,
              "busiest_worker_share": 0.25},  # 8 workers on 4 partitions: 4 busy
             {"partitions": 8, "workers": 2, "worker_cores": 1.9, "events_per_worker_cpu_s": 950.0,
              "busiest_worker_share": 0.5}]
    cluster_estimates(cells)
    # the busiest of the 8 does a quarter, at 900 events per CPU-s on the 0.8 cores one used alone
    assert [c["cluster_events_per_s"] for c in cells] == [800.0, 2880.0, None]  # no 1-worker cell at 8


def test_markdown_says_simulation_and_names_the_ceiling():
    cell = {"drain_s": 9.0, "reprocessed": 0, "busiest_worker_share": 0.5, "worker_cpu_s": 8.0, "worker_cores": 0.9, "broker_cores": 0.3,
            "events_per_worker_cpu_s": 1200.0, "events_per_broker_cpu_s": 3000.0, "latency_p50_ms": 300.0,
            "latency_p99_ms": 700.0, "bare_events_per_s": 20000.0}
    cells = [{**cell, "partitions": 4, "workers": 1, "events_per_s": 1000.0, "per_worker_events_per_s": 1000.0},
             {**cell, "partitions": 4, "workers": 2, "events_per_s": 1500.0, "per_worker_events_per_s": 750.0}]
    cluster_estimates(cells)
    result = {"machine": {"date": "2026-12-02", "cpu": "x", "cores": 2}, "records": 1000, "cells": cells,
              "settings": {"load_average_at_start": [1, 1, 1], "kafka_version": "4.1.1", "rounds": 1,
                           "latency_events": 100, "latency_rate": 200.0}}
    text = "\n".join(markdown(result))
    assert "simulation of a cluster" in text and "Ceiling on this machine: 1,500 events/s (2 worker(s)" in text
    assert "| 4 | 2 | 1,500 | 750 |" in text and "1,080 events/s at 2 workers" in text  # 1200 x 0.9 / 0.5 / 2


@pytest.mark.slow
@pytest.mark.integration
def test_tiny_grid_on_the_real_broker(kafka_broker, tmp_path):
    args = parser().parse_args(["--partitions", "2", "--workers", "1", "2", "--limit", "300",
                                "--latency-events", "100", "--name", "tiny"])
    result = run(args, kafka_broker, log=lambda line: None)
    write(result, tmp_path, "tiny")
    assert [(c["partitions"], c["workers"]) for c in result["cells"]] == [(2, 1), (2, 2)]
    for c in result["cells"]:
        assert c["events_per_s"] > 0 and c["drain_s"] >= c["first_record_s"] > 0
        assert c["reprocessed"] >= 0 and c["worker_cpu_s"] > 0 and c["broker_cpu_s"] > 0
        assert 1 / c["workers"] <= c["busiest_worker_share"] <= 1
        assert 0 < c["latency_p50_ms"] <= c["latency_p99_ms"] and c["bare_events_per_s"] > c["events_per_s"]
    assert json.loads((tmp_path / "tiny.json").read_text())["records"] == result["records"]
    text = (tmp_path / "tiny.md").read_text()
    assert "| 2 | 1 |" in text and "| 2 | 2 |" in text and (tmp_path / "tiny.png").stat().st_size > 0
