"""Prequential (test-then-train) evaluation: before the system learns from an event, the
live endpoint and a frozen copy of the bootstrap model predict it, from the same history.

Search events are asked as their query, interactions as the user's next item; a hit is the
event's item in the top 10. Both are given the user's history explicitly (every earlier
event of the user, bootstrap part included), so the comparison isolates the model versions
and does not depend on how far the stream worker has caught up."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from evaluation.metrics import summarize as bootstrap
from gensar.data import UserEvent, target_item
from gensar.layout import Layout
from serving.engine import Engine, Query, item_history

K = 10
HISTORY = 50  # items per request: the stream workers' default history length


def rank_metrics(ranked: list[str], target: str) -> tuple[float, float]:
    """(hit@10, NDCG@10) of one prediction."""
    top = ranked[:K]
    if target not in top:
        return 0.0, 0.0
    return 1.0, 1.0 / math.log2(top.index(target) + 2)


@dataclass
class Record:
    at: float  # wall time
    event_time: float
    task: str  # "search" | "rec"
    live_version: str
    live_hit: float
    live_ndcg: float
    frozen_hit: float
    frozen_ndcg: float


class Histories:
    """Every user's interacted items so far, oldest first (what both predictors are given)."""

    def __init__(self, events: list[UserEvent] = ()):
        self.items: dict[str, list[str]] = defaultdict(list)
        for e in events:
            self.add(e)

    def add(self, event: UserEvent) -> None:
        if event.type == "interaction":
            self.items[event.user_id].append(event.item_id)

    def of(self, user_id: str) -> list[str]:
        return self.items.get(user_id, [])[-HISTORY:]


def frozen_engine(layout: Layout, data_dir: Path, base_name: str) -> Engine:
    """An in-process engine over the base model only: it never follows the registry."""
    from gensar.data import load
    from serving.bundle import Loader
    from serving.catalogue import Catalogue
    from serving.settings import ServingSettings

    settings = ServingSettings(catalogue=data_dir, base_model=base_name, device="cpu", dense=False)
    catalogue = Catalogue.of(load(data_dir))
    loader = Loader(settings, layout, catalogue)
    engine = Engine(loader, catalogue, None, settings.beam_size)
    base = loader.load(None)
    engine.slots = {"search": base, "rec": base}
    return engine


class Evaluator:
    """Asks both predictors about a batch of events, appends the records to a JSON-lines file.
    The live endpoint gets the batch as concurrent requests (its replicas batch them, as
    they would real traffic); the frozen copy decodes it as one batch per task."""

    def __init__(self, live_url: str, frozen: Engine, path: Path, concurrency: int = 16):
        self.client = httpx.Client(base_url=live_url, timeout=60,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="gensar-prequential")
        self.frozen, self.path = frozen, path
        self.records: list[Record] = [Record(**json.loads(line)) for line in path.read_text().splitlines()] \
            if path.exists() else []

    def ask_live(self, event: UserEvent, history: list[str]) -> dict:
        if event.type == "search":
            answer = self.client.post("/search", json={"query": event.query[:500], "k": K})
        else:
            answer = self.client.post("/recommend", json={"user_id": event.user_id, "k": K, "history": history})
        answer.raise_for_status()
        return answer.json()

    def ask_frozen(self, asked: list[tuple[UserEvent, list[str]]]) -> list[list[str]]:
        searches = [i for i, (e, _) in enumerate(asked) if e.type == "search"]
        recs = [i for i, (e, _) in enumerate(asked) if e.type != "search"]
        ranked: list[list[str]] = [[] for _ in asked]
        if searches:
            answers = self.frozen.search([Query("search", K, query=asked[i][0].query[:500]) for i in searches])
            for i, answer in zip(searches, answers):
                ranked[i] = [item.id for item in answer.items]
        if recs:
            answers = self.frozen.recommend([Query("rec", K, history=item_history(asked[i][1])) for i in recs])
            for i, answer in zip(recs, answers):
                ranked[i] = [item.id for item in answer.items]
        return ranked

    def predict(self, asked: list[tuple[UserEvent, list[str]]], now: float) -> list[Record]:
        """`asked`: events, each with the user's history before it (`Histories.of`)."""
        live = [self.pool.submit(self.ask_live, event, history) for event, history in asked]
        frozen = self.ask_frozen(asked)
        records = []
        for (event, _), answer, frozen_ranked in zip(asked, (f.result() for f in live), frozen):
            target = target_item(event)
            live_hit, live_ndcg = rank_metrics([i["id"] for i in answer["items"]], target)
            frozen_hit, frozen_ndcg = rank_metrics(frozen_ranked, target)
            records.append(Record(now, event.timestamp, "search" if event.type == "search" else "rec",
                                  answer["model_version"], live_hit, live_ndcg, frozen_hit, frozen_ndcg))
        self.records += records
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r.__dict__) + "\n" for r in records)
        return records

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


def summarize(records: list[Record]) -> dict[str, dict[str, float]]:
    """Per task: events, live and frozen HR@10 / NDCG@10 over every record."""
    out = {}
    for task in ("search", "rec"):
        rows = [r for r in records if r.task == task]
        n = len(rows) or 1
        out[task] = {"events": len(rows),
                     "live_hr10": sum(r.live_hit for r in rows) / n, "frozen_hr10": sum(r.frozen_hit for r in rows) / n,
                     "live_ndcg10": sum(r.live_ndcg for r in rows) / n,
                     "frozen_ndcg10": sum(r.frozen_ndcg for r in rows) / n}
    return out


def differences(records: list[Record], seed: int = 0) -> dict[str, dict[str, float | list[float]]]:
    """Per task: live minus frozen HR@10 and NDCG@10, each with a paired 95% bootstrap
    interval (both predictors answered the same events, so the events are resampled once)."""
    out = {}
    for task in ("search", "rec"):
        rows = [r for r in records if r.task == task]
        if not rows:
            continue
        per_event = {"HR@10": np.array([r.live_hit - r.frozen_hit for r in rows]),
                     "NDCG@10": np.array([r.live_ndcg - r.frozen_ndcg for r in rows])}
        means, ci = bootstrap(per_event, seed=seed, names=tuple(per_event))
        out[task] = {f"{m}{suffix}": value for m in per_event for suffix, value in (("", means[m]), (" ci95", ci[m]))}
    return out
