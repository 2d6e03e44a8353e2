"""Event schemas: JSON on the wire, validated with pydantic, versioned by `schema_version`.

Every record carries `type` and `schema_version`, so a consumer can refuse what it does
not understand instead of misreading it. Unknown fields are refused too.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

SCHEMA_VERSION = 1
MAX_TEXT = 1024  # longest query or text field we accept, in characters
MAX_CLICKS = 50
MAX_FUTURE_S = 3600.0  # events stamped more than this ahead of the wall clock are refused

Id = Annotated[str, Field(min_length=1, max_length=128)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
Timestamp = Annotated[float, Field(ge=0, description="Unix time in seconds")]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Id
    timestamp: Timestamp

    def key(self) -> bytes:
        """The Kafka record key: one user's (or item's) events stay ordered on one partition."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class SearchEvent(Event):
    type: Literal["search"] = "search"
    user_id: Id
    query: Text
    clicked_items: Annotated[list[Id], Field(max_length=MAX_CLICKS)] = []

    def key(self) -> bytes:
        return self.user_id.encode()


class InteractionEvent(Event):
    type: Literal["interaction"] = "interaction"
    user_id: Id
    item_id: Id
    kind: Literal["click", "rate", "tag", "view", "purchase"]
    # Finite: Python's JSON reads NaN, Infinity and 1e999, and one such rating would make its
    # item's rating sum NaN for good.
    value: float | None = Field(None, allow_inf_nan=False)

    def key(self) -> bytes:
        return self.user_id.encode()


class ItemUpsert(Event):
    type: Literal["item"] = "item"
    item_id: Id
    title: Text
    fields: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=MAX_TEXT)]] = {}

    def key(self) -> bytes:
        return self.item_id.encode()


class HistoryEntry(BaseModel):
    """One earlier event of the user, as the model reads a history: an interaction is its
    item; a search is its query and the item clicked for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: Id
    query: str | None = None
    timestamp: Timestamp


class TrainingSample(Event):
    """One supervised example, with the user's history as it was BEFORE the source event."""

    type: Literal["sample"] = "sample"
    task: Literal["search", "rec"]
    user_id: Id
    history: list[Id]  # earlier interacted items, oldest first
    search_history: list[str] = []  # earlier queries, oldest first
    events: list[HistoryEntry] = []  # both merged in event order, oldest first (what the model renders)
    query: str | None = None  # search samples only
    target_item: Id
    source_event_id: Id

    def key(self) -> bytes:
        return self.user_id.encode()


class DeadLetter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["dead-letter"] = "dead-letter"
    schema_version: Literal[1] = SCHEMA_VERSION
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    payload: str  # the original bytes, decoded with errors="replace"
    timestamp: Timestamp

    def key(self) -> bytes:
        return self.source_topic.encode()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class ModelVersion(BaseModel):
    """An announcement on the compacted model-versions topic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["model-version"] = "model-version"
    schema_version: Literal[1] = SCHEMA_VERSION
    version: Id
    parent: str | None = None
    task: Literal["joint", "search", "rec"] = "joint"
    status: Literal["candidate", "promoted", "rejected", "rolled-back"]
    idmap_version: Id
    artifact_uri: str
    reason: str = ""
    timestamp: Timestamp

    def key(self) -> bytes:
        return self.version.encode()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class InvalidEvent(ValueError):
    """Why a payload was refused; `reason` is a short stable label for metrics."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode(payload: bytes | None, schema: type[Event], *, now: float | None = None) -> Event:
    """Parse and validate one record (None: a tombstone), raising InvalidEvent with a reason
    label and nothing else: a consumer that catches InvalidEvent must never be stopped by a
    payload (streams.dead_letters, serving.items, learner.collaborative all read topics)."""
    try:
        raw = json.loads(payload or b"")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent("malformed-json", str(exc)) from None
    except RecursionError:  # arrays/objects nested deeper than the interpreter recurses
        raise InvalidEvent("malformed-json", "nested too deeply to parse") from None
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        raise InvalidEvent("malformed-json", f"a number too long to parse: {str(exc).split(';')[0]}") from None
    if not isinstance(raw, dict):
        raise InvalidEvent("not-an-object", f"expected a JSON object, got {type(raw).__name__}")
    version = raw.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise InvalidEvent("unsupported-schema-version", repr(version))
    try:
        event = _adapters[schema].validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        kind = "oversize-field" if first["type"] in {"string_too_long", "too_long"} else "schema-violation"
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidEvent(kind, f"{where}: {first['msg']}") from None
    if event.timestamp > (now if now is not None else time.time()) + MAX_FUTURE_S:
        raise InvalidEvent("future-timestamp", f"{event.timestamp} is more than {MAX_FUTURE_S:.0f}s ahead")
    return event


_adapters = {s: TypeAdapter(s) for s in (SearchEvent, InteractionEvent, ItemUpsert, TrainingSample)}
