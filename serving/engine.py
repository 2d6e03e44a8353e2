"""The decoding engine, usable without Ray: answers batches of search and recommendation
queries and swaps the versions serving each task.

Per task there is one slot holding a Bundle (serving.bundle). A batch reads its task's slot
ONCE and decodes, maps and labels everything with that bundle, so an answer is always one
version's model, map and constraint; a swap replaces the slot's reference while batches in
flight finish on the bundle they hold, and the old bundle is freed when the last of them
ends. Search and recommendation each follow their own version (a per-task adapter in the
registry, else the joint one, else the base model), so each task swaps independently; when
both want the same version they share one bundle.

A version that cannot serve (damaged, on another base model, its map missing: the loader's
BundleError) is refused: the task keeps what it serves (a replica that serves nothing yet
takes the next version in line: the registry's earlier promotions, then the base model), the
refusal is kept for /models and the version is not tried again until the registry's decisions
change or an operator pins or reloads it.

Users without usable history (none, or only items the map does not know) are answered from
their search history when they have one (the latest query, decoded as a search), else by
popularity.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from gensar.artifacts import ArtifactError
from gensar.events import HistoryEntry
from serving.bundle import TASKS, Bundle, BundleError, Loader
from serving.catalogue import Catalogue
from serving.dense import DenseIndex, fuse
from serving.schemas import Answer, Item

Ranking = list[tuple[str, float]]  # (item id, score), best first


@dataclass(frozen=True)
class Query:
    task: str  # "search" | "rec"
    k: int
    history: tuple[HistoryEntry, ...] = ()  # earlier interactions and searches, oldest first
    query: str | None = None  # search only
    search_history: tuple[str, ...] = ()  # earlier queries, oldest first
    genre: str | None = None  # search filter


@dataclass(frozen=True)
class Swap:
    task: str
    old: str | None
    new: str
    load_seconds: float  # building the new bundle beside the serving one (0 when shared)
    swap_seconds: float  # the swap itself: the reference assignment
    at: float


@dataclass(frozen=True)
class Refusal:
    version: str  # the bundle name (a registry version, or base:<name>)
    task: str  # the task that wanted it
    reason: str  # BundleError.reason: corrupt | unknown | wrong-base | map-missing | layout | load-failed
    detail: str
    at: float


def request_history(entries) -> tuple[HistoryEntry, ...]:
    """A request's own history, oldest first: an item id is an interaction, an object with
    `item_id` and `query` (serving.schemas.Searched) a search."""
    return tuple(HistoryEntry(item_id=e, timestamp=0) if isinstance(e, str)
                 else HistoryEntry(item_id=e.item_id, query=e.query, timestamp=0) for e in entries)


def queries_of(history: tuple[HistoryEntry, ...]) -> tuple[str, ...]:
    """The searches' queries of a history, oldest first (a rec query's search_history)."""
    return tuple(h.query for h in history if h.query is not None)


def _known(history: tuple[HistoryEntry, ...], bundle: Bundle) -> list[HistoryEntry]:
    """The entries whose item the map knows (a new item has no identifier yet)."""
    return [h for h in history if h.item_id in bundle.idmap]


class Engine:
    def __init__(self, loader: Loader, catalogue: Catalogue, dense: DenseIndex | None = None,
                 beam_size: int = 30, dense_k: int = 20, dense_weights: tuple[float, float] = (1.0, 1.0)):
        """dense_weights: the dense list's fusion weight against the model's (1) for a search
        with a history the map knows, and for one without (ServingSettings.dense_weight*)."""
        self.loader, self.catalogue, self.dense = loader, catalogue, dense
        self.beam_size, self.dense_k, self.dense_weights = beam_size, dense_k, dense_weights
        self.slots: dict[str, Bundle] = {}
        self.pins: dict[str, str | None] = {}  # "joint" | "search" | "rec" -> version
        self.swaps: list[Swap] = []
        self._seen_log: list[bytes] | None = None
        self._registry_cache: dict[str, list[str]] = {}
        self._refreshing = threading.Lock()
        self.refusals: list[Refusal] = []  # the latest refusals, newest last
        self.held_back: dict[str, Refusal] = {}  # task -> why it does not serve its first choice
        self._refused: dict[str, Refusal] = {}  # bundle name -> its refusal, not retried until the registry changes
        self.on_refusal: Callable[[Refusal], None] | None = None  # called once per refusal (metrics, log)

    # --- what serves --------------------------------------------------------------------

    def wanted(self) -> dict[str, list[str | None]]:
        """Per task, what should serve, first choice first: its pin, else the joint pin (a pin
        is the only choice); else the registry's promoted versions for the task newest first,
        then its joint ones, then None (the base model). A refused version gives way to the
        next, down to what the task serves now."""
        registry = self._registry_choice()
        out = {}
        for task in TASKS:
            pin = self.pins.get(task) or self.pins.get("joint")
            out[task] = [pin] if pin else list(dict.fromkeys([*registry[task], *registry["joint"], None]))
        return out

    def _registry_choice(self) -> dict[str, list[str]]:
        """The registry's promoted versions per task, recomputed only when its decision log
        changed (working it out verifies every version's artifact: too much for every poll).
        A change also forgets the refusals: each refused version is tried once more."""
        registry = self.loader.registry
        log = registry.store.lines("decisions.jsonl")
        if log != self._seen_log:
            self._registry_cache = registry.promoted()
            self._seen_log = log
            self._refused = {}
        return self._registry_cache

    def bundle_name(self, version: str | None) -> str:
        return version or f"base:{self.loader.base_name}"

    def due(self) -> bool:
        """Would `refresh` swap anything (or try a version not refused yet)?"""
        for task, candidates in self.wanted().items():
            serving = self.slots[task].version if task in self.slots else None
            for version in candidates:
                name = self.bundle_name(version)
                if name == serving:
                    break
                if name not in self._refused:
                    return True
        return False

    def refresh(self, retry: bool | Iterable[str | None] = ()) -> list[Swap]:
        """Load what should serve but does not, beside what serves, then swap it in. A version
        that fails to load is refused (kept in `refusals`, handed to `on_refusal`) and the
        task keeps what it serves; `retry`: versions (True: all) to try again even if refused."""
        with self._refreshing:
            wanted = self.wanted()
            if retry is True:
                self._refused = {}
            else:
                for version in retry:
                    self._refused.pop(self.bundle_name(version), None)
            done, held = [], {}
            for task, candidates in wanted.items():
                old = self.slots.get(task)
                for version in candidates:
                    name = self.bundle_name(version)
                    if old is not None and old.version == name:
                        break
                    refusal = self._refused.get(name)
                    if refusal is None:
                        shared = next((b for b in self.slots.values() if b.version == name), None)
                        try:
                            bundle = shared or self.loader.load(version)
                        except Exception as exc:  # noqa: BLE001 - whatever it is, this version does not serve
                            refusal = self._refuse(name, task, exc)
                        else:
                            started = time.perf_counter()
                            self.slots = {**self.slots, task: bundle}  # the swap: one reference
                            done.append(Swap(task, old.version if old else None, name,
                                             0.0 if shared else bundle.load_seconds, time.perf_counter() - started,
                                             time.time()))
                            break
                    held.setdefault(task, refusal)
                del old  # batches still holding it keep it alive until they finish
            self.held_back = held
            self.swaps = (self.swaps + done)[-50:]
            if done and torch.cuda.is_available():
                torch.cuda.empty_cache()
            return done

    def _refuse(self, name: str, task: str, exc: Exception) -> Refusal:
        refusal = Refusal(name, task, exc.reason if isinstance(exc, BundleError) else "load-failed",
                          str(exc) or type(exc).__name__, time.time())
        self._refused = {**self._refused, name: refusal}
        self.refusals = (self.refusals + [refusal])[-20:]
        if self.on_refusal is not None:
            self.on_refusal(refusal)
        return refusal

    def refused(self, version: str | None) -> Refusal | None:
        """Why `version` keeps a task from serving it after the last refresh, if it does."""
        name = self.bundle_name(version)
        return next((r for r in self.held_back.values() if r.version == name), None)

    def pin(self, task: str, version: str | None) -> list[Swap]:
        """Serve `version` for `task` (None: the registry decides again); a version that
        cannot serve is refused (BundleError) and the pins stay as they were."""
        if version is not None:
            try:
                self.loader.registry.manifest(version)  # unknown versions fail here, not at load
            except ArtifactError:
                pass  # damaged: refused below, with its reason
        before = self.pins
        self.pins = {**self.pins, task: version}
        swaps = self.refresh(retry=[version])
        refusal = self.refused(version) if version is not None else None
        if refusal is not None:
            self.pins = before
            raise BundleError(f"version {version} cannot serve: {refusal.detail}", refusal.reason)
        return swaps

    # --- answering ----------------------------------------------------------------------

    def search(self, queries: list[Query]) -> list[Answer]:
        bundle = self.slots["search"]  # read once: the whole batch is this version
        generated = self._decode(bundle, "search", queries)
        if self.dense is None:
            return [self._answer(bundle, r[: q.k], "model") for q, r in zip(queries, generated)]
        looked_up = self.dense.lookup([q.query for q in queries], self.dense_k)
        answers = []
        for q, model_ranking, dense_ranking in zip(queries, generated, looked_up):
            dense_ids = [i for i, _ in dense_ranking if q.genre is None or q.genre in self.catalogue.genres.get(i, ())]
            # Where the model knows nothing, the dense list weighs as without a history: a
            # request with no known history (the model answers from the query alone), and an
            # item too new for an identifier (the model cannot rank it at all).
            with_history, without = self.dense_weights
            weight = with_history if _known(q.history, bundle) else without
            known = [i if i in bundle.idmap else None for i in dense_ids]
            new = [None if i in bundle.idmap else i for i in dense_ids]
            fused = fuse([i for i, _ in model_ranking[: q.k]], known, new, weights=(1.0, weight, without))
            answers.append(self._answer(bundle, fused[: q.k], "model+dense"))
        return answers

    def recommend(self, queries: list[Query]) -> list[Answer]:
        bundle = self.slots["rec"]
        answers: list[Answer | None] = [None] * len(queries)
        known = [i for i, q in enumerate(queries) if _known(q.history, bundle)]
        for i, ranking in zip(known, self._decode(bundle, "rec", [queries[i] for i in known])):
            answers[i] = self._answer(bundle, ranking[: queries[i].k], "model")
        by_query = [i for i, q in enumerate(queries) if answers[i] is None and q.search_history]
        if by_query:
            searcher = self.slots["search"]
            asked = [Query("search", queries[i].k, query=queries[i].search_history[-1]) for i in by_query]
            for i, ranking in zip(by_query, self._decode(searcher, "search", asked)):
                answers[i] = self._answer(searcher, ranking[: queries[i].k], "search-history")
        for i, q in enumerate(queries):
            if answers[i] is None:
                popular = [(item, float(self.catalogue.counts.get(item, 0))) for item in self.catalogue.popular[: q.k]]
                answers[i] = self._answer(bundle, popular, "popularity")
        return answers

    def _decode(self, bundle: Bundle, task: str, queries: list[Query]) -> list[Ranking]:
        if not queries:
            return []
        renderer = bundle.renderer
        histories = [_known(q.history, bundle) for q in queries]
        sources = [renderer.source(task, h, q.query) for h, q in zip(histories, queries)]
        groups = np.array([bundle.genre_group.get(q.genre, 0) if q.genre else 0 for q in queries], np.int64)
        rows, scores = bundle.decode(task, sources, groups, max(self.beam_size, max(q.k for q in queries)), histories)
        item_ids = bundle.idmap.item_ids
        return [[(item_ids[r], float(s)) for r, s in zip(row, score) if r >= 0] for row, score in zip(rows, scores)]

    def _answer(self, bundle: Bundle, ranking: Ranking, source: str) -> Answer:
        titles = self.catalogue.titles
        return Answer(items=[Item(id=i, title=titles.get(i, ""), score=s) for i, s in ranking],
                      model_version=bundle.version, idmap_version=bundle.idmap_version, source=source)
