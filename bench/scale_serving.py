"""How it scales, part 4 (issue 18): serving. The real Serve application (serving.app, as
`gensar serve` deploys it) over a synthetic 100k-item catalogue with 1, 2 and 4 replicas,
16 closed-loop clients on /search and /recommend; beside it, the competing way: dense top-k by
faiss HNSW over the same items' vectors behind the same proxy and batching (bench.dense_peer),
at the same replica counts and load.

    .venv/bin/python -m bench.scale_serving [--items 100000] [--replicas 1 2 4] [--seconds 10] [--rounds 3]

The world: bench.scale_catalogue's clustered catalogue written as a MovieLens dataset (what
serving loads), random paper-layout identifiers (bench.decoding_latency.random_map: serving
cost does not depend on which ids; RQ-VAE ids at 100k take minutes, bench.scale_identifiers),
the default model shape with random weights and one LoRA version published to a real registry
(bench.serving_load.publish_world). Requests: /recommend with an explicit history of 20
items from one topic; /search with queries of title words and genres; the peer with a query
vector near an item (bench.scale_decoding.dense_queries), no query encoder on either side.
The grid's /search runs with `dense` off (the generated list alone: a Qdrant server, the
chart's way, does not install here); one more row runs /search with `dense` on at one
replica, on the per-replica embedded Qdrant that serving builds without a server, with the
catalogue's stand-in vectors in serving's embedding cache in place of MiniLM's.

Per row: p50/p99 and answers/s from bench.serving_load's drive and summarise (median over
rounds); the cores the replicas, Serve's proxy and the load driver used, and the whole
machine's; scaling efficiency against one replica; what one replica's answers per
CPU-second imply on dedicated cores. The driver's clients are threads of this process, which
does nothing else meanwhile, so the CPU snapshots bracket the load exactly. On 2 cores the rows past 1-2 replicas measure CPU
contention between replicas, Serve's proxy and the driver: a simulation of a cluster, not one.
Writes bench/results/<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from matplotlib.figure import Figure

from bench import scale_faiss
from bench.decoding_latency import random_map
from bench.output import RESULTS, write_png, write_results
from bench.scale_catalogue import TOPICS, Catalogue, cpu_s, synthetic_catalogue
from bench.scale_decoding import dense_queries
from bench.serving_load import drive, per_replica, publish_world, start_serve, summarise
from gensar.layout import Layout
from gensar.machine import machine

K, HISTORY = 10, 20  # answers per request; items in a /recommend body's history
PEER_ROUTE = "/dense"
SERIES = ("ours /search", "ours /recommend", "peer faiss HNSW")
SATURATED = 0.9  # a machine busy this share of its cores or more is reported as full


def item_id(row: int) -> str:
    return str(row + 1)  # gensar.data reads movieId as an integer


# --- the world --------------------------------------------------------------------------


def write_dataset(cat: Catalogue, directory: Path, users: int, seed: int = 0) -> list[list[str]]:
    """The catalogue as a MovieLens CSV dataset (what serving loads: titles, genres and
    popularity), with `users` users of HISTORY ratings each, all from one topic; -> their
    histories (item ids, oldest first)."""
    rng = np.random.default_rng([seed, 3])
    members = [np.flatnonzero(cat.topic == t) for t in range(TOPICS)]
    histories = []
    for _ in range(users):
        pool = members[cat.topic[rng.integers(len(cat))]]
        histories.append([item_id(r) for r in rng.choice(pool, HISTORY, replace=len(pool) < HISTORY)])
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "movies.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["movieId", "title", "genres"])
        out.writerows((item_id(r), title, "|".join(genres)) for r, (title, genres) in enumerate(zip(cat.titles, cat.genres)))
    with open(directory / "ratings.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["userId", "movieId", "rating", "timestamp"])
        out.writerows((u + 1, item, 4.0, 1_000_000_000 + u * HISTORY + t)
                      for u, history in enumerate(histories) for t, item in enumerate(history))
    return histories


def search_bodies(cat: Catalogue, count: int, seed: int = 0) -> list[dict]:
    """Queries about random items: two words of the title, or one word and a genre, in turn."""
    rng = np.random.default_rng([seed, 2])
    bodies = []
    for i, row in enumerate(rng.integers(len(cat), size=count).tolist()):
        words = cat.titles[row].split()[:2]
        query = " ".join(words) if i % 2 == 0 else f"{words[0]} {rng.choice(cat.genres[row]).lower()}"
        bodies.append({"query": query, "k": K})
    return bodies


def peer_bodies(cat: Catalogue, count: int, seed: int = 0) -> list[dict]:
    return [{"vector": [round(x, 5) for x in v.tolist()], "k": K}
            for v in dense_queries(cat, len(cat), count, seed=seed + 1)]


def write_hnsw(cat: Catalogue, path: Path) -> float:
    """bench.scale_faiss's HNSW over the items' semantic vectors, keyed by item id (the ids
    item_id gives), to `path`, built in a process of its own (why: bench.scale_faiss);
    -> build seconds."""
    vectors = path.with_suffix(".npy")
    np.save(vectors, cat.semantic)
    try:
        return scale_faiss.isolated(scale_faiss.write_hnsw_with_ids, str(vectors), np.arange(1, len(cat) + 1), str(path))
    finally:
        vectors.unlink()


def prefill_embeddings(layout: Layout, data: Path, cat: Catalogue) -> None:
    """Serving's item-text vectors (the embedding cache its dense index reads) set to the
    catalogue's stand-in vectors: MiniLM over 100k titles would take most of an hour here, and
    what is timed is the look-up. Queries are still encoded by MiniLM in the replica."""
    from gensar.data import load
    from identifiers.semantic import SemanticEncoder
    from serving.catalogue import Catalogue as Served

    served = Served.of(load(data))
    encoder = SemanticEncoder(layout.embeddings, progress=False)
    encoder.cache.put({encoder._key(served.text(item_id(r))): cat.semantic[r] for r in range(len(cat))})
    encoder.close()


def build_world(root: Path, args: argparse.Namespace, log=print) -> dict:
    """-> the serving overrides, the request bodies per endpoint, and what was built."""
    started = time.perf_counter()
    cat = synthetic_catalogue(args.items, seed=args.seed)
    data = root / "catalogue"
    histories = write_dataset(cat, data, args.bodies, args.seed)
    idmap = random_map(tuple(item_id(r) for r in range(len(cat))), seed=args.seed)
    search = search_bodies(cat, args.bodies, args.seed)
    corpus = [*cat.titles, *{g for gs in cat.genres for g in gs}, *(b["query"] for b in search)]
    publish_world(root, idmap, corpus, adapters=1)
    bodies = {"/search": search, "/recommend": [{"user_id": str(u + 1), "k": K, "history": h} for u, h in enumerate(histories)],
              PEER_ROUTE: peer_bodies(cat, args.bodies, args.seed)}
    hnsw_s = write_hnsw(cat, root / "hnsw.faiss")
    if args.embedded_dense:
        prefill_embeddings(Layout.under(root), data, cat)
    world = {"items": len(cat), "ids": "random paper layout (2 shared + 2 specific levels of 256)",
             "hnsw_build_s": round(hnsw_s, 1), "seconds": round(time.perf_counter() - started, 1),
             "example_search": [b["query"] for b in search[:4]]}
    log(f"world: {world}")
    # No stream workers: /recommend bodies carry their history (the state read fails fast and
    # is counted, as in bench.serving_load); nothing follows the items topic.
    overrides = {"catalogue": str(data), "follow_items": False, "streams_url": "http://127.0.0.1:9"}
    return {"overrides": overrides, "bodies": bodies, "index": root / "hnsw.faiss", "info": world}


# --- measuring --------------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every process, others' work included)."""
    t = psutil.cpu_times()  # Linux: guest time is inside user; steal is the hypervisor's, not ours
    return t.user + t.nice + t.system + t.irq + t.softirq


def proxy_pids() -> list[int]:
    """Serve's HTTP proxy among this process's descendants (Ray's workers are its raylet's
    children), so no other session's Ray on the machine is counted."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name().startswith("ray::ProxyActor"):  # "ray::ProxyActor.<method>" while in a call
                found.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def driver_cpu_s() -> float:
    """CPU seconds of this process: the load driver's clients (and Ray's idle driver threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_now(replicas: list[int], proxies: list[int]) -> np.ndarray:
    """(replicas, proxy, driver, machine) CPU seconds so far."""
    return np.array([cpu_s(replicas), cpu_s(proxies), driver_cpu_s(), machine_busy_s()])


def cpu_figures(answered: int, seconds: float, replica_s: float, proxy_s: float, driver_s: float,
                machine_s: float) -> dict:
    """Cores busy over the load's seconds, and answers per replica CPU-second."""
    return {"replica_cores": round(replica_s / seconds, 2), "proxy_cores": round(proxy_s / seconds, 2),
            "driver_cores": round(driver_s / seconds, 2), "machine_cores": round(machine_s / seconds, 2),
            "answers_per_replica_cpu_s": round(answered / replica_s, 1) if replica_s else None}


def measure(url: str, route: str, bodies: dict[str, list[dict]], replicas: int, args: argparse.Namespace,
            log=print) -> dict:
    """Closed-loop rounds on each endpoint in `bodies` of the app at `route`, the endpoints
    taking turns round by round (so load from other work falls on both alike), after a short
    warm-up each. -> one row per endpoint."""
    import httpx

    with httpx.Client(base_url=url + route, timeout=30) as c:
        pids = [m["pid"] for m in per_replica(c, replicas).values()]
    proxies = proxy_pids()
    if len(pids) != replicas:
        raise RuntimeError(f"found {len(pids)} of {replicas} replicas at {url + route}")
    omp = sorted({psutil.Process(p).environ().get("OMP_NUM_THREADS", "unset") for p in pids})  # what run() set
    for path, items in bodies.items():
        drive(url, path, items, min(2.0, args.seconds), args.clients)
    runs: dict[str, list[dict]] = {path: [] for path in bodies}
    cpu = {path: np.zeros(4) for path in bodies}
    for _ in range(args.rounds):
        for path, items in bodies.items():
            before = cpu_now(pids, proxies)
            runs[path].append(drive(url, path, items, args.seconds, args.clients))
            cpu[path] += cpu_now(pids, proxies) - before
    rows = {}
    for path, rs in runs.items():
        answered, seconds = sum(len(r["latencies_ms"]) for r in rs), sum(r["seconds"] for r in rs)
        rows[path] = {**summarise(rs), **cpu_figures(answered, seconds, *map(float, cpu[path])), "replica_omp_threads": omp}
        log(f"{replicas} replica(s) {route}{path}: {rows[path]}")
    return rows


def ours(url: str, world: dict, replicas: int, dense: bool, paths: tuple[str, ...], root: Path,
         args: argparse.Namespace, log=print) -> list[dict]:
    from ray import serve

    from serving.app import build

    started = time.perf_counter()
    serve.run(build({**world["overrides"], "replicas": replicas, "replica_cpus": 2 / replicas, "dense": dense},
                    Layout.under(root)), name="gensar", route_prefix="/")
    start_s = round(time.perf_counter() - started, 1)
    try:
        measured = measure(url, "", {p: world["bodies"][p] for p in paths}, replicas, args, log)
    finally:
        serve.delete("gensar")
    return [{"series": f"ours {p}" + (" + embedded Qdrant" if dense else ""), "replicas": replicas, "dense": dense,
             "start_s": start_s, **row} for p, row in measured.items()]


def peer(url: str, world: dict, replicas: int, args: argparse.Namespace, log=print) -> list[dict]:
    from ray import serve

    from bench.dense_peer import DensePeer
    from serving.settings import ServingSettings

    s = ServingSettings()  # the same batching and queue limits as ours (serving.app.build)
    started = time.perf_counter()
    serve.run(DensePeer.options(num_replicas=replicas, max_ongoing_requests=4 * s.max_batch_size,
                                max_queued_requests=s.max_queued_requests,
                                ray_actor_options={"num_cpus": 2 / replicas})
              .bind(str(world["index"]), s.max_batch_size, s.batch_wait_s), name="peer", route_prefix=PEER_ROUTE)
    start_s = round(time.perf_counter() - started, 1)
    try:
        measured = measure(url, PEER_ROUTE, {PEER_ROUTE: world["bodies"][PEER_ROUTE]}, replicas, args, log)
    finally:
        serve.delete("peer")
    return [{"series": "peer faiss HNSW", "replicas": replicas, "dense": None, "start_s": start_s, **measured[PEER_ROUTE]}]


def scaling(rows: list[dict]) -> None:
    """Per row, against its series' 1-replica row: efficiency (answers/s over N times one
    replica's), and the answers/s N replicas would give on N dedicated cores if an answer cost
    the CPU it cost one replica alone (its answers per replica CPU-second, times N)."""
    for row in rows:
        one = _row(rows, row["series"], 1)
        row["efficiency"] = round(row["throughput_rps"] / (row["replicas"] * one["throughput_rps"]), 2) if one else None
        row["implied_dedicated_rps"] = (round(row["replicas"] * one["answers_per_replica_cpu_s"], 1)
                                        if one and one["answers_per_replica_cpu_s"] else None)


def run(args: argparse.Namespace, out_dir: Path = RESULTS, log=print) -> dict:
    # Inherited by Ray's workers (it is set before Ray starts): one torch / OpenMP thread per
    # replica, whatever CPUs Ray accounts to it.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)  # this process imported torch before: set it here too
    results: dict = {"machine": machine(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                     "settings": {**vars(args), "k": K, "history": HISTORY, "omp_num_threads": 1}}
    root = Path(tempfile.mkdtemp(prefix="gensar-scale-serving-"))
    try:
        world = build_world(root, args, log)
        results["world"] = world["info"]
        url = start_serve()
        rows: list[dict] = []
        for n in args.replicas:
            rows += ours(url, world, n, False, ("/search", "/recommend"), root, args, log)
            rows += peer(url, world, n, args, log)
        if args.embedded_dense:
            rows += ours(url, world, 1, True, ("/search",), root, args, log)
    finally:
        import ray
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    scaling(rows)
    results["rows"] = rows
    results["chart"] = chart(rows, out_dir, args.name, args.clients)
    return results


# --- the report -------------------------------------------------------------------------


def _row(rows: list[dict], series: str, replicas: int) -> dict | None:
    return next((r for r in rows if r["series"] == series and r["replicas"] == replicas), None)


def markdown(results: dict) -> list[str]:
    m, s, w, rows = results["machine"], results["settings"], results["world"], results["rows"]
    lines = [f"# How it scales: serving ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores shared with other work (load average at start "
             f"{results['load_average_at_start'][0]}), {m['memory_gib']} GiB; one torch / faiss thread per replica. "
             f"{w['items']:,} synthetic items (bench.scale_catalogue), {w['ids']} identifiers at random, default model "
             f"shape with random weights, beam 30, k {s['k']}. Closed loop: {s['clients']} clients (threads of the "
             f"bench's process, outside Ray), {s['rounds']} round(s) x {s['seconds']:.0f} s per row after a warm-up, median over rounds "
             "[min-max]. Ours: serving.app as `gensar serve` deploys it; /search with `dense` off (the generated list "
             f"alone), /recommend with an explicit history of {s['history']} items. Peer: faiss HNSW top-{s['k']} over "
             "the same items' vectors behind the same Serve proxy and batching, the query vector in the body (no "
             "encoder on either side).", "",
             "| replicas | way | p50 ms | p99 ms | answers/s | failed | efficiency vs 1 | cores: replicas / proxy / driver "
             "/ machine | answers per replica CPU-s | implied answers/s on N dedicated cores | start s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["dense"] is True, r["replicas"], SERIES.index(r["series"]) if r["series"] in SERIES else 9)):
        lines.append(f"| {r['replicas']} | {r['series']} | {r['p50_ms']} {r['p50_spread']} | {r['p99_ms']} {r['p99_spread']} | "
                     f"{r['throughput_rps']} {r['throughput_spread']} | {r['failed']} | {r['efficiency']} | {r['replica_cores']} / "
                     f"{r['proxy_cores']} / {r['driver_cores']} / {r['machine_cores']} | {r['answers_per_replica_cpu_s']} | "
                     f"{r['implied_dedicated_rps']} | {r['start_s']} |")
    lines += ["", "## What it says", ""]
    top = max(r["replicas"] for r in rows)
    for series in SERIES:
        one, last = _row(rows, series, 1), _row(rows, series, top)
        if not one or not last or top == 1:
            continue
        best = max((r for r in rows if r["series"] == series), key=lambda r: r["throughput_rps"])
        lines.append(f"- {series}: {one['throughput_rps']} answers/s at 1 replica, {last['throughput_rps']} at {top} "
                     f"(efficiency {last['efficiency']}; best {best['throughput_rps']} at {best['replicas']}); p99 "
                     f"{one['p99_ms']} -> {last['p99_ms']} ms. One replica alone: {one['answers_per_replica_cpu_s']} answers "
                     f"per CPU-second on {one['replica_cores']} cores, so {top} replicas on {top} dedicated cores "
                     f"would give ~{last['implied_dedicated_rps']} answers/s with the proxy and clients elsewhere.")
    grid = [r for r in rows if not r["dense"]]
    full = next((n for n in sorted({r["replicas"] for r in grid})
                 if all(r["machine_cores"] >= SATURATED * m["cores"] for r in grid if r["replicas"] >= n)), None)
    if full is not None and top > 1:
        crowded = [r for r in grid if r["replicas"] >= full]
        lines.append(f"- From {full} replica(s) on, the machine was busy {min(r['machine_cores'] for r in crowded)}-"
                     f"{max(r['machine_cores'] for r in crowded)} of its {m['cores']} cores: {top} replicas, Serve's "
                     "proxy and the load driver oversubscribe it, so those rows measure CPU contention, not what "
                     "more replicas give; the implied column is the estimate for a cluster.")
    for r in grid:
        if r["replicas"] == 1 and r["proxy_cores"] >= r["replica_cores"]:
            lines.append(f"- {r['series']} at one replica: Serve's proxy used {r['proxy_cores']} cores, its replica "
                         f"{r['replica_cores']}: the HTTP path, not the work a request asks for, bounds it here.")
    if embedded := next((r for r in rows if r["dense"]), None):
        lines.append(f"- /search with `dense` on, one replica, on the embedded Qdrant serving builds without a server: "
                     f"{embedded['throughput_rps']} answers/s, p99 {embedded['p99_ms']} ms (query MiniLM encoding plus "
                     f"a Python scan of {w['items']:,} vectors per query; bench/results/scale.md). Without a Qdrant "
                     "server, that look-up, not decoding, bounds /search at this size.")
    lines += ["", "## Notes", "",
              "- Identifiers are random (bench.decoding_latency.random_map); serving's cost does not depend on which "
              "ids the items have, only on their layout. Real RQ-VAE ids at this size: bench.scale_identifiers.",
              "- The peer's query vector arrives with the request; ours encodes the query's words as part of the "
              "prefill. Serving's own /search with `dense` on adds a MiniLM query encoding and a look-up (a Qdrant "
              "server's HNSW in the chart) to the generated list: not measured in the grid.",
              "- /recommend bodies carry their history; the user-state read goes to a closed port and fails at once "
              "(counted in gensar_serve_user_state_errors_total), as in bench.serving_load.",
              "- Cores: CPU seconds over the rounds' seconds (psutil): the replicas', Serve's HTTP proxy's, this "
              "process's (the load driver's clients), and the whole machine's, others' work on it included.",
              f"- World built in {w['seconds']} s (faiss HNSW over {w['items']:,} vectors: {w['hnsw_build_s']} s); "
              f"example queries: {', '.join(repr(q) for q in w['example_search'])}."]
    if results.get("chart"):
        lines += ["", f"Chart: [{results['chart']}]({results['chart']})"]
    return lines


def chart(rows: list[dict], out_dir: Path, name: str, clients: int) -> str | None:
    """<name>.png: answers/s (measured, and implied on dedicated cores) and p99 against
    replicas, ours and the peer on the same axes."""
    if not rows:
        return None
    fig = Figure(figsize=(11, 4.2))
    rate, tail = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for series in sorted({r["series"] for r in rows}, key=lambda s: SERIES.index(s) if s in SERIES else 9):
        pts = sorted((r for r in rows if r["series"] == series), key=lambda r: r["replicas"])
        x = [r["replicas"] for r in pts]
        style = "o-" if len(pts) > 1 else "D"
        line, = rate.plot(x, [r["throughput_rps"] for r in pts], style, label=f"{series} (measured)")
        if len(pts) > 1 and pts[0]["implied_dedicated_rps"]:
            rate.plot(x, [r["implied_dedicated_rps"] for r in pts], ":", color=line.get_color(),
                      label=f"{series} (implied, N dedicated cores)")
        tail.plot(x, [r["p99_ms"] for r in pts], style, color=line.get_color(), label=series)
    replicas = sorted({r["replicas"] for r in rows})
    rate.set(xlabel="replicas", ylabel="answers/s", yscale="log", xticks=replicas,
             title=f"throughput, {clients} closed-loop clients")
    tail.set(xlabel="replicas", ylabel="p99 ms", yscale="log", xticks=replicas, title="p99 latency")
    for ax in (rate, tail):
        ax.grid(True, which="both", alpha=0.3)
    rate.legend(fontsize=7)
    fig.tight_layout()
    write_png(fig, out_dir / f"{name}.png")
    return f"{name}.png"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bodies", type=int, default=2000, help="distinct request bodies per endpoint")
    p.add_argument("--embedded-dense", action=argparse.BooleanOptionalAction, default=True,
                   help="the extra /search row with dense on (embedded Qdrant), one replica")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="scale_serving", help="results name: bench/results/<name>.json, .md, .png")
    return p


def write(results: dict, out_dir: Path = RESULTS, name: str = "scale_serving") -> list[str]:
    lines = markdown(results)
    write_results(name, results, lines, out_dir)
    return lines


def main() -> None:
    args = parser().parse_args()
    print("\n".join(write(run(args), RESULTS, args.name)))


if __name__ == "__main__":
    main()
