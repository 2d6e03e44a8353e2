"""Serving under bounded load on loopback: p50/p99 latency and throughput of /search and
/recommend at two replica counts, and p99 while versions are swapped in versus steady state,
with the number of swaps, failed answers and mislabelled answers (a version / map pair that
was never published). That no answer mixes versions is checked on content, answer by
answer, in tests/test_serving_app.py.

The load comes from a second process (closed loop: a fixed number of clients, each sending
its next request when the previous answer arrives, for a fixed time). Requests are the
bundled data's leave-one-out cases: rec histories as explicit `history`, real tag queries
for search. The served model is the default architecture with random weights over the
bundled catalogue with paper-layout random identifiers (bench.decoding_latency.random_map)
and the history prior the bundled quality run fitted: serving cost does not depend on the
weights. Adapters are PEFT LoRA adapters as `attach` initialises them, published to a real
registry; each swap loads one beside the serving one.

    .venv/bin/python -m bench.serving_load [--replicas 1 2] [--seconds 8] [--rounds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.output import write_results
from infra.ports import free_port


# --- the load driver (runs in its own process) --------------------------------------------


def drive(url: str, path: str, bodies: list[dict], seconds: float, clients: int) -> dict:
    import httpx

    records: list[tuple[float, float, int, str | None, str | None]] = []
    stop_at = time.monotonic() + seconds

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            i = offset
            while time.monotonic() < stop_at:
                body = bodies[i % len(bodies)]
                i += clients
                started = time.perf_counter()
                try:
                    r = c.post(path, json=body)
                    status = r.status_code
                    answer = r.json() if status == 200 else {}
                except Exception:  # noqa: BLE001 - a failed request is a result here
                    status, answer = -1, {}
                records.append((started, time.perf_counter() - started, status, answer.get("model_version"),
                                answer.get("idmap_version")))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ok = [r for r in records if r[2] == 200]
    labels: dict[str, int] = {}
    for r in ok:
        labels[f"{r[3]}|{r[4]}"] = labels.get(f"{r[3]}|{r[4]}", 0) + 1
    return {"requests": len(records), "failed": len(records) - len(ok), "seconds": elapsed,
            "latencies_ms": [r[1] * 1000 for r in ok], "labels": labels}


# --- the served world ---------------------------------------------------------------------


def build_world(root: Path, adapters: int) -> tuple[dict, list[dict], list[dict]]:
    """State directory with a base model, its map and `adapters` published adapter versions
    (a0 promoted); request bodies for search and rec."""
    import torch

    from bench.decoding_latency import random_map
    from evaluation.protocols import cases
    from gensar.data import leave_one_out, load, target_item
    from gensar.settings import BUNDLED_DATA
    from identifiers.idmap import MapStore
    from identifiers.semantic import item_texts
    from learner.lora import attach, save_adapter
    from learner.settings import LoraSettings
    from learner.registry import LocalArtifactStore, Manifest, Registry, TrainingWindow
    from model.artifact import GenSARModel
    from model.history import HistoryPrior
    from model.modeling import ModelSettings, build_model
    from model.tasks import RenderSettings
    from model.vocab import IdLayout, Vocabulary

    torch.manual_seed(0)
    ds = load(BUNDLED_DATA)
    split = leave_one_out(ds)
    idmap = random_map(tuple(ds.items))
    texts = item_texts(ds, split.train)
    vocab = Vocabulary.for_corpus(IdLayout.of(idmap), [*texts.values(), *(e.query for e in ds.searches)])
    model = build_model(ModelSettings(), vocab, seed=0).eval()
    MapStore(root / "identifiers" / "maps").save(idmap)
    prior = HistoryPrior(weights={"search": (16.0, -8.0), "rec": (4.0, -2.0)})  # the bundled quality run's joint model's
    GenSARModel(model, vocab, ModelSettings(), RenderSettings(), idmap.version, idmap.fingerprint(),
                prior=prior).save(root / "models" / "base" / "bench")
    registry = Registry(LocalArtifactStore(root / "registry"))
    for i in range(adapters):
        directory = save_adapter(attach(model, LoraSettings()), root / "adapters-out" / f"a{i}")
        registry.publish(directory, Manifest(version=f"a{i}", base_model="bench", idmap_version=idmap.version,
                                             window=TrainingWindow(samples=0)))
    registry.promote("a0")
    test = cases(ds, split)
    rec = [{"user_id": c.user_id, "k": 10, "history": [target_item(e) for e in c.history][-50:]}
           for c in test if c.task == "rec"]
    search = [{"query": c.query[:200], "k": 10} for c in test if c.task == "search"]
    overrides = {"state_dir": str(root), "catalogue": str(BUNDLED_DATA), "poll_s": 0.5, "follow_items": False,
                 "streams_url": "http://127.0.0.1:9"}  # no stream workers: bodies carry history
    return overrides, search, rec


def summarise(runs: list[dict]) -> dict:
    """Median over rounds (spread: min-max) of p50, p99 and throughput."""
    p50 = [float(np.percentile(r["latencies_ms"], 50)) for r in runs if r["latencies_ms"]]
    p99 = [float(np.percentile(r["latencies_ms"], 99)) for r in runs if r["latencies_ms"]]
    rps = [len(r["latencies_ms"]) / r["seconds"] for r in runs]
    span = lambda xs: [round(min(xs), 1), round(max(xs), 1)] if xs else None  # noqa: E731
    return {"rounds": len(runs), "requests": sum(r["requests"] for r in runs), "failed": sum(r["failed"] for r in runs),
            "p50_ms": round(statistics.median(p50), 1) if p50 else None, "p50_spread": span(p50),
            "p99_ms": round(statistics.median(p99), 1) if p99 else None, "p99_spread": span(p99),
            "throughput_rps": round(statistics.median(rps), 1), "throughput_spread": span(rps)}


def run_driver(url: str, path: str, bodies_file: Path, seconds: float, clients: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.serving_load", "--drive", url, "--path", path,
                             "--bodies", str(bodies_file), "--seconds", str(seconds), "--clients", str(clients)],
                            stdout=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=8.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--swaps", type=int, default=2, help="promotions per swap round")
    parser.add_argument("--drive")
    parser.add_argument("--path")
    parser.add_argument("--bodies")
    args = parser.parse_args()
    if args.drive:
        print(json.dumps(drive(args.drive, args.path, json.loads(Path(args.bodies).read_text()), args.seconds, args.clients)))
        return

    from gensar.machine import machine

    root = Path(tempfile.mkdtemp(prefix="gensar-serving-bench-"))
    swap_rounds = args.rounds
    adapters = 1 + len(args.replicas) * swap_rounds * args.swaps
    overrides, search, rec = build_world(root, adapters)
    bodies = {"/search": root / "search.json", "/recommend": root / "rec.json"}
    bodies["/search"].write_text(json.dumps(search))
    bodies["/recommend"].write_text(json.dumps(rec))
    os.environ.update({"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"})
    import httpx
    import ray
    from ray import serve

    from infra.ray_local import ensure_ray
    from learner.registry import LocalArtifactStore, Registry
    from serving.app import build

    ensure_ray(num_cpus=2)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    registry = Registry(LocalArtifactStore(root / "registry"))
    next_adapter = 1
    results: dict = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k not in ("drive", "path", "bodies")},
                     "world": {"items": 9742, "model": "ModelSettings() default, random weights", "beam": 30,
                               "search_bodies": len(search), "rec_bodies": len(rec)}, "replicas": {}}
    for replicas in args.replicas:
        started = time.perf_counter()
        serve.run(build({**overrides, "replicas": replicas, "replica_cpus": 2 / replicas}), name="gensar", route_prefix="/")
        row: dict = {"start_seconds": round(time.perf_counter() - started, 1)}
        for path in ("/search", "/recommend"):
            runs = [json.loads(run_driver(url, path, bodies[path], args.seconds, args.clients).communicate()[0])
                    for _ in range(args.rounds)]
            row[path] = summarise(runs)
            print(replicas, path, row[path], flush=True)
        steady, swapping, labels, versions = [], [], {}, set()
        for _ in range(swap_rounds):
            steady.append(json.loads(run_driver(url, "/recommend", bodies["/recommend"], args.seconds, args.clients).communicate()[0]))
            driver = run_driver(url, "/recommend", bodies["/recommend"], args.seconds, args.clients)
            for _ in range(args.swaps):
                time.sleep(args.seconds / (args.swaps + 1))
                registry.promote(f"a{next_adapter}")
                versions.add(f"a{next_adapter}")
                next_adapter += 1
            swapping.append(json.loads(driver.communicate()[0]))
            for k, v in swapping[-1]["labels"].items():
                labels[k] = labels.get(k, 0) + v
        seen_swaps = {}
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(10 * replicas):
                for s in c.get("/models").json()["swaps"]:
                    if s["new"] in versions and s["load_seconds"] > 0:  # the task that loaded it (the other shares it)
                        seen_swaps[(s["new"], s["at"])] = s
        expected = {f"a{i}|bench-random" for i in range(adapters)}  # every published version with its map
        row["swaps"] = {
            "steady": summarise(steady), "during_swaps": summarise(swapping),
            "promotions": len(versions), "replica_swaps_seen": len(seen_swaps),
            "failed": sum(r["failed"] for r in swapping), "mislabelled": sum(v for k, v in labels.items() if k not in expected),
            "load_seconds_median": round(statistics.median(s["load_seconds"] for s in seen_swaps.values()), 3) if seen_swaps else None,
            "swap_seconds_max": max((s["swap_seconds"] for s in seen_swaps.values()), default=None)}
        row["swaps"]["p99_ratio"] = round(row["swaps"]["during_swaps"]["p99_ms"] / row["swaps"]["steady"]["p99_ms"], 2)
        print(replicas, "swaps", row["swaps"], flush=True)
        results["replicas"][str(replicas)] = row
        serve.delete("gensar")
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)
    results["cuda"] = "not measured: no GPU in this session (see bench/results/decoding_latency for the decoding rows)"
    write(results)


def micro(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.1f} µs"


def write(results: dict) -> None:
    m, s = results["machine"], results["settings"]
    lines = [f"# Serving under load ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, shared with the load driver (a second process) and Ray. "
             f"{results['world']['items']} items, {results['world']['model']}, beam {results['world']['beam']}, k 10; "
             f"closed loop, {s['clients']} clients, {s['rounds']} rounds x {s['seconds']:.0f} s per row; "
             "median over rounds [min-max].", "",
             "| replicas | endpoint | p50 ms | p99 ms | throughput req/s | failed |", "|---|---|---|---|---|---|"]
    for replicas, row in results["replicas"].items():
        for path in ("/search", "/recommend"):
            r = row[path]
            lines.append(f"| {replicas} | {path} | {r['p50_ms']} {r['p50_spread']} | {r['p99_ms']} {r['p99_spread']} | "
                         f"{r['throughput_rps']} {r['throughput_spread']} | {r['failed']} |")
    lines += ["", "Swaps under a steady /recommend stream (each round: steady, then the same load while versions are promoted):", "",
              "| replicas | promotions | replica swaps seen | p99 steady ms | p99 during swaps ms | ratio (target <= 1.2) | failed | mislabelled | load s (median) | swap s (max) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for replicas, row in results["replicas"].items():
        w = row["swaps"]
        lines.append(f"| {replicas} | {w['promotions']} | {w['replica_swaps_seen']} | {w['steady']['p99_ms']} {w['steady']['p99_spread']} | "
                     f"{w['during_swaps']['p99_ms']} {w['during_swaps']['p99_spread']} | {w['p99_ratio']} | {w['failed']} | "
                     f"{w['mislabelled']} | {w['load_seconds_median']} | {micro(w['swap_seconds_max'])} |")
    lines += ["", f"CUDA: {results['cuda']}.", "",
              "Load seconds: fetch + checksum + merge into a copy of the base + identifier map + constraint + warm-up, "
              "beside the serving version; swap seconds: the reference assignment that makes it serve."]
    write_results("serving_load", results, lines)


if __name__ == "__main__":
    main()
