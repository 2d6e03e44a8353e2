"""Adapter layout: one joint LoRA adapter, or one per task (a search adapter and a rec
adapter over the one base)? Both refreshed the way the learner refreshes, then scored on
the events that follow.

World: the demo's bootstrap (`demo.bootstrap`, profile FULL): the 3,000 most active items
of the data, an identifier map and a base model from the first 70% of their events by time
(kept in `--state` and reused by a later run). Stream: the rest, turned into training
samples exactly as the stream worker does (`streams.state`: each user's state from every
earlier event, bootstrap included; merged history bounded by `StreamSettings`).

Method. The first `--train-events` stream events' samples enter a `learner.samples.
SampleBuffer` in steps of `--refresh-every` samples; after each step the buffer's snapshot
goes to one `learner.refresh.Refresher` per adapter of the layout (joint: one, trained on
every sample and gated on both tasks; per-task: search, then rec, each on its own task's
samples and gated on it), and the buffer retires it: `learner.service.run` without Ray and
Kafka, with the learner's defaults otherwise and a pinned identifier map. Then the version
each layout serves for each task, and the frozen base, are scored on the samples of the
next `--test-events` events (default: every later event; never trained on; searches come in
bursts, so a short test span holds few): full catalogue and the paper protocol (the
true item among 99 negatives: random items the user never touched for rec, BM25 hard
negatives for search), 95% bootstrap CIs, rec cases a seeded sample of `--rec-cases`.

    .venv/bin/python -m bench.adapter_layout [--state DIR] [--train-events 12000] [--test-events N]

Results: bench/results/adapter_layout.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import tempfile
import time
from pathlib import Path

from bench.output import write_results
from demo.bootstrap import BASE_NAME, ensure_base_model, ensure_identifiers, prepare_world
from demo.settings import FULL
from evaluation.baselines import BM25Search
from evaluation.generative import GenerativeSystem
from evaluation.protocols import paper_candidates
from evaluation.report import markdown_table, result_rows
from gensar.events import TrainingSample
from gensar.layout import Layout
from gensar.machine import machine
from gensar.settings import Settings
from identifiers.semantic import item_texts
from learner.lora import merged
from learner.refresh import Refresher, as_case
from learner.registry import LocalArtifactStore, Registry
from learner.samples import SampleBuffer
from learner.service import next_version
from learner.settings import LearnerSettings
from model.artifact import GenSARModel
from model.tasks import Renderer
from streams.settings import StreamSettings
from streams.state import UserState, apply_user_event, samples_for

LAYOUTS = {"joint": ("joint",), "per-task": ("search", "rec")}


def stream_samples(bootstrap, stream, settings: StreamSettings) -> list[list[TrainingSample]]:
    """The samples of each stream event, as a stream worker that saw every event computes them."""
    states: dict[str, UserState] = {}
    out = []
    for offset, event in enumerate([*bootstrap, *stream]):
        state = states.get(event.user_id, UserState())
        if offset >= len(bootstrap):
            out.append(samples_for(state, event, settings.history_length, settings.search_history_length,
                                   settings.sample_events))
        states[event.user_id] = apply_user_event(state, event, "user-events", offset, settings.history_length,
                                                 settings.search_history_length)
    return out


def refresh_layout(layout: str, base: GenSARModel, renderer: Renderer, samples: list[TrainingSample],
                   settings: LearnerSettings, registry_root: Path, log) -> dict:
    """Refresh in steps like the learner; returns the registry and what each refresh decided."""
    registry = Registry(LocalArtifactStore(registry_root))
    refreshers = [Refresher(base, BASE_NAME, renderer, registry, settings, task) for task in LAYOUTS[layout]]
    buffer = SampleBuffer(window=settings.window, replay=settings.replay, seed=settings.seed)
    decisions, seconds = [], []
    for start in range(0, len(samples), settings.refresh_every_samples):
        for sample in samples[start: start + settings.refresh_every_samples]:
            buffer.add(sample)
        buffer.bound()
        recent, replayed = buffer.take()
        for refresher in refreshers:
            version = next_version(registry)
            began = time.perf_counter()
            decision = refresher.run(recent, replayed, version)
            seconds.append(time.perf_counter() - began)
            decisions.append({"version": version, "task": refresher.task, "status": decision.status,
                              "reason": decision.reason, "seconds": round(seconds[-1], 1)})
            log(f"{layout} {version} ({refresher.task}): {decision.status} in {seconds[-1]:.0f}s - {decision.reason}")
        buffer.retire()
    return {"registry": registry, "decisions": decisions, "refresh_seconds_total": round(sum(seconds), 1)}


def serving_model(base: GenSARModel, registry: Registry | None, task: str, layout: str, tmp: Path) -> tuple[GenSARModel, str]:
    version = registry.serving("joint" if layout == "joint" else task) if registry else None
    if version is None:
        return base, "base"
    adapter_dir = registry.fetch(version, tmp / version)[1]
    return dataclasses.replace(base, model=merged(base.model, adapter_dir)), version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--state", type=Path, default=Path(tempfile.gettempdir()) / "gensar-adapter-layout")
    parser.add_argument("--train-events", type=int, default=12000)  # the demo's replay
    parser.add_argument("--test-events", type=int, default=None)  # default: all the rest
    parser.add_argument("--refresh-every", type=int, default=2000)
    parser.add_argument("--rec-cases", type=int, default=600)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {message}", flush=True)

    settings = Settings()
    root = args.state.resolve()
    (root / "demo").mkdir(parents=True, exist_ok=True)
    world = prepare_world((args.data or settings.data_dir).resolve(), root, FULL.model_copy(update={"replay_events": None}))
    layout = Layout.under(root)
    idmap = ensure_identifiers(world, layout, FULL, log)
    ensure_base_model(world, idmap, layout, FULL, log)
    base = GenSARModel.load(layout.base_model(BASE_NAME))
    renderer = Renderer(base.vocab, idmap, world.ds, item_texts(world.ds, []), base.render)
    per_event = stream_samples(world.bootstrap, world.stream, StreamSettings())
    train = [s for samples in per_event[: args.train_events] for s in samples]
    test = [s for samples in per_event[args.train_events: args.train_events + (args.test_events or len(per_event))] for s in samples
            if s.target_item in idmap]
    rec_test = [s for s in test if s.task == "rec"]
    rec_test = random.Random(args.seed).sample(rec_test, min(args.rec_cases, len(rec_test)))
    test = [s for s in test if s.task == "search"] + sorted(rec_test, key=lambda s: s.timestamp)
    log(f"stream: {len(train):,} training samples from {args.train_events:,} events; test: "
        f"{sum(s.task == 'search' for s in test)} search, {len(rec_test)} rec cases")

    learner = LearnerSettings(refresh_every_samples=args.refresh_every, seed=args.seed)
    shutil.rmtree(root / "adapter-layout", ignore_errors=True)  # each run refreshes from the base
    runs = {layout: refresh_layout(layout, base, renderer, train, learner, root / "adapter-layout" / layout, log)
            for layout in LAYOUTS}

    index = {item: i for i, item in enumerate(world.ds.items)}
    texts = item_texts(world.ds, world.bootstrap)
    cases = {task: [as_case(s) for s in test if s.task == task] for task in ("search", "rec")}
    candidates = {task: paper_candidates(world.ds, index, cases[task], BM25Search([texts[i] for i in world.ds.items]),
                                         seed=args.seed).rows for task in cases}
    rows, served = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for system, registry, layout in [("base (frozen)", None, "joint"),
                                         *[(f"lora {layout}", runs[layout]["registry"], layout) for layout in LAYOUTS]]:
            for task in ("search", "rec"):
                gm, version = serving_model(base, registry, task, layout, Path(tmp))
                served[f"{system}/{task}"] = version
                scorer = GenerativeSystem(system, task, gm, renderer, index, beam_size=args.beam)
                began = time.perf_counter()
                paper = scorer.score(cases[task], candidates[task])
                rows += result_rows(system, task, cases[task], candidates[task], paper, index, "paper", args.seed)
                full = scorer.score(cases[task])
                rows += result_rows(system, task, cases[task], None, full, index, "full", args.seed)
                log(f"{system} {task} ({version}) scored in {time.perf_counter() - began:.0f}s")

    report = {"machine": machine(),
              "args": {k: str(v) for k, v in vars(args).items()},
              "learner": {"refresh_every_samples": learner.refresh_every_samples, "window": learner.window,
                          "replay": learner.replay, "epochs": learner.training.epochs,
                          "holdout_fraction": learner.holdout_fraction, "gate_margin": learner.gate_margin},
              "train_samples": {"search": sum(s.task == "search" for s in train), "rec": sum(s.task == "rec" for s in train)},
              "layouts": {layout: {k: v for k, v in run.items() if k != "registry"} for layout, run in runs.items()},
              "test_events": len(per_event[args.train_events:][: args.test_events]), "served": served, "results": rows, "wall_seconds": round(time.perf_counter() - t0, 1)}
    text = markdown(report)
    write_results("adapter_layout", report, text)
    print(text)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Adapter layout: joint vs per-task LoRA ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB. "
             f"Refreshes every {r['learner']['refresh_every_samples']} samples over "
             f"{r['args']['train_events']} stream events ({r['train_samples']['search']} search + "
             f"{r['train_samples']['rec']} rec samples), learner defaults otherwise; scored on the next "
             f"{r['test_events']} events. Wall {r['wall_seconds'] / 60:.1f} min.", "",
             markdown_table(r["results"], metrics=("HR@1", "HR@10", "NDCG@10", "MRR")), "",
             "| layout | refreshes (promoted) | refresh time total s | serves search | serves rec |", "|---|---|---|---|---|"]
    for layout, run in r["layouts"].items():
        promoted = sum(d["status"] == "promoted" for d in run["decisions"])
        lines.append(f"| {layout} | {len(run['decisions'])} ({promoted}) | {run['refresh_seconds_total']} | "
                     f"{r['served'][f'lora {layout}/search']} | {r['served'][f'lora {layout}/rec']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
