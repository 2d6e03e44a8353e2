"""Serving under bounded load on loopback: p50/p99 latency and throughput of /search and
/recommend at two replica counts, and p99 while versions are swapped in versus steady state,
with the number of swaps, failed answers and mislabelled answers (a version / map pair that
was never published). That no answer mixes versions is checked on content, answer by
answer, in tests/test_serving_app.py.

The fault rows (2 replicas, 16 clients, /recommend; tests/test_serving_faults.py asserts the
same on the tiny world): versions that cannot serve (a damaged adapter, a missing identifier
map, another base model) promoted one after another, then a good one, with failed and mixed
answers (an answer whose items and scores are not its label's version's answer to that body);
one replica SIGKILLed, with failed answers, what they were and the seconds until 2 replicas run
and answer again; the user-state API (a stand-in HTTP server with the bodies' histories)
killed, then hung, with the answers that fell back to "no history" and their latency.

The load comes from a second process (closed loop: a fixed number of clients, each sending
its next request when the previous answer arrives, for a fixed time). Requests are the
bundled data's leave-one-out cases: rec histories as explicit `history`, real tag queries
for search. The served model is the default architecture with random weights over the
bundled catalogue with paper-layout random identifiers (bench.decoding_latency.random_map)
and the history prior the bundled quality run fitted: serving cost does not depend on the
weights. Adapters are PEFT LoRA adapters as `attach` initialises them, published to a real
registry; each swap loads one beside the serving one.

    .venv/bin/python -m bench.serving_load [--replicas 1 2] [--seconds 8] [--rounds 3] [--clients 8]
    .venv/bin/python -m bench.serving_load --faults-only   # the fault rows only, merged into the results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.output import write_results
from gensar.layout import Layout
from infra.ports import free_port

if TYPE_CHECKING:  # the load driver's process imports this module: keep it light
    from identifiers.idmap import IdentifierMap


# --- the load driver (runs in its own process) --------------------------------------------


def drive(url: str, path: str, bodies: list[dict], seconds: float, clients: int, record: bool = False,
          until_stdin: bool = False) -> dict:
    """`until_stdin`: stop early when a line (or EOF) arrives on stdin."""
    import httpx

    records: list[tuple] = []
    stop_at = time.monotonic() + seconds
    stop = threading.Event()
    if until_stdin:
        threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            i = offset
            while time.monotonic() < stop_at and not stop.is_set():
                index = i % len(bodies)
                i += clients
                wall, started = time.time(), time.perf_counter()
                error = None
                try:
                    r = c.post(path, json=bodies[index])
                    status = r.status_code
                    answer = r.json() if status == 200 else {}
                    if status != 200:
                        error = f"{status} retry-after={r.headers.get('retry-after')} {r.text[:120]}"
                except Exception as exc:  # noqa: BLE001 - a failed request is a result here
                    status, answer, error = -1, {}, repr(exc)[:160]
                row = (started, time.perf_counter() - started, status, answer.get("model_version"), answer.get("idmap_version"))
                if record:
                    row += (wall, index, answer.get("source"), [(x["id"], x["score"]) for x in answer.get("items", [])], error)
                records.append(row)

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
    out = {"requests": len(records), "failed": len(records) - len(ok), "seconds": elapsed,
           "latencies_ms": [r[1] * 1000 for r in ok], "labels": labels}
    if record:  # (wall start, seconds, status, version, body index, source, items, error)
        out["records"] = [(r[5], r[1], r[2], r[3], r[6], r[7], r[8], r[9]) for r in records]
    return out


# --- the served world ---------------------------------------------------------------------


def build_world(root: Path, adapters: int) -> tuple[dict, list[dict], list[dict]]:
    """State directory with a base model, its map and `adapters` published adapter versions
    (a0 promoted); request bodies for search and rec."""
    from bench.decoding_latency import random_map
    from evaluation.protocols import cases
    from gensar.data import leave_one_out, load, target_item
    from gensar.settings import BUNDLED_DATA
    from identifiers.semantic import item_texts

    ds = load(BUNDLED_DATA)
    split = leave_one_out(ds)
    idmap = random_map(tuple(ds.items))
    texts = item_texts(ds, split.train)
    publish_world(root, idmap, [*texts.values(), *(e.query for e in ds.searches)], adapters)
    test = cases(ds, split)
    rec = [{"user_id": c.user_id, "k": 10, "history": [target_item(e) for e in c.history][-50:]}
           for c in test if c.task == "rec"]
    search = [{"query": c.query[:200], "k": 10} for c in test if c.task == "search"]
    overrides = {"catalogue": str(BUNDLED_DATA), "poll_s": 0.5, "follow_items": False,
                 "streams_url": "http://127.0.0.1:9"}  # no stream workers: bodies carry history
    return overrides, search, rec


def publish_world(root: Path, idmap: IdentifierMap, corpus: list[str], adapters: int) -> None:
    """Into the state directory `root`: `idmap`, the base model "bench" (default architecture,
    random weights, a vocabulary of the word pieces `corpus` uses) and `adapters` published
    LoRA versions a0, a1, ... (a0 promoted)."""
    from identifiers.idmap import MapStore
    from learner.lora import attach, save_adapter
    from learner.settings import LoraSettings
    from learner.registry import LocalArtifactStore, Manifest, Registry, TrainingWindow
    from model.artifact import GenSARModel
    from model.history import HistoryPrior
    from model.modeling import ModelSettings, build_model
    from model.tasks import RenderSettings
    from model.vocab import IdLayout, Vocabulary

    vocab = Vocabulary.for_corpus(IdLayout.of(idmap), corpus)
    model = build_model(ModelSettings(), vocab, seed=0).eval()
    MapStore(Layout.under(root).identifier_maps).save(idmap)
    prior = HistoryPrior(weights={"search": (16.0, -8.0), "rec": (4.0, -2.0)})  # the bundled quality run's joint model's
    GenSARModel(model, vocab, ModelSettings(), RenderSettings(), idmap.version, idmap.fingerprint(),
                prior=prior).save(Layout.under(root).base_model("bench"))
    registry = Registry(LocalArtifactStore(Layout.under(root).registry))
    for i in range(adapters):
        directory = save_adapter(attach(model, LoraSettings()), root / "adapters-out" / f"a{i}")
        registry.publish(directory, Manifest(version=f"a{i}", base_model="bench", idmap_version=idmap.version,
                                             window=TrainingWindow(samples=0)))
    registry.promote("a0")


def start_serve(num_cpus: int = 2) -> str:
    """A local Ray cluster (token auth off on loopback) and Serve's proxy on a free loopback
    port; -> the proxy's URL."""
    os.environ.update({"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"})
    from ray import serve

    from infra.ray_local import ensure_ray

    ensure_ray(num_cpus=num_cpus)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


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


def run_driver(url: str, path: str, bodies_file: Path, seconds: float, clients: int, record: bool = False) -> subprocess.Popen:
    """`record`: every answer comes back, and the driver stops early on a line on its stdin
    (`finish`)."""
    return subprocess.Popen([sys.executable, "-m", "bench.serving_load", "--drive", url, "--path", path,
                             "--bodies", str(bodies_file), "--seconds", str(seconds), "--clients", str(clients)]
                            + (["--record"] if record else []), stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.PIPE if record else None)


def finish(driver: subprocess.Popen) -> dict:
    return json.loads(driver.communicate("stop\n")[0])


# --- the fault rows -----------------------------------------------------------------------

FAULT_CLIENTS = 16
BAD = {"bad-sum": "corrupt", "bad-map": "map-missing", "bad-base": "wrong-base"}


class UserStandIn(ThreadingHTTPServer):
    """The stream workers' read contract (streams.views: GET /users/{id}/history; 404 for a
    user never seen), answered from a dict."""

    daemon_threads = True

    def __init__(self, histories: dict[str, dict]):
        self.histories = histories
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parts = self.path.strip("/").split("/")
                found = stand_in.histories.get(parts[1]) if len(parts) == 3 and parts[0] == "users" else None
                body = json.dumps(found or {"error": "not found"}).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def publish_bad_versions(root: Path) -> None:
    """bad-sum (a0's adapter, one byte of its weights flipped after publication), bad-map (its
    identifier map was never saved), bad-base (it loads, but was trained on another base)."""
    from learner.registry import Decision, LocalArtifactStore, Registry

    registry = Registry(LocalArtifactStore(Layout.under(root).registry))
    manifest, adapter = registry.fetch("a0", root / "fetched-a0")
    for version, update in (("bad-sum", {}), ("bad-map", {"idmap_version": "never-built"}),
                            ("bad-base", {"base_model": "another-base"})):
        registry.publish(adapter, manifest.model_copy(update={"version": version, **update}))
    stored = Layout.under(root).registry / "adapters" / "bad-sum"
    target = max((p for p in stored.iterdir() if p.name != "manifest.json"), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    # promote() verifies the artifact: this is the decision its gate wrote before the damage
    registry.store.append("decisions.jsonl", Decision(version="bad-sum", status="promoted",
                                                      reason="passed the gate (damaged since)").model_dump_json().encode())


def per_replica(c, n: int = 2, tries: int = 300) -> dict[str, dict]:
    seen: dict[str, dict] = {}
    for _ in range(tries):
        r = c.get("/models")
        if r.status_code == 200:
            seen[r.json()["replica"]] = r.json()
        if len(seen) >= n:
            break
    return seen


def wait_for(predicate, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def faults(url: str, root: Path, overrides: dict, rec: list[dict], seconds: float) -> dict:
    """The fault rows on a fresh 2-replica app; returns their figures."""
    import httpx
    from ray import serve

    from learner.registry import LocalArtifactStore, Registry
    from serving.app import build
    from serving.settings import ServingSettings

    registry = Registry(LocalArtifactStore(Layout.under(root).registry))
    overrides = {**overrides, "admin_token": "bench-admin-token"}
    bodies = rec[:FAULT_CLIENTS * 2]
    histories = {}
    for i, body in enumerate(bodies):  # the stand-in knows each body's history, under its own user id
        user = f"bench-{i}"
        histories[user] = {"user_id": user, "history": body["history"], "search_history": [], "interactions": len(body["history"]),
                           "events": [{"item_id": item, "query": None, "timestamp": 0.0} for item in body["history"]], "searches": 0}
    stand_in = UserStandIn(histories)
    threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    bodies_file, state_file = root / "fault-bodies.json", root / "fault-users.json"
    bodies_file.write_text(json.dumps(bodies))
    state_file.write_text(json.dumps([{"user_id": u, "k": 10} for u in histories]))
    row: dict = {"replicas": 2, "clients": FAULT_CLIENTS}
    started = time.perf_counter()
    serve.run(build({**overrides, "replicas": 2, "replica_cpus": 1.0, "swap_stagger_s": 0.5,
                     "streams_url": f"http://127.0.0.1:{stand_in.server_address[1]}"}, Layout.under(root)),
              name="gensar", route_prefix="/")
    row["start_seconds"] = round(time.perf_counter() - started, 1)
    with httpx.Client(base_url=url, timeout=60) as c:
        # Reference answers of a0 (serving) and a1 (the good version) to each body, to tell mixed answers.
        reference = {}
        token = overrides["admin_token"]
        for version in ("a1", None):
            c.post("/admin/pin", json={"task": "joint", "version": version},
                   headers={"Authorization": f"Bearer {token}"}).raise_for_status()
            expected = version or "a0"
            wait_for(lambda: all({t["version"] for t in m["tasks"].values()} == {expected} for m in per_replica(c).values()), 60)
            reference[expected] = [[(x["id"], x["score"]) for x in c.post("/recommend", json=b).raise_for_status().json()["items"]]
                                   for b in bodies]

        # Bad versions, then a good one, under load.
        publish_bad_versions(root)  # bad-sum promoted at once
        driver = run_driver(url, "/recommend", bodies_file, 600, FAULT_CLIENTS, record=True)
        time.sleep(2)
        refused_seconds = {}
        for version in BAD:
            if version != "bad-sum":
                registry.promote(version)
            refused_seconds[version] = wait_for(lambda: all(any(r["version"] == version for r in m["refused"])
                                                            for m in per_replica(c).values()), 60)
        good_at = time.time()
        registry.promote("a1")
        swap_seconds = wait_for(lambda: all({t["version"] for t in m["tasks"].values()} == {"a1"}
                                            for m in per_replica(c).values()), 120)
        views = per_replica(c)
        time.sleep(2)
        run = finish(driver)
        records = run["records"]
        mixed = 0
        for wall, _, status, version, index, _, items, _ in records:
            if status == 200:
                expected = reference.get(version)
                mixed += expected is None or len(items) != len(expected[index]) or any(
                    a[0] != b[0] or abs(a[1] - b[1]) > 1e-3 for a, b in zip(items, expected[index]))
        ok = [r for r in records if r[2] == 200]
        row["bad_versions"] = {
            "promoted": list(BAD), "then": "a1", "requests": len(records), "failed": len(records) - len(ok), "mixed": mixed,
            "answers_on_old_before_good": sum(r[3] == "a0" for r in ok if r[0] + r[1] < good_at),
            "answers_on_other_before_good": sum(r[3] != "a0" for r in ok if r[0] + r[1] < good_at),
            "answers_on_good": sum(r[3] == "a1" for r in ok),
            "refused_on_every_replica_seconds": {v: None if t is None else round(t, 1) for v, t in refused_seconds.items()},
            "refusal_reasons": sorted({(r["version"], r["reason"]) for m in views.values() for r in m["refused"]}),
            "good_served_everywhere_seconds": None if swap_seconds is None else round(swap_seconds, 1),
            "p99_ms": round(float(np.percentile([r[1] * 1000 for r in ok], 99)), 1) if ok else None}
        print("bad versions", row["bad_versions"], flush=True)

        # One replica SIGKILLed under load.
        pids = {replica: m["pid"] for replica, m in per_replica(c).items()}
        victim, pid = sorted(pids.items())[0]
        process = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        driver = run_driver(url, "/recommend", bodies_file, 600, FAULT_CLIENTS, record=True)
        time.sleep(seconds)

        def running() -> int:
            states = serve.status().applications["gensar"].deployments["GenSARServer"].replica_states
            return sum(n for state, n in states.items() if getattr(state, "value", state) == "RUNNING")

        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        recovery = wait_for(lambda: running() == 2 and victim not in (seen := per_replica(c)) and len(seen) == 2, 180)
        time.sleep(2)
        run = finish(driver)
        records = run["records"]
        failed = [r for r in records if r[2] != 200]
        meanwhile = [r for r in records if killed_at <= r[0] <= killed_at + (recovery or 0)]
        row["replica_kill"] = {
            "killed": process, "requests": len(records), "failed": len(failed),
            "failed_statuses": {str(s): sum(r[2] == s for r in failed) for s in sorted({r[2] for r in failed})},
            "failed_examples": sorted({r[7] for r in failed})[:3],
            "failed_after_kill_seconds_max": round(max((r[0] + r[1] - killed_at for r in failed), default=0.0), 2),
            "recovery_seconds": None if recovery is None else round(recovery, 1),
            "answered_meanwhile": sum(r[2] == 200 for r in meanwhile),
            "max_latency_ms": round(max(r[1] for r in records) * 1000, 1)}
        print("replica kill", row["replica_kill"], flush=True)

        # The user-state API killed (connections refused), then hung (connections taken, never answered).
        errors_before = user_state_errors(c)
        driver = run_driver(url, "/recommend", state_file, 600, FAULT_CLIENTS, record=True)
        time.sleep(seconds)
        down_at = time.time()
        stand_in.shutdown()
        stand_in.server_close()
        time.sleep(seconds)
        hung_at = time.time()
        hung = socket.socket()
        hung.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hung.bind(stand_in.server_address)
        hung.listen(4096)
        time.sleep(seconds)
        run = finish(driver)
        hung.close()
        records = run["records"]
        timeout = overrides.get("streams_timeout_s", ServingSettings().streams_timeout_s)

        def phase(lo: float, hi: float) -> dict:
            rows = [r for r in records if lo + 0.1 < r[0] and r[0] + r[1] < hi]
            ok = [r for r in rows if r[2] == 200]
            return {"answers": len(rows), "failed": len(rows) - len(ok),
                    "sources": {s: sum(r[5] == s for r in ok) for s in sorted({r[5] for r in ok})},
                    "p50_ms": round(float(np.percentile([r[1] * 1000 for r in ok], 50)), 1) if ok else None,
                    "max_ms": round(max(r[1] for r in ok) * 1000, 1) if ok else None}

        row["user_state_down"] = {"timeout_ms": timeout * 1000, "up": phase(0, down_at), "dead": phase(down_at, hung_at),
                                  "hung": phase(hung_at, float("inf")),
                                  "errors_counted": user_state_errors(c) - errors_before}
        print("user state down", row["user_state_down"], flush=True)
    serve.delete("gensar")
    return row


def user_state_errors(c) -> float:
    """gensar_serve_user_state_errors_total, summed over the replicas."""
    return sum(float(l.split()[-1]) for m in metrics_of(c) for l in m.splitlines()
               if l.startswith("gensar_serve_user_state_errors_total "))


def metrics_of(c, n: int = 2, tries: int = 300) -> list[str]:
    """/metrics of each replica."""
    seen: dict[str, str] = {}
    for _ in range(tries):
        r = c.get("/metrics")
        if r.status_code == 200:
            replica = next(l.split('"')[1] for l in r.text.splitlines() if l.startswith("gensar_serve_replica_info{"))
            seen[replica] = r.text
        if len(seen) >= n:
            break
    return list(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=8.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--swaps", type=int, default=2, help="promotions per swap round")
    parser.add_argument("--faults-only", action="store_true",
                        help="run only the fault rows and merge them into the committed results, other rows untouched")
    parser.add_argument("--drive")
    parser.add_argument("--path")
    parser.add_argument("--bodies")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.drive:
        print(json.dumps(drive(args.drive, args.path, json.loads(Path(args.bodies).read_text()), args.seconds, args.clients,
                               record=args.record, until_stdin=args.record)))
        return
    if args.faults_only:
        fault_rows_only()
        return

    from gensar.machine import machine

    root = Path(tempfile.mkdtemp(prefix="gensar-serving-bench-"))
    swap_rounds = args.rounds
    adapters = 1 + len(args.replicas) * swap_rounds * args.swaps
    overrides, search, rec = build_world(root, adapters)
    bodies = {"/search": root / "search.json", "/recommend": root / "rec.json"}
    bodies["/search"].write_text(json.dumps(search))
    bodies["/recommend"].write_text(json.dumps(rec))
    url = start_serve()
    import httpx
    import ray
    from ray import serve

    from learner.registry import LocalArtifactStore, Registry
    from serving.app import build

    registry = Registry(LocalArtifactStore(Layout.under(root).registry))
    next_adapter = 1
    results: dict = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k not in ("drive", "path", "bodies")},
                     "world": {"items": 9742, "model": "ModelSettings() default, random weights", "beam": 30,
                               "search_bodies": len(search), "rec_bodies": len(rec)}, "replicas": {}}
    for replicas in args.replicas:
        started = time.perf_counter()
        serve.run(build({**overrides, "replicas": replicas, "replica_cpus": 2 / replicas}, Layout.under(root)),
                  name="gensar", route_prefix="/")
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
    results["faults"] = fault_rows(url)
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)
    results["cuda"] = "not measured: no GPU in this session (see bench/results/decoding_latency for the decoding rows)"
    write(results)


def fault_rows(url: str) -> dict:
    """The fault rows on their own world (a0 promoted, a1 the good version to swap in)."""
    from gensar.machine import machine

    root = Path(tempfile.mkdtemp(prefix="gensar-serving-faults-"))
    try:
        overrides, _, rec = build_world(root, 2)
        return {"machine": machine(), **faults(url, root, overrides, rec, 8.0)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fault_rows_only() -> None:
    """Measure the fault rows and merge them into bench/results/serving_load.json (and its
    markdown), leaving every other row as it was measured."""
    import ray
    from ray import serve

    from bench.output import RESULTS

    results = json.loads((RESULTS / "serving_load.json").read_text())
    url = start_serve()
    try:
        results["faults"] = fault_rows(url)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(results["faults"]), flush=True)  # the figures, whatever happens next
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
    if "faults" in results:
        lines += fault_lines(results["faults"])
    lines += ["", f"CUDA: {results['cuda']}.", "",
              "Load seconds: fetch + checksum + merge into a copy of the base + identifier map + constraint + warm-up, "
              "beside the serving version; swap seconds: the reference assignment that makes it serve."]
    write_results("serving_load", results, lines)



def sources(phase: dict) -> str:
    return ", ".join(f"{n} {source}" for source, n in phase["sources"].items())


def fault_lines(f: dict) -> list[str]:
    b, k, u = f["bad_versions"], f["replica_kill"], f["user_state_down"]
    reasons = ", ".join(f"{v} {r}" for v, r in b["refusal_reasons"])
    lines = ["", f"Faults ({f['machine']['date']}, `--faults-only`; {f['replicas']} replicas, {f['clients']} closed-loop clients on /recommend, "
             "tests/test_serving_faults.py asserts the same on the tiny world):", "",
             "| fault | requests | failed | what clients saw | figures |", "|---|---|---|---|---|",
             f"| {len(b['promoted'])} bad versions promoted ({', '.join(b['promoted'])}), then {b['then']} | {b['requests']} | "
             f"{b['failed']} | every answer before {b['then']} on the old version ({b['answers_on_old_before_good']}, "
             f"{b['answers_on_other_before_good']} on another); {b['mixed']} mixed | refused by every replica within "
             f"{max(t for t in b['refused_on_every_replica_seconds'].values() if t is not None)} s ({reasons}); "
             f"{b['then']} on every replica {b['good_served_everywhere_seconds']} s after its promotion; p99 {b['p99_ms']} ms |",
             f"| one replica SIGKILLed | {k['requests']} | {k['failed']} | "
             f"{', '.join(f'{n} x {s}' for s, n in k['failed_statuses'].items()) or 'nothing failed'}"
             f"{' (the proxy, for requests in flight on the killed replica)' if k['failed'] else ''}; "
             f"{k['answered_meanwhile']} answered while it restarted; slowest answer {k['max_latency_ms']} ms | "
             f"2 replicas running and answering again after {k['recovery_seconds']} s; failures end "
             f"{k['failed_after_kill_seconds_max']} s after the kill |",
             f"| user-state API killed, then hung | {u['dead']['answers'] + u['hung']['answers']} | "
             f"{u['dead']['failed'] + u['hung']['failed']} | answers as for a user without history: dead {sources(u['dead'])}, "
             f"hung {sources(u['hung'])} (up: {sources(u['up'])}) | p50/max ms up {u['up']['p50_ms']}/{u['up']['max_ms']}, "
             f"dead {u['dead']['p50_ms']}/{u['dead']['max_ms']}, hung {u['hung']['p50_ms']}/{u['hung']['max_ms']} "
             f"(timeout {u['timeout_ms']:.0f} ms); {u['errors_counted']:.0f} counted in gensar_serve_user_state_errors_total |"]
    return lines


if __name__ == "__main__":
    main()
