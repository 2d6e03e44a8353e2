"""The serving scale bench (bench.scale_serving, issue 18 part 4): its world, figures and
report from given numbers, without Ray; and one tiny run on real Ray Serve (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.decoding_latency import random_map
from bench.scale_catalogue import synthetic_catalogue
from bench.scale_serving import (HISTORY, chart, cpu_figures, markdown, parser, run, scaling, search_bodies, write,
                                 write_dataset)
from gensar.data import load
from serving.catalogue import Catalogue


def test_random_map_draws_colliding_ids_again():
    # seed 634 at 3,000 items: the plain draw gives two items the same search id
    ids = tuple(str(i) for i in range(3000))
    rng = np.random.default_rng(634)
    shared = rng.integers(0, 256, (3000, 2))
    plain = np.concatenate([shared, rng.integers(0, 256, (3000, 2))], 1)
    assert len(np.unique(plain, axis=0)) == 2999
    m = random_map(ids, seed=634)  # IdentifierMap refuses colliding ids
    assert len(np.unique(m.search_codes, axis=0)) == 3000
    assert (m.search_codes != plain).any(axis=1).sum() == 1  # only the repeated one moved
    assert np.array_equal(m.search_codes[:, :2], m.rec_codes[:, :2])  # shared levels still shared


def test_dataset_is_what_serving_loads(tmp_path):
    cat = synthetic_catalogue(300)
    histories = write_dataset(cat, tmp_path, users=5)
    ds = load(tmp_path)
    assert len(ds.items) == 300 and len(ds.interactions) == 5 * HISTORY
    served = Catalogue.of(ds)
    assert served.titles["1"] == cat.titles[0]
    assert served.genres["1"] == {g.lower() for g in cat.genres[0]}
    for history in histories:  # each user's items come from one topic
        assert len(history) == HISTORY and len({int(cat.topic[int(i) - 1]) for i in history}) == 1


def test_search_bodies_ask_about_an_item():
    cat = synthetic_catalogue(200)
    bodies = search_bodies(cat, 10)
    assert all(b["k"] == 10 for b in bodies)
    titles, genres = " ".join(cat.titles), {g.lower() for gs in cat.genres for g in gs}
    assert all(w in titles for b in bodies[::2] for w in b["query"].split())  # two title words
    assert all(b["query"].split()[1] in genres for b in bodies[1::2])  # a title word and a genre


def test_cpu_figures_and_scaling():
    assert cpu_figures(200, 10.0, 8.0, 3.0, 1.0, 19.5) == {
        "replica_cores": 0.8, "proxy_cores": 0.3, "driver_cores": 0.1, "machine_cores": 1.95,
        "answers_per_replica_cpu_s": 25.0}
    rows = [{"series": "ours /recommend", "replicas": n, "throughput_rps": rps, "answers_per_replica_cpu_s": per}
            for n, rps, per in ((1, 20.0, 25.0), (2, 30.0, 18.0), (4, 32.0, 10.0))]
    rows.append({"series": "peer faiss HNSW", "replicas": 2, "throughput_rps": 90.0, "answers_per_replica_cpu_s": 150.0})
    scaling(rows)
    assert [r["efficiency"] for r in rows] == [1.0, 0.75, 0.4, None]  # the peer has no 1-replica row
    assert [r["implied_dedicated_rps"] for r in rows] == [25.0, 50.0, 100.0, None]  # N x one replica's per CPU-s


def row(series, replicas, rps, dense=False, machine=1.4):
    return {"series": series, "replicas": replicas, "dense": dense, "start_s": 20.0, "p50_ms": 100.0,
            "p50_spread": [90.0, 110.0], "p99_ms": 300.0, "p99_spread": [250.0, 350.0], "throughput_rps": rps,
            "throughput_spread": [rps - 1, rps + 1], "failed": 0, "replica_cores": 0.9, "proxy_cores": 0.4,
            "driver_cores": 0.2, "machine_cores": machine, "answers_per_replica_cpu_s": round(rps / 0.9, 1)}


def result(rows):
    scaling(rows)
    return {"machine": {"date": "2026-12-02", "cpu": "x", "cores": 2, "memory_gib": 23.5},
            "load_average_at_start": [1.0, 1.0, 1.0], "rows": rows, "chart": "s.png",
            "settings": {"clients": 16, "rounds": 3, "seconds": 10.0, "k": 10, "history": HISTORY},
            "world": {"items": 100_000, "ids": "random", "seconds": 60.0, "hnsw_build_s": 14.0,
                      "example_search": ["Kalo Mira"]}}


def test_markdown_gives_the_table_and_says_where_the_cpu_runs_out():
    rows = [row("ours /recommend", 1, 20.0), row("ours /recommend", 4, 30.0, machine=2.0),
            row("peer faiss HNSW", 1, 80.0), row("peer faiss HNSW", 4, 90.0, machine=1.98),
            row("ours /search + embedded Qdrant", 1, 7.0, dense=True)]
    rows[2]["proxy_cores"] = 1.0  # the peer's replica waits on the proxy
    text = "\n".join(markdown(result(rows)))
    assert "| 4 | ours /recommend | 100.0 [90.0, 110.0] | 300.0 [250.0, 350.0] | 30.0 [29.0, 31.0] | 0 | 0.38 |" in text
    assert "0.9 / 0.4 / 0.2 / 2.0 | 33.3 | 88.8 |" in text  # cores, per CPU-s, implied: 4 x 22.2
    assert "ours /recommend: 20.0 answers/s at 1 replica, 30.0 at 4 (efficiency 0.38" in text
    assert "From 4 replica(s) on, the machine was busy 1.98-2.0 of its 2 cores" in text and "oversubscribe" in text
    assert "peer faiss HNSW at one replica: Serve's proxy used 1.0 cores, its replica 0.9" in text
    assert "ours /recommend at one replica: Serve's proxy" not in text
    assert "embedded Qdrant serving builds without a server: 7.0 answers/s" in text
    assert text.index("| 1 | ours /recommend") < text.index("| 1 | peer faiss HNSW") < text.index("| 4 | ours")


def test_chart_puts_both_ways_on_one_png(tmp_path):
    rows = [row("ours /search", 1, 20.0), row("ours /search", 2, 35.0), row("peer faiss HNSW", 1, 80.0),
            row("peer faiss HNSW", 2, 90.0)]
    scaling(rows)
    assert chart(rows, tmp_path, "s", clients=16) == "s.png"
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_tiny_run_on_real_ray_serve(tmp_path):
    args = parser().parse_args(["--items", "2000", "--replicas", "1", "2", "--seconds", "2", "--rounds", "1",
                                "--clients", "4", "--bodies", "200", "--name", "tiny"])
    results = run(args, tmp_path, log=lambda line: None)
    write(results, tmp_path, "tiny")
    got = sorted((r["series"], r["replicas"]) for r in results["rows"])
    assert got == sorted([(s, n) for s in ("ours /search", "ours /recommend", "peer faiss HNSW") for n in (1, 2)]
                         + [("ours /search + embedded Qdrant", 1)])
    for r in results["rows"]:
        assert r["failed"] == 0 and r["throughput_rps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["replica_cores"] > 0 and r["proxy_cores"] > 0 and r["machine_cores"] > 0
        assert r["efficiency"] > 0 and r["implied_dedicated_rps"] > 0 and r["replica_omp_threads"] == ["1"]
    assert json.loads((tmp_path / "tiny.json").read_text())["world"]["items"] == 2000
    assert (tmp_path / "tiny.png").exists() and "| 2 | peer faiss HNSW |" in (tmp_path / "tiny.md").read_text()
