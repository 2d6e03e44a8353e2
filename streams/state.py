"""What the stream workers keep and emit, as pure functions (no Kafka here).

A user's state holds the latest `history_length` interacted items and the latest
`search_history_length` queries (with the item first clicked for each), each entry
tagged with its event-order key (timestamp, is-search, event id) — the same total order
the dataset uses (gensar.data.event_order). Entries are kept sorted by that key, not by
arrival, so the final state does not depend on how the two user topics interleave.

Point in time: the sample for an event carries only entries whose key is smaller than the
event's own key: nothing at or after the event leaks into its history, even when the
other topic ran ahead. Within one topic a user's events arrive in order (one partition),
so the same-topic part of a history is exactly the user's previous events; the
cross-topic part holds the earlier events of the other topic that had arrived.

Idempotence: every record remembers, per source topic, the highest offset it has applied
(a user's events, and a partition's share of an item's statistics, come from one
partition), so applying an event twice changes nothing. Transactions make outputs
exactly-once; this makes state exactly-once too when a worker restarts with a local
store that is ahead of the last committed transaction.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from operator import itemgetter
from typing import Iterable

from pydantic import BaseModel, ConfigDict

from gensar.data import event_order
from gensar.events import HistoryEntry, InteractionEvent, SearchEvent, TrainingSample

OrderKey = tuple[float, bool, str]  # gensar.data.event_order: (timestamp, is_search, event_id)
Entry = tuple[float, bool, str, str]  # (*order key, item id)
QueryEntry = tuple[float, bool, str, str, str | None]  # (*order key, query, first clicked item or None)


class Record(BaseModel):
    # Non-finite floats are written as JSON's NaN/Infinity, which model_validate_json reads
    # back (pydantic's default writes null, which a float field then refuses: a rating sum
    # that overflowed to inf would make its entry unreadable, and stop the worker reading it).
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None):
        return cls() if raw is None else cls.model_validate_json(raw)


class UserState(Record):
    items: list[Entry] = []  # latest interacted items, oldest first
    queries: list[QueryEntry] = []  # latest queries, oldest first
    interactions: int = 0  # interaction events applied (each exactly once)
    searches: int = 0  # search events applied
    applied: dict[str, int] = {}  # source topic (unprefixed name) -> highest offset applied


class ItemStats(Record):
    """Running statistics of one item, as counted from one user partition's events (each
    partition counts its own users; an item's statistics are the sum over partitions)."""

    interactions: int = 0
    ratings: int = 0
    rating_sum: float = 0.0
    search_clicks: int = 0
    first_seen: float | None = None
    last_seen: float | None = None
    applied: dict[str, int] = {}  # source topic (unprefixed name) -> highest offset applied

    def merge(self, other: "ItemStats") -> "ItemStats":
        seen = [t for t in (self.first_seen, other.first_seen, self.last_seen, other.last_seen) if t is not None]
        return ItemStats(interactions=self.interactions + other.interactions, ratings=self.ratings + other.ratings,
                         rating_sum=self.rating_sum + other.rating_sum,
                         search_clicks=self.search_clicks + other.search_clicks,
                         first_seen=min(seen) if seen else None, last_seen=max(seen) if seen else None)


def order_key(event: InteractionEvent | SearchEvent) -> OrderKey:
    return event_order(event)


def insert_bounded(entries: list[tuple], entry: tuple, limit: int) -> list[tuple]:
    """`entries` with `entry` added in key order, keeping the `limit` latest."""
    return sorted({e[:3]: e for e in (*entries, entry)}.values())[-limit:]


def earlier(entries: list[tuple], key: OrderKey | None) -> list[tuple]:
    """The entries strictly earlier than `key` (all when None), in their order (entries
    are kept sorted by their order key, and no two share one)."""
    return entries if key is None else entries[:bisect_left(entries, key, key=_order_of_entry)]


_order_of_entry = itemgetter(0, 1, 2)


def before(entries: list[tuple], key: OrderKey, limit: int) -> list[str]:
    """Values (item id or query) of the entries strictly earlier than `key`, oldest first,
    at most `limit`."""
    return [e[3] for e in earlier(entries, key)][-limit:]


def merged_history(state: UserState, key: OrderKey | None = None, limit: int | None = None) -> list[HistoryEntry]:
    """Both histories in one, in event order, strictly earlier than `key` (all when None),
    the latest `limit` of them: the history the model renders. A search is its query and
    first clicked item; a search without a click has no item to render and is left out."""
    return [HistoryEntry.model_validate(entry) for entry in _merged_entries(state, key, limit)]


def _merged_entries(state: UserState, key: OrderKey | None, limit: int | None) -> list[dict]:
    """merged_history's entries as HistoryEntry fields (a sample validates them all at once)."""
    searches = [e for e in earlier(state.queries, key) if e[4] is not None]
    merged = sorted([*earlier(state.items, key), *searches])  # entries sort by their order key: (timestamp, is_search, event id)
    if limit is not None:
        merged = merged[-limit:]
    return [{"item_id": e[4], "query": e[3], "timestamp": e[0]} if e[1] else {"item_id": e[3], "timestamp": e[0]}
            for e in merged]


def apply_user_event(state: UserState, event: InteractionEvent | SearchEvent, topic: str, offset: int,
                     history_length: int, search_history_length: int) -> UserState:
    """The state after `event` (read at `offset` of `topic`); unchanged if already applied."""
    if offset <= state.applied.get(topic, -1):
        return state
    key = order_key(event)
    update: dict = {"applied": {**state.applied, topic: offset}}
    if isinstance(event, InteractionEvent):
        update["items"] = insert_bounded(state.items, (*key, event.item_id), history_length)
        update["interactions"] = state.interactions + 1
    else:
        clicked = clicked_targets(event)
        update["queries"] = insert_bounded(state.queries, (*key, event.query, clicked[0] if clicked else None),
                                           search_history_length)
        update["searches"] = state.searches + 1
    return state.model_copy(update=update)


def sample_id(source_event_id: str, task: str, index: int) -> str:
    """A unique, stable id per (source event, task, target); hashed when it would be too long."""
    plain = f"{source_event_id}/{task}/{index}"
    return plain if len(plain) <= 128 else "h-" + hashlib.sha256(plain.encode()).hexdigest()


def clicked_targets(event: SearchEvent) -> list[str]:
    return list(dict.fromkeys(event.clicked_items))  # distinct, in click order


def samples_for(state: UserState, event: InteractionEvent | SearchEvent, history_length: int,
                search_history_length: int, events_length: int | None = None) -> list[TrainingSample]:
    """Training samples for `event` from the user's state as it was before the event;
    `events` holds the latest `events_length` of both histories merged (all when None)."""
    key = order_key(event)
    # Validated from plain values in one call: building the nested models one by one
    # cost more than the rest of an event's processing.
    common = dict(timestamp=event.timestamp, user_id=event.user_id, source_event_id=event.event_id,
                  history=before(state.items, key, history_length),
                  search_history=before(state.queries, key, search_history_length),
                  events=_merged_entries(state, key, events_length))
    if isinstance(event, InteractionEvent):
        return [TrainingSample.model_validate(dict(event_id=sample_id(event.event_id, "rec", 0), task="rec",
                                                   target_item=event.item_id, **common))]
    return [TrainingSample.model_validate(dict(event_id=sample_id(event.event_id, "search", i), task="search",
                                               query=event.query, target_item=item, **common))
            for i, item in enumerate(clicked_targets(event))]


def item_stats_key(partition: int, item_id: str) -> bytes:
    """The item-stats table key of one partition's share of an item's statistics."""
    return f"{partition}/{item_id}".encode()


def item_stats_partition(key: bytes) -> int:
    """The partition whose share an item-stats key names (item_stats_key's first part)."""
    return int(key.split(b"/", 1)[0])


def items_used(event: InteractionEvent | SearchEvent) -> list[str]:
    return [event.item_id] if isinstance(event, InteractionEvent) else clicked_targets(event)


def apply_item_use(stats: ItemStats, event: InteractionEvent | SearchEvent, topic: str, offset: int) -> ItemStats:
    """An item's statistics after `event` used it (read at `offset` of `topic`);
    unchanged if already applied."""
    if offset <= stats.applied.get(topic, -1):
        return stats
    interaction = isinstance(event, InteractionEvent)
    rated = interaction and event.value is not None
    ts = event.timestamp
    return stats.model_copy(update=dict(
        interactions=stats.interactions + interaction,
        ratings=stats.ratings + rated,
        rating_sum=stats.rating_sum + (event.value if rated else 0.0),
        search_clicks=stats.search_clicks + (not interaction),
        first_seen=min(ts, stats.first_seen if stats.first_seen is not None else ts),
        last_seen=max(ts, stats.last_seen if stats.last_seen is not None else ts),
        applied={**stats.applied, topic: offset},
    ))


def entries_digest(entries: Iterable[tuple[bytes, bytes]]) -> dict:
    """What a table partition holds, comparable across a store and a changelog: the number
    of entries and a SHA-256 over them in key order (each key and value length-prefixed)."""
    digest, count = hashlib.sha256(), 0
    for key, value in sorted(entries):
        digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
        count += 1
    return {"entries": count, "sha256": digest.hexdigest()}
