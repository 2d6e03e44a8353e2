"""The demo from start to summary: bootstrap, start the stack, replay with prequential
evaluation, drain, report. Progress is saved after every replayed chunk, so an interrupted
demo resumes at the next chunk (events the broker acknowledged are never sent twice: the
position is saved after the acknowledgement)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import httpx
from tqdm import tqdm

from gensar.artifacts import write_file
from gensar.data import target_item
from gensar.layout import Layout
from gensar.replay import make_producer, replay

from demo.baselines import Baselines, choose_window
from demo.bootstrap import BASE_NAME, World, ensure_base_model, ensure_identifiers, prepare_world
from demo.prequential import Evaluator, Histories, frozen_engine
from demo.report import Summary, write_report
from demo.settings import DemoSettings
from demo.status import StatusServer, create_app
from demo.stack import Stack


def save_json(path: Path, value) -> None:
    write_file(path, json.dumps(value, indent=1))


def reset_state(root: Path) -> None:
    from gensar.settings import BrokerSettings, Settings
    from infra.broker import KafkaBroker

    if (root / "kafka").exists():
        ports = json.loads((root / "demo" / "ports.json").read_text()) if (root / "demo" / "ports.json").exists() else {}
        KafkaBroker(root / "kafka", port=ports.get("broker", 9092), controller_port=ports.get("controller", 9093),
                    version=BrokerSettings().kafka_version, cache_dir=Settings().cache_dir).stop()
    shutil.rmtree(root, ignore_errors=True)


class Versions:
    """Which version serves, seen from the live endpoint: when each one first answered."""

    def __init__(self, url: str, path: Path):
        self.url, self.path = url, path
        self.first_served: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def poll(self) -> None:
        models = httpx.get(f"{self.url}/models", timeout=10).json()
        changed = False
        for task, served in models["tasks"].items():
            key = f"{task}:{served['version']}"
            if key not in self.first_served:
                self.first_served[key] = {"task": task, "version": served["version"], "loaded_at": served["loaded_at"],
                                          "seen_at": time.time()}
                changed = True
        if changed:
            save_json(self.path, self.first_served)


def streaming_baselines(world: World, settings: DemoSettings, done: int, log) -> tuple[Baselines, dict]:
    """The baselines, fed every event the live system learned from before the replay's
    position `done` (the bootstrap the base model trained on, then the replayed part), and
    how their popularity window was set."""
    if settings.popularity_window is not None:
        window, how = settings.popularity_window, {"popularity_window": settings.popularity_window,
                                                   "chosen_by": "setting"}
    else:
        fraction = settings.prior_fraction or 0.1  # the base model's held-out tail, when it has one
        tail_from = int(len(world.bootstrap) * (1 - fraction))
        window, tried = choose_window(world.ds, world.bootstrap, tail_from)
        how = {"popularity_window": window, "chosen_by": f"best HR@10 on the bootstrap's last {fraction:.0%} "
               f"({len(world.bootstrap) - tail_from} events)", "tried_hr10": tried}
        log(f"popularity baseline: window {window} interactions ({how['chosen_by']})")
    baselines = Baselines(world.ds, window)
    baselines.learn(world.bootstrap + world.stream[:done])
    return baselines, how


class StateMismatch(ValueError):
    """A state directory made with other demo settings: resuming would mix two runs."""


def check_resumable(path: Path, settings: DemoSettings) -> None:
    """Record the settings a state directory is made with; refuse to resume it with others."""
    if path.exists():
        changed = DemoSettings.model_validate_json(path.read_text()).changes_to(settings)
        if changed:
            listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise StateMismatch(f"{path.parent.parent} was made with other demo settings ({listed}): "
                                "resume it with the same ones, or start over with --reset")
    else:
        write_file(path, settings.model_dump_json(indent=1))


def adapters_served(versions: Versions) -> list[str]:
    return [v["version"] for v in versions.first_served.values() if not v["version"].startswith("base:")]


def run_demo(source: Path, root: Path, settings: DemoSettings, log=print,
             on_replayed: Callable[[str], None] | None = None) -> Summary:
    """`on_replayed(status_url)` runs after the replay while everything still serves (tests
    look at the status page there)."""
    # Library switches, not our configuration: no model hub, no Ray token on loopback.
    os.environ.update({"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"})
    layout = Layout.under(root)
    started = time.time()
    (root / "demo").mkdir(parents=True, exist_ok=True)
    check_resumable(root / "demo" / "settings.json", settings)
    world = prepare_world(source, root, settings)
    log(f"data {world.data_dir}: {len(world.ds.items):,} items; bootstrap {len(world.bootstrap):,} events, "
        f"stream {len(world.stream):,} events")
    idmap = ensure_identifiers(world, layout, settings, log)
    ensure_base_model(world, idmap, layout, settings, log)
    progress_path = root / "demo" / "progress.json"
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else {
        "catalogue": False, "replayed": 0, "produced_at": []}
    with Stack(root, layout, world.data_dir, BASE_NAME, settings, log) as stack:
        producer = make_producer(stack.kafka)
        status = StatusServer(create_app(root, layout, stack.serve_url, stack.streams_metrics_url), stack.ports["status"]).start()
        log(f"status page: {status.url}")
        try:
            if not progress["catalogue"]:
                replay(list(world.ds.items.values()), stack.kafka, producer=producer, progress=False)
                progress["catalogue"] = True
                save_json(progress_path, progress)
            done = progress["replayed"]
            histories = Histories(world.bootstrap + world.stream[:done])
            bootstrap_items = {target_item(e) for e in world.bootstrap}
            baselines, baseline_settings = streaming_baselines(world, settings, done, log)
            evaluator = Evaluator(stack.serve_url, frozen_engine(layout, world.data_dir, BASE_NAME), baselines,
                                  root / "demo" / "prequential.jsonl")
            versions = Versions(stack.serve_url, root / "demo" / "served.json")
            first_ts, last_ts = world.stream[0].timestamp, world.stream[-1].timestamp
            speed = max(last_ts - first_ts, 1.0) / settings.replay_seconds  # event seconds per wall second
            clock0 = time.monotonic() - (world.stream[min(done, len(world.stream) - 1)].timestamp - first_ts) / speed
            bar = tqdm(total=len(world.stream), initial=done, desc="replay + prequential", unit="ev", mininterval=0.5)
            while done < len(world.stream):
                stack.alive()
                chunk = world.stream[done: done + settings.chunk_events]
                if (wait := clock0 + (chunk[0].timestamp - first_ts) / speed - time.monotonic()) > 0:
                    time.sleep(wait)  # the accelerated clock: never ahead of event time
                versions.poll()
                asked, items = [], []
                for i, event in enumerate(chunk, start=done):
                    if event.type == "search" or i % settings.eval_every == 0:  # searches are rare: all
                        asked.append((event, histories.of(event.user_id)))
                        items.append(histories.items_of(event.user_id))
                    histories.add(event)
                evaluator.predict(asked, items, time.time(), bootstrap_items)  # test ...
                replay(chunk, stack.kafka, producer=producer, progress=False)  # ... then train
                evaluator.learn(chunk)  # (the baselines)
                done += len(chunk)
                progress["replayed"] = done
                progress["produced_at"].append([chunk[-1].timestamp, time.time()])
                save_json(progress_path, progress)
                bar.update(len(chunk))
            bar.close()
            if on_replayed is not None:
                on_replayed(status.url)
            log(f"replay done; waiting up to {settings.drain_seconds:.0f}s for the learner's pending refresh")
            drain_until = time.monotonic() + settings.drain_seconds
            while time.monotonic() < drain_until and not adapters_served(versions):
                stack.alive()
                time.sleep(2)
                versions.poll()
            evaluator.close()
        finally:
            producer.close()
            status.stop()
        summary = Summary.collect(root, layout, evaluator.records, versions.first_served, progress["produced_at"],
                                  wall_seconds=time.time() - started, baselines=baseline_settings)
    write_report(root / "demo" / "report", summary, evaluator.records)
    return summary
