"""Prequential (test-then-train) evaluation: before the system learns from an event, the
live endpoint, a frozen copy of the bootstrap model and the streaming baselines
(demo.baselines) predict it, from the same history.

Search events are asked as their query, interactions as the user's next item; a hit is the
event's item in the top 10 of the whole catalogue. All are given the user's history
explicitly (every earlier event of the user, bootstrap part included), so the comparison
isolates the systems and does not depend on how far the stream worker has caught up.
The baselines learn from a chunk once it was predicted, as the live system does once it is
produced."""

from __future__ import annotations

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from evaluation.metrics import expected_metrics, summarize as bootstrap
from gensar.data import UserEvent, target_item
from gensar.layout import Layout
from serving.engine import Engine, Query, queries_of, request_history
from serving.schemas import Searched

from demo.baselines import Baselines

K = 10
HISTORY = 50  # events per request: the stream workers' default history length
QUERY_CHARS = 500  # within the API's query limit


def rank_metrics(ranked: list[str], target: str) -> tuple[float, float]:
    """(hit@10, NDCG@10) of one ranked answer, by evaluation.metrics (an answer is a strict
    order: no ties; a target outside it has at least K items above it)."""
    top = ranked[:K]
    better = top.index(target) if target in top else K
    metrics = expected_metrics(np.array([better]), np.array([0]))
    return float(metrics["HR@10"][0]), float(metrics["NDCG@10"][0])


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
    baselines: dict[str, list[float]] = field(default_factory=dict)  # baseline -> [hit@10, NDCG@10]
    new_item: bool = False  # the target is an item first seen in the stream (no bootstrap event has it)

    def metrics(self, system: str) -> tuple[float, float] | None:
        """(hit@10, NDCG@10) of "live", "frozen" or a baseline; None if it did not answer."""
        if system in ("live", "frozen"):
            return getattr(self, f"{system}_hit"), getattr(self, f"{system}_ndcg")
        found = self.baselines.get(system)
        return tuple(found) if found is not None else None


HistoryItem = str | dict  # an interaction's item id, or a search's {"item_id", "query"} (serving.schemas.History)


class Histories:
    """Every user's events so far, oldest first, as the stream workers keep them (a search
    as its query and first clicked item: streams.state.merged_history): what the models are
    given. The baselines read the same entries' items (`items_of`)."""

    def __init__(self, events: list[UserEvent] = ()):
        self.entries: dict[str, list[HistoryItem]] = defaultdict(list)
        for e in events:
            self.add(e)

    def add(self, event: UserEvent) -> None:
        if event.type == "interaction":
            self.entries[event.user_id].append(event.item_id)
        elif event.clicked_items:
            self.entries[event.user_id].append({"item_id": event.clicked_items[0], "query": event.query[:QUERY_CHARS]})

    def of(self, user_id: str) -> list[HistoryItem]:
        return self.entries.get(user_id, [])[-HISTORY:]

    def items_of(self, user_id: str) -> list[str]:
        """The items of `of(user_id)`: an interaction's, a search's clicked one."""
        return [e if isinstance(e, str) else e["item_id"] for e in self.of(user_id)]


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
    """Asks every system about a batch of events, appends the records to a JSON-lines file.
    The live endpoint gets the batch as concurrent requests (its replicas batch them, as
    they would real traffic); the frozen copy decodes it as one batch per task; the
    baselines answer in process (they are cheap)."""

    def __init__(self, live_url: str, frozen: Engine, baselines: Baselines, path: Path, concurrency: int = 16):
        self.client = httpx.Client(base_url=live_url, timeout=60,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="gensar-prequential")
        self.frozen, self.baselines, self.path = frozen, baselines, path
        self.records: list[Record] = [Record(**json.loads(line)) for line in path.read_text().splitlines()] \
            if path.exists() else []

    def ask_live(self, event: UserEvent, history: list[HistoryItem]) -> dict:
        if event.type == "search":
            body = {"query": event.query[:QUERY_CHARS], "user_id": event.user_id, "k": K, "history": history}
            answer = self.client.post("/search", json=body)
        else:
            answer = self.client.post("/recommend", json={"user_id": event.user_id, "k": K, "history": history})
        answer.raise_for_status()
        return answer.json()

    def ask_frozen(self, asked: list[tuple[UserEvent, list[HistoryItem]]]) -> list[list[str]]:
        def query(event: UserEvent, history: list[HistoryItem]) -> Query:
            entries = request_history(e if isinstance(e, str) else Searched(**e) for e in history)
            if event.type == "search":
                return Query("search", K, history=entries, query=event.query[:QUERY_CHARS])
            return Query("rec", K, history=entries, search_history=queries_of(entries))

        ranked: list[list[str]] = [[] for _ in asked]
        for task, decode in (("search", self.frozen.search), ("rec", self.frozen.recommend)):
            rows = [i for i, (e, _) in enumerate(asked) if (e.type == "search") == (task == "search")]
            if rows:
                for i, answer in zip(rows, decode([query(*asked[i]) for i in rows])):
                    ranked[i] = [item.id for item in answer.items]
        return ranked

    def predict(self, asked: list[tuple[UserEvent, list[HistoryItem]]], items: list[list[str]],
                now: float, seen: set[str] = frozenset()) -> list[Record]:
        """`asked`: events, each with the user's history before it (`Histories.of`), for the
        models; `items`: the items of those histories (`Histories.items_of`), for
        the baselines; `seen`: the items the bootstrap has (any other target is new)."""
        live = [self.pool.submit(self.ask_live, event, history) for event, history in asked]
        frozen = self.ask_frozen(asked)
        baselines = self.baselines.answer([(event, mine) for (event, _), mine in zip(asked, items)])
        records = []
        for (event, _), answer, frozen_ranked, others in zip(asked, (f.result() for f in live), frozen, baselines):
            target = target_item(event)
            live_hit, live_ndcg = rank_metrics([i["id"] for i in answer["items"]], target)
            frozen_hit, frozen_ndcg = rank_metrics(frozen_ranked, target)
            records.append(Record(now, event.timestamp, "search" if event.type == "search" else "rec",
                                  answer["model_version"], live_hit, live_ndcg, frozen_hit, frozen_ndcg, others,
                                  new_item=target not in seen))
        self.records += records
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r.__dict__) + "\n" for r in records)
        return records

    def learn(self, chunk: list[UserEvent]) -> None:
        """The baselines' training step: after the chunk was predicted and produced."""
        self.baselines.learn(chunk)

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


def systems_of(records: list[Record]) -> list[str]:
    """"live", "frozen", then the baselines that answered any of `records`, by name."""
    return ["live", "frozen", *sorted({name for r in records for name in r.baselines})]


def by_system(records: list[Record]) -> dict[str, dict[str, dict[str, float]]]:
    """Per task, per system: n (cases it answered), HR@10 and NDCG@10 over them."""
    out = {}
    for task in ("search", "rec"):
        rows = [r for r in records if r.task == task]
        out[task] = {}
        for system in systems_of(rows):
            answered = [m for m in (r.metrics(system) for r in rows) if m is not None]
            n = len(answered) or 1
            out[task][system] = {"n": len(answered), "HR@10": sum(h for h, _ in answered) / n,
                                 "NDCG@10": sum(g for _, g in answered) / n}
    return out


def new_items(records: list[Record]) -> dict[str, dict]:
    """Per task: the cases whose target no bootstrap event has (an item first seen in the
    stream), their share of all cases, and each system's HR@10 on them with the cases it
    found. The frozen model never trained on these items; a live one can only after a
    refresh that saw them, with an identifier from the collaborative updater."""
    out = {}
    for task in ("search", "rec"):
        rows = [r for r in records if r.task == task]
        new = [r for r in rows if r.new_item]
        systems = {}
        for system in systems_of(new) if new else ():
            hits = [m[0] for m in (r.metrics(system) for r in new) if m is not None]
            systems[system] = {"n": len(hits), "HR@10": sum(hits) / (len(hits) or 1), "found": sum(hits)}
        out[task] = {"cases": len(rows), "new": len(new), "share": len(new) / (len(rows) or 1), "systems": systems}
    return out


def versus_live(records: list[Record], seed: int = 0) -> dict[str, dict[str, dict[str, float | list[float]]]]:
    """Per task, per other system: live minus it in HR@10 and NDCG@10, each with a paired 95%
    bootstrap interval over the events both answered (resampled once for both metrics)."""
    out = {}
    for task in ("search", "rec"):
        rows = [r for r in records if r.task == task]
        out[task] = {}
        for system in systems_of(rows)[1:]:
            pairs = [(r.metrics("live"), m) for r in rows if (m := r.metrics(system)) is not None]
            if not pairs:
                continue
            per_event = {"HR@10": np.array([a[0] - b[0] for a, b in pairs]),
                         "NDCG@10": np.array([a[1] - b[1] for a, b in pairs])}
            means, ci = bootstrap(per_event, seed=seed, names=tuple(per_event))
            out[task][system] = {"n": len(pairs), **{f"{m}{suffix}": value for m in per_event
                                                     for suffix, value in (("", means[m]), (" ci95", ci[m]))}}
    return out


def differences(records: list[Record], seed: int = 0) -> dict[str, dict[str, float | list[float]]]:
    """Per task: live minus frozen HR@10 and NDCG@10 with their paired 95% bootstrap
    intervals (`versus_live`'s frozen row, as summary.json has always had it)."""
    return {task: {k: v for k, v in others["frozen"].items() if k != "n"}
            for task, others in versus_live(records, seed).items() if "frozen" in others}
