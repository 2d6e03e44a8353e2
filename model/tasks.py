"""Training samples with task prompts (GenSAR's tasks), and the same rendering for requests.

Every sample is (task, source tokens, target tokens). A user's history is rendered as the
paper has it, items as identifiers including what was searched: the most recent events,
oldest first, an interaction as the item's recommendation id, a search as the query text
followed by the clicked item's recommendation id. Tasks:

    rec               "recommend:" + history                  -> next item's rec id
    search            "search: <query> history:" + history    -> clicked item's search id
    synthetic_search  the same, the query built from the item's metadata (genres), as in the
                      semi-synthetic Amazon product-search protocol
    item_to_id        "search id: <item text>" / "rec id: <item text>" -> that id (alignment)
    id_to_item        "title of:" + search or rec id           -> the title (alignment)
    next_query        "next query:" + history                  -> the next query's text

Item text (identifiers.semantic.item_texts) is the title, the genres and the TRAINING-split
tags only (tags are also the queries: a test tag in item text would reveal the target).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gensar.data import Dataset, UserEvent, event_order, target_item
from gensar.events import HistoryEntry, InteractionEvent, SearchEvent, TrainingSample

TASKS = ("rec", "search", "synthetic_search", "item_to_id", "id_to_item", "next_query")


class TaskMix(BaseModel):
    """Samples per epoch = weight x pool size for each task (weights above 1 repeat)."""

    model_config = ConfigDict(extra="forbid")

    # Per epoch on the bundled data: ~25k of ~100k rec samples (a fresh draw each epoch:
    # 2 CPU cores), ~7k real-query searches (oversampled: they are few), 5k semi-synthetic.
    rec: float = Field(0.25, ge=0)
    search: float = Field(2.0, ge=0)
    synthetic_search: float = Field(0.05, ge=0)
    item_to_id: float = Field(0.25, ge=0)
    id_to_item: float = Field(0.05, ge=0)
    next_query: float = Field(0.2, ge=0)

    @classmethod
    def single(cls, task: str) -> "TaskMix":
        """Single-task training (the ablation): only that task's own samples."""
        default = cls()
        weights = {"rec": {"rec": default.rec},
                   "search": {"search": default.search, "synthetic_search": default.synthetic_search}}[task]
        return cls(**{t: weights.get(t, 0.0) for t in TASKS})


class RenderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history_events: int = Field(10, ge=1)  # the most recent events a source shows
    max_source_tokens: int = Field(64, ge=16)
    max_text_tokens: int = Field(24, ge=4)  # per query / title / item text piece


@dataclass(frozen=True)
class Sample:
    task: str
    source: tuple[int, ...]
    target: tuple[int, ...]  # ends with the eos token


# --- semi-synthetic queries (item text: identifiers.semantic.item_texts) ----------------------


def synthetic_query(ds: Dataset, item_id: str) -> str | None:
    """The item's category words (its genres), as Amazon queries come from the category path;
    None when the item has no genres."""
    genres = ds.items[item_id].fields.get("genres", "")
    return genres.replace(",", "").lower() or None


# --- rendering ---------------------------------------------------------------------------------


class Renderer:
    """Turns events, queries and identifiers into token sequences for one identifier map."""

    def __init__(self, vocab, idmap, ds: Dataset, item_text: dict[str, str], settings: RenderSettings = RenderSettings()):
        self.vocab, self.idmap, self.ds, self.settings = vocab, idmap, ds, settings
        self.item_text = item_text
        self.search_tokens = vocab.id_tokens("search", idmap.search_codes)  # (n_items, L_s)
        self.rec_tokens = vocab.id_tokens("rec", idmap.rec_codes)  # (n_items, L_r)
        self._text_cache: dict[str, tuple[int, ...]] = {}
        self.prompts = {name: self.text(name) for name in ("recommend:", "history:", "search id:", "rec id:",
                                                             "title of:", "next query:", "search:")}

    def text(self, text: str) -> tuple[int, ...]:
        tokens = self._text_cache.get(text)
        if tokens is None:
            tokens = tuple(self.vocab.text(text)[: self.settings.max_text_tokens])
            self._text_cache[text] = tokens
        return tokens

    def row(self, item_id: str) -> int | None:
        return self.idmap.row(item_id) if item_id in self.idmap else None

    def history(self, events: Sequence[UserEvent | HistoryEntry], budget: int) -> list[int]:
        """The most recent events that fit `budget` tokens, oldest first. Events are
        dataset/stream events or the `HistoryEntry`s a TrainingSample carries."""
        chunks, used = [], 0
        for e in reversed(events[-self.settings.history_events:]):
            item, query = _item_and_query(e)
            row = self.row(item)
            if row is None:
                continue
            chunk = list(self.rec_tokens[row])
            if query is not None:
                chunk = list(self.text(query)) + chunk
            if used + len(chunk) > budget:
                break
            chunks.append(chunk)
            used += len(chunk)
        return [t for chunk in reversed(chunks) for t in chunk]

    def source(self, task: str, history: Sequence[UserEvent | HistoryEntry], query: str | None = None) -> tuple[int, ...]:
        """The encoder input of a rec or search request (or a next-query sample)."""
        limit = self.settings.max_source_tokens
        if task == "rec":
            head = list(self.prompts["recommend:"])
        elif task in ("search", "synthetic_search"):
            head = list(self.prompts["search:"]) + list(self.text(query or "")) + list(self.prompts["history:"])
        elif task == "next_query":
            head = list(self.prompts["next query:"])
        else:
            raise ValueError(f"no request source for task {task!r}")
        return tuple(head + self.history(history, limit - len(head)))

    def target_id(self, task: str, item_id: str) -> tuple[int, ...] | None:
        row = self.row(item_id)
        if row is None:
            return None
        tokens = self.search_tokens[row] if task in ("search", "synthetic_search") else self.rec_tokens[row]
        return tuple(int(t) for t in tokens) + (self.vocab.eos_id,)

    def end(self, tokens: Sequence[int]) -> tuple[int, ...]:
        return tuple(tokens) + (self.vocab.eos_id,)

    def training_sample(self, sample: TrainingSample) -> Sample | None:
        """A stream TrainingSample (streams/) as a model sample; None when its target
        item has no identifier in this map (a new item: the learner assigns one first)."""
        target = self.target_id(sample.task, sample.target_item)
        if target is None:
            return None
        return Sample(sample.task, self.source(sample.task, sample.events, sample.query), target)


def _item_and_query(e: UserEvent | HistoryEntry) -> tuple[str, str | None]:
    if isinstance(e, HistoryEntry):
        return e.item_id, e.query
    return target_item(e), e.query if isinstance(e, SearchEvent) else None


# --- the sample pools --------------------------------------------------------------------------


def build_pools(renderer: Renderer, train_events: Sequence[UserEvent]) -> dict[str, list[Sample]]:
    """Every training sample of every task, from the training events only."""
    pools: dict[str, list[Sample]] = {t: [] for t in TASKS}
    by_user: dict[str, list[UserEvent]] = defaultdict(list)
    for e in sorted(train_events, key=event_order):
        by_user[e.user_id].append(e)
    for events in by_user.values():
        for i, e in enumerate(events):
            history = events[:i]
            if isinstance(e, InteractionEvent):
                target = renderer.target_id("rec", e.item_id)
                if target is not None and history:
                    pools["rec"].append(Sample("rec", renderer.source("rec", history), target))
                query = synthetic_query(renderer.ds, e.item_id)
                target = renderer.target_id("search", e.item_id)
                if query and target is not None:
                    pools["synthetic_search"].append(
                        Sample("synthetic_search", renderer.source("search", history, query), target))
            else:
                target = renderer.target_id("search", e.clicked_items[0])
                if target is not None:
                    pools["search"].append(Sample("search", renderer.source("search", history, e.query), target))
                if history:
                    pools["next_query"].append(Sample("next_query", renderer.source("next_query", history),
                                                      renderer.end(renderer.text(e.query))))
    for item_id, text in renderer.item_text.items():
        row = renderer.row(item_id)
        if row is None:
            continue
        for kind, ids in (("search", renderer.search_tokens[row]), ("rec", renderer.rec_tokens[row])):
            prompt = renderer.prompts[f"{kind} id:"]
            pools["item_to_id"].append(Sample("item_to_id", prompt + renderer.text(text), renderer.end(ids.tolist())))
            pools["id_to_item"].append(Sample("id_to_item", renderer.prompts["title of:"] + tuple(ids.tolist()),
                                              renderer.end(renderer.text(renderer.ds.items[item_id].title))))
    return pools


def epoch_order(pools: dict[str, list[Sample]], mix: TaskMix, seed: int, epoch: int) -> list[Sample]:
    """One epoch: weight x pool size samples of each task, shuffled together (seeded)."""
    rng = np.random.default_rng([seed, epoch])
    chosen: list[Sample] = []
    for task, pool in pools.items():
        count = int(round(getattr(mix, task) * len(pool)))
        if not pool or count == 0:
            continue
        whole, rest = divmod(count, len(pool))
        picks = np.concatenate([np.tile(np.arange(len(pool)), whole), rng.permutation(len(pool))[:rest]])
        chosen.extend(pool[i] for i in picks)
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]
