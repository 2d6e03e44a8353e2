"""GenSAR's tasks as token sequences for one decoder (GenSAR section 3.2, decoder-only).

A user's events, in event order, are ONE sequence; every identifier in it is a target:

    [CLS] <rec> r1 r2 r3 r4  <search> w1 w2 [SEP] s1 s2 s3 s4  <rec> r1 r2 r3 r4 ...
          └ interaction ┘    └ search: query pieces, then the clicked item's search id ┘

so one forward pass trains a next-item target at every interaction (recommendation:
history -> rec id), a search target at every search (query + history -> search id) and
the query's word pieces (history -> next query). History items are written with the id
of their own event's task: an interaction as its rec id, a search as its query and the
clicked item's search id. The alignment tasks are short sequences in the same batches:

    synthetic_search   [CLS] <search> genre words [SEP] search id   (the semi-synthetic
                       Amazon protocol: the query is the item's category words)
    item_to_id         [CLS] <text> item text [SEP] shared + semantic + collaborative codes
    id_to_item         [CLS] <title> search id title [SEP]

Item text (identifiers.semantic.item_texts) is the title, the genres and the TRAINING-split
tags only (tags are also the queries: a test tag in item text would reveal the target).

Every Sample carries, per token, the task whose loss covers it (0: context only), so a
TaskMix weighs the tasks inside one sequence and single-task training is the same data
with other weights. Long users are cut into windows of `context_tokens` that overlap by
`overlap_tokens`; a target is trained in exactly one window (the first that holds it).

A LoRA refresh (learner.refresh) trains the same way on stream samples (`stream_windows`):
per user, the events the samples' histories hold and the samples' own events form one
sequence, the loss on the samples' events only (the rest were trained before).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gensar.data import Dataset, UserEvent, event_order, target_item
from gensar.events import HistoryEntry, SearchEvent, TrainingSample

# What a token's loss belongs to; KIND[task] is the code stored per token (0: no loss).
TASKS = ("rec", "search", "next_query", "synthetic_search", "item_to_id", "id_to_item")
KIND = {task: i + 1 for i, task in enumerate(TASKS)}
ALIGNMENT = ("synthetic_search", "item_to_id", "id_to_item")  # short sequences, drawn per epoch


class TaskMix(BaseModel):
    """Loss weights of the targets inside user sequences (rec, search, next_query), and,
    for the alignment tasks, sequences per epoch = weight x pool size (above 1 repeats)."""

    model_config = ConfigDict(extra="forbid")

    rec: float = Field(1.0, ge=0)
    search: float = Field(1.0, ge=0)
    next_query: float = Field(0.2, ge=0)
    synthetic_search: float = Field(0.1, ge=0)  # pool: one per training interaction with genres
    item_to_id: float = Field(0.5, ge=0)
    id_to_item: float = Field(0.1, ge=0)

    @classmethod
    def single(cls, task: str) -> "TaskMix":
        """Single-task training (the ablation): only that task's own targets."""
        default = cls()
        weights = {"rec": {"rec": default.rec},
                   "search": {"search": default.search, "synthetic_search": default.synthetic_search}}[task]
        return cls(**{t: weights.get(t, 0.0) for t in TASKS})

    def weights(self) -> np.ndarray:
        """(1 + len(TASKS),) loss weight by kind code; kind 0 (context) weighs 0."""
        return np.array([0.0] + [getattr(self, t) for t in TASKS])


class RenderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context_tokens: int = Field(256, ge=16)  # training windows and request prefixes
    # Of consecutive windows of one user: the context a window's first targets see. 32
    # against 128 read 1.42x fewer tokens an epoch for validation scores inside the noise
    # (README, Model: training throughput).
    overlap_tokens: int = Field(32, ge=0)
    max_text_tokens: int = Field(12, ge=2)  # per query / title
    item_text_tokens: int = Field(48, ge=4)  # item text of item_to_id
    # How a history event writes its item: "task" its task's id (an interaction the rec id,
    # a search the search id); "both" that id, then the other task's specific codes (the
    # shared ones are already written) as context. On validation "both" was no better and
    # trained 27% fewer identifiers a second (README, Model).
    history_ids: Literal["task", "both"] = "task"


@dataclass(frozen=True)
class Sample:
    task: str  # "events" (a user's window, from the dataset or the stream) or an alignment task
    tokens: tuple[int, ...]
    kinds: tuple[int, ...]  # per token: KIND of the task whose loss covers it, 0 for context

    @property
    def targets(self) -> int:
        """Identifiers (and text pieces) this sample trains."""
        return sum(k > 0 for k in self.kinds)


# --- semi-synthetic queries (item text: identifiers.semantic.item_texts) ----------------------


def synthetic_query(ds: Dataset, item_id: str) -> str | None:
    """The item's category words (its genres), as Amazon queries come from the category path;
    None when the item has no genres."""
    genres = ds.items[item_id].fields.get("genres", "")
    return genres.replace(",", "").replace("|", " ").lower() or None


# --- rendering ---------------------------------------------------------------------------------


Chunk = tuple[list[int], list[int]]  # (tokens, kinds)


class Renderer:
    """Turns events, queries and identifiers into token sequences for one identifier map."""

    def __init__(self, vocab, idmap, ds: Dataset | None, item_text: dict[str, str],
                 settings: RenderSettings = RenderSettings()):
        self.vocab, self.idmap, self.ds, self.settings = vocab, idmap, ds, settings
        self.item_text = item_text
        self.search_tokens = vocab.id_tokens("search", idmap.search_codes)  # (n_items, L_s)
        self.rec_tokens = vocab.id_tokens("rec", idmap.rec_codes)  # (n_items, L_r)
        self._text_cache: dict[str, tuple[int, ...]] = {}
        self.mark = vocab.markers

    def text(self, text: str, limit: int | None = None) -> tuple[int, ...]:
        key = (text, limit)
        tokens = self._text_cache.get(key)
        if tokens is None:
            tokens = tuple(self.vocab.text(text)[: limit or self.settings.max_text_tokens])
            self._text_cache[key] = tokens
        return tokens

    def row(self, item_id: str) -> int | None:
        return self.idmap.row(item_id) if item_id in self.idmap else None

    def ids(self, task: str, row: int) -> list[int]:
        return (self.search_tokens if task == "search" else self.rec_tokens)[row].tolist()

    def head(self, task: str, query: str | None = None) -> Chunk:
        """What precedes an identifier of `task`: <rec>, or <search> query [SEP]."""
        if task == "rec":
            return [self.mark["rec"]], [0]
        words = list(self.text(query or ""))
        return ([self.mark["search"], *words, self.vocab.eos_id],
                [0] + [KIND["next_query"]] * (len(words) + 1))

    def event(self, e: UserEvent | HistoryEntry) -> Chunk | None:
        """One event as tokens with their loss kinds; None when its item has no identifier."""
        item, query = item_and_query(e)
        row = self.row(item)
        if row is None:
            return None
        task = "rec" if query is None else "search"
        tokens, kinds = self.head(task, query)
        ids = self.ids(task, row)
        tokens, kinds = tokens + ids, kinds + [KIND[task]] * len(ids)
        if self.settings.history_ids == "both":
            other = self.ids("search" if task == "rec" else "rec", row)[self.idmap.n_shared:]
            tokens, kinds = tokens + other, kinds + [0] * len(other)
        return tokens, kinds

    def context(self, history: Sequence[UserEvent | HistoryEntry], budget: int) -> list[int]:
        """[CLS] + the most recent events that fit `budget` tokens (with [CLS]), oldest first."""
        chunks, used = [], 1
        for e in reversed(history):
            chunk = self.event(e)
            if chunk is None:
                continue
            if used + len(chunk[0]) > budget:
                break
            chunks.append(chunk[0])
            used += len(chunk[0])
        return [self.vocab.start_id] + [t for chunk in reversed(chunks) for t in chunk]

    def source(self, task: str, history: Sequence[UserEvent | HistoryEntry], query: str | None = None) -> tuple[int, ...]:
        """The prefix of a "rec" or "search" request: context, then the task's head; the
        model continues it with the identifier."""
        task = "search" if task == "synthetic_search" else task
        head = self.head(task, query)[0]
        depth = self.vocab.layout.search_levels if task == "search" else self.vocab.layout.rec_levels
        return tuple(self.context(history, self.settings.context_tokens - len(head) - depth) + head)

    def target_id(self, task: str, item_id: str) -> tuple[int, ...] | None:
        row = self.row(item_id)
        if row is None:
            return None
        return tuple(self.ids("search" if task in ("search", "synthetic_search") else "rec", row))

    # --- training sequences ----------------------------------------------------------------

    def windows(self, events: Sequence[UserEvent | HistoryEntry], trains: Sequence[bool] | None = None) -> list[Sample]:
        """A user's events as windows of at most `context_tokens`, consecutive windows
        overlapping by about `overlap_tokens`; each event's loss lives in one window only.
        `trains` (default: every event) marks the events that carry loss, the others are
        context; context no window holds yet (a stream user's history before the first
        target) also fills the room a window's targets leave, so a target reads as much of
        its past as the window fits."""
        kept = [(c, t) for c, t in zip(map(self.event, events), trains or [True] * len(events)) if c is not None]
        chunks, loss = [c for c, _ in kept], [t for _, t in kept]
        limit, overlap = self.settings.context_tokens - 1, self.settings.overlap_tokens  # limit: [CLS] aside
        out, held, previous = [], 0, -1  # held: events an earlier window holds; previous: its first event
        while (first := next((i for i in range(held, len(chunks)) if loss[i]), None)) is not None:
            start, used = first, 0  # about the last overlap_tokens before the first new target, as context
            while start - 1 > previous and used + len(chunks[start - 1][0]) <= overlap:
                start -= 1
                used += len(chunks[start][0])
            end = first
            while end < len(chunks) and used + len(chunks[end][0]) <= limit:
                used += len(chunks[end][0])
                end += 1
            end = max(end, first + 1)  # at least one new event (one longer than a window is cut below)
            while start > held and used + len(chunks[start - 1][0]) <= limit:  # context no window held yet
                start -= 1
                used += len(chunks[start][0])
            tokens, kinds = [self.vocab.start_id], [0]
            for i in range(start, end):
                tokens += chunks[i][0]
                kinds += chunks[i][1] if i >= first and loss[i] else [0] * len(chunks[i][1])
            out.append(Sample("events", tuple(tokens[: limit + 1]), tuple(kinds[: limit + 1])))
            previous, held = start, end
        return out

    def stream_windows(self, samples: Sequence[TrainingSample]) -> list[Sample]:
        """Stream TrainingSamples (streams/) as the base model's training sequences: per user,
        every event a sample's history holds and every sample's own event (a search: its
        query and that sample's clicked item), in event order, cut by `windows` with the loss
        on the samples' own events only (each once; the history's events were targets of
        earlier refreshes or of the base model). All histories, not only the newest: a
        sample's history is bounded (StreamSettings.sample_events), so an older sample's
        event and its past may be missing from the newest one's. A sample whose item has
        no identifier in this map is left out (a new item: the learner assigns one first)."""
        by_user: dict[str, dict[tuple, tuple[HistoryEntry, bool]]] = defaultdict(dict)  # event -> (entry, trains)
        for s in samples:
            events = by_user[s.user_id]
            for h in s.events:
                events.setdefault((h.timestamp, h.query, h.item_id), (h, False))
            own = HistoryEntry(item_id=s.target_item, query=s.query if s.task == "search" else None,
                               timestamp=s.timestamp)
            events[(own.timestamp, own.query, own.item_id)] = (own, True)
        out = []
        for events in by_user.values():
            # event order (gensar.data.event_order): time, then interactions before searches
            ordered = sorted(events.values(), key=lambda e: (e[0].timestamp, e[0].query is not None))
            out += self.windows([h for h, _ in ordered], [t for _, t in ordered])
        return out

    def alignment(self, item_id: str, text: str) -> dict[str, Sample]:
        """The item's alignment sequences (item text -> ids, id -> title)."""
        row = self.row(item_id)
        if row is None:
            return {}
        bos, sep = self.vocab.start_id, self.vocab.eos_id
        words = list(self.text(text, self.settings.item_text_tokens))
        codes = self.ids("search", row) + self.ids("rec", row)[self.vocab.layout.n_shared:]
        title = list(self.text(self.ds.items[item_id].title)) + [sep]
        search_id = self.ids("search", row)
        return {
            "item_to_id": Sample("item_to_id", (bos, self.mark["text"], *words, sep, *codes),
                                 (0,) * (len(words) + 3) + (KIND["item_to_id"],) * len(codes)),
            "id_to_item": Sample("id_to_item", (bos, self.mark["title"], *search_id, *title),
                                 (0,) * (len(search_id) + 2) + (KIND["id_to_item"],) * len(title)),
        }

    def synthetic_search(self, item_id: str) -> Sample | None:
        query, row = synthetic_query(self.ds, item_id), self.row(item_id)
        if not query or row is None:
            return None
        tokens, _ = self.head("search", query)
        ids = self.ids("search", row)
        return Sample("synthetic_search", (self.vocab.start_id, *tokens, *ids),
                      (0,) * (len(tokens) + 1) + (KIND["synthetic_search"],) * len(ids))


def item_and_query(e: UserEvent | HistoryEntry) -> tuple[str, str | None]:
    """(item id, query or None for an interaction) of a dataset event or a HistoryEntry."""
    if isinstance(e, HistoryEntry):
        return e.item_id, e.query
    return target_item(e), e.query if isinstance(e, SearchEvent) else None


# --- the sample pools --------------------------------------------------------------------------


def build_pools(renderer: Renderer, train_events: Sequence[UserEvent]) -> dict[str, list[Sample]]:
    """Every training sequence, from the training events only: "events" (user windows) and
    one pool per alignment task."""
    pools: dict[str, list[Sample]] = {"events": [], **{t: [] for t in ALIGNMENT}}
    by_user: dict[str, list[UserEvent]] = defaultdict(list)
    for e in sorted(train_events, key=event_order):
        by_user[e.user_id].append(e)
        if e.type == "interaction" and (s := renderer.synthetic_search(e.item_id)) is not None:
            pools["synthetic_search"].append(s)
    for events in by_user.values():
        pools["events"].extend(renderer.windows(events))
    for item_id, text in renderer.item_text.items():
        for task, s in renderer.alignment(item_id, text).items():
            pools[task].append(s)
    return pools


def epoch_order(pools: dict[str, list[Sample]], mix: TaskMix, seed: int, epoch: int) -> list[Sample]:
    """One epoch: every sample of "events" (and of any stream-task pool) whose targets the
    mix weighs, weight x pool size of each alignment task; shuffled together (seeded)."""
    rng = np.random.default_rng([seed, epoch])
    weights = mix.weights()
    chosen: list[Sample] = []
    for task, pool in pools.items():
        if task in ALIGNMENT:
            count = int(round(getattr(mix, task) * len(pool)))
            if not pool or count == 0:
                continue
            whole, rest = divmod(count, len(pool))
            picks = np.concatenate([np.tile(np.arange(len(pool)), whole), rng.permutation(len(pool))[:rest]])
            chosen.extend(pool[i] for i in picks)
        else:
            chosen.extend(s for s in pool if weights[list(s.kinds)].any())
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]
