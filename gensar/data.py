"""Datasets in the MovieLens layouts, as events.

Two layouts are read:
- ml-latest-small CSV: movies.csv (movieId,title,genres) required; ratings.csv
  (userId,movieId,rating,timestamp) and tags.csv (userId,movieId,tag,timestamp) each
  optional, at least one present;
- the classic `::`-separated .dat layout: movies.dat, ratings.dat, tags.dat, same columns.

Ratings become interaction events, tags become search events (the tag is the query, the
tagged movie the click). Without ratings, the earliest tag of each (user, item) is also
the recommendation interaction. Bad rows raise DataError naming the file and line, or,
with `strict=False`, are skipped and counted in `Dataset.skipped`.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from gensar.events import InteractionEvent, ItemUpsert, SearchEvent

UserEvent = InteractionEvent | SearchEvent

CSV_COLUMNS = {
    "movies": ("movieId", "title", "genres"),
    "ratings": ("userId", "movieId", "rating", "timestamp"),
    "tags": ("userId", "movieId", "tag", "timestamp"),
}


class DataError(ValueError):
    def __init__(self, path: Path, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line = path, line


@dataclass
class Dataset:
    root: Path
    items: dict[str, ItemUpsert]
    interactions: list[InteractionEvent]  # time order
    searches: list[SearchEvent]  # time order
    has_ratings: bool
    skipped: Counter = field(default_factory=Counter)  # file name -> rows skipped (lenient mode)

    def user_events(self) -> list[UserEvent]:
        """Interactions and searches merged in replay order."""
        return sorted([*self.interactions, *self.searches], key=event_order)

    def stats(self) -> dict:
        users = {e.user_id for e in self.user_events()}
        span = [e.timestamp for e in self.user_events()]
        return {
            "root": str(self.root),
            "items": len(self.items),
            "users": len(users),
            "interactions": len(self.interactions),
            "searches": len(self.searches),
            "interaction_source": "ratings" if self.has_ratings else "tags",
            "first_timestamp": min(span) if span else None,
            "last_timestamp": max(span) if span else None,
            "skipped_rows": dict(self.skipped),
        }


def event_order(event: UserEvent) -> tuple:
    """A total, deterministic order: time, then interactions before searches, then id.
    About 16% of consecutive ratings share a second; the tie order carries no meaning."""
    return (event.timestamp, event.type != "interaction", event.event_id)


# --- reading files ---------------------------------------------------------------------

Row = tuple[int, list[str]]  # (line number, fields)


def _decode(path: Path, strict: bool, encoding: str, skipped: Counter) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        if strict:
            line = data.count(b"\n", 0, exc.start) + 1
            raise DataError(path, line, f"not valid {encoding} ({exc.reason} at byte {exc.start}); "
                            "pass the file's encoding or load leniently") from None
    kept = []
    for raw in data.splitlines(keepends=True):
        try:
            kept.append(raw.decode(encoding))
        except UnicodeDecodeError:
            skipped[path.name] += 1
    return "".join(kept)


def _csv_rows(path: Path, columns: tuple[str, ...], strict: bool, encoding: str, skipped: Counter) -> Iterator[Row]:
    text = _decode(path, strict, encoding, skipped)
    if not text.strip():
        raise DataError(path, None, f"empty file: expected a header {','.join(columns)}")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise DataError(path, 1, f"bad CSV header: {exc}") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(path, 1, f"missing column(s) {', '.join(missing)}; header is {','.join(header)}")
    index = [header.index(c) for c in columns]
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if strict:
                raise DataError(path, line, f"bad CSV: {exc}") from None
            skipped[path.name] += 1
            continue
        if not fields:
            continue
        if len(fields) != len(header):
            if strict:
                raise DataError(path, line, f"expected {len(header)} fields, found {len(fields)}")
            skipped[path.name] += 1
            continue
        yield line, [fields[i] for i in index]


def _dat_rows(path: Path, columns: tuple[str, ...], strict: bool, encoding: str, skipped: Counter) -> Iterator[Row]:
    text = _decode(path, strict, encoding, skipped)
    if not text.strip():
        raise DataError(path, None, "empty file")
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        fields = raw.split("::")
        if len(fields) != len(columns):
            if strict:
                raise DataError(path, line, f"expected {len(columns)} '::'-separated fields "
                                f"({', '.join(columns)}), found {len(fields)}")
            skipped[path.name] += 1
            continue
        yield line, fields


def _parse(path: Path, rows: Iterator[Row], make: Callable[[list[str]], object], strict: bool,
           skipped: Counter) -> list:
    out = []
    for line, fields in rows:
        try:
            out.append(make(fields))
        except (ValueError, KeyError) as exc:
            if strict:
                raise DataError(path, line, str(exc).splitlines()[0]) from None
            skipped[path.name] += 1
    return out


def _int(value: str, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"column {column}: expected an integer, got {value!r}") from None


def _float(value: str, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"column {column}: expected a number, got {value!r}") from None


# --- the loader ------------------------------------------------------------------------


def load(root: Path | str, *, strict: bool = True, encoding: str = "utf-8") -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, None, "not a directory")
    if (root / "movies.csv").exists():
        ext, reader = "csv", lambda p, name: _csv_rows(p, CSV_COLUMNS[name], strict, encoding, skipped)
    elif (root / "movies.dat").exists():
        ext, reader = "dat", lambda p, name: _dat_rows(p, CSV_COLUMNS[name], strict, encoding, skipped)
    else:
        raise DataError(root, None, "no movies.csv or movies.dat: not a MovieLens layout")
    skipped: Counter = Counter()
    paths = {name: root / f"{name}.{ext}" for name in CSV_COLUMNS}
    if not paths["ratings"].exists() and not paths["tags"].exists():
        raise DataError(root, None, f"needs ratings.{ext} or tags.{ext} (or both)")

    def make_item(f: list[str]) -> ItemUpsert:
        movie_id = str(_int(f[0], "movieId"))
        genres = "" if f[2] == "(no genres listed)" else f[2].replace("|", ", ")
        return ItemUpsert(event_id=f"i-{movie_id}", timestamp=0.0, item_id=movie_id, title=f[1].strip(),
                          fields={"genres": genres} if genres else {})

    items = {}
    for item in _parse(paths["movies"], reader(paths["movies"], "movies"), make_item, strict, skipped):
        items[item.item_id] = item
    if not items:
        raise DataError(paths["movies"], None, "no items")

    def known(movie_id: str) -> str:
        movie = str(_int(movie_id, "movieId"))
        if movie not in items:
            raise ValueError(f"movieId {movie} is not in {paths['movies'].name}")
        return movie

    def make_rating(f: list[str]) -> InteractionEvent:
        user, item, ts = str(_int(f[0], "userId")), known(f[1]), _int(f[3], "timestamp")
        return InteractionEvent(event_id=f"r-{user}-{item}-{ts}", timestamp=ts, user_id=user, item_id=item,
                                kind="rate", value=_float(f[2], "rating"))

    def make_search(f: list[str]) -> SearchEvent:
        user, item, ts, tag = str(_int(f[0], "userId")), known(f[1]), _int(f[3], "timestamp"), f[2].strip()
        if not tag:
            raise ValueError("column tag: empty")
        digest = f"{zlib.crc32(tag.encode()):08x}"
        return SearchEvent(event_id=f"t-{user}-{item}-{ts}-{digest}", timestamp=ts, user_id=user,
                           query=tag, clicked_items=[item])

    def load_events(name: str, make: Callable) -> list:
        if not paths[name].exists():
            return []
        events = _parse(paths[name], reader(paths[name], name), make, strict, skipped)
        unique = {e.event_id: e for e in events}  # an exact repeat of a row is one event
        return sorted(unique.values(), key=event_order)

    searches = load_events("tags", make_search)
    interactions = load_events("ratings", make_rating)
    has_ratings = paths["ratings"].exists()
    if not has_ratings:
        interactions = _first_tag_interactions(searches)
    return Dataset(root, items, interactions, searches, has_ratings, skipped)


def tag_interaction_id(search_event_id: str) -> str:
    """The event id of the interaction a tags-only dataset derives from a (first) tag."""
    return f"tag-{search_event_id}"


def _first_tag_interactions(searches: list[SearchEvent]) -> list[InteractionEvent]:
    first: dict[tuple[str, str], SearchEvent] = {}
    for event in searches:  # already in time order
        first.setdefault((event.user_id, event.clicked_items[0]), event)
    return sorted(
        (InteractionEvent(event_id=tag_interaction_id(e.event_id), timestamp=e.timestamp, user_id=e.user_id,
                          item_id=e.clicked_items[0], kind="tag") for e in first.values()),
        key=event_order,
    )


# --- splits ----------------------------------------------------------------------------


def target_item(event: UserEvent) -> str:
    return event.item_id if isinstance(event, InteractionEvent) else event.clicked_items[0]


@dataclass
class Split:
    name: str
    train: list[UserEvent]
    valid: list[UserEvent]
    test: list[UserEvent]
    dropped: int = 0  # training events removed because they would reveal a held-out target

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test),
                "dropped": self.dropped}


def leave_one_out(ds: Dataset) -> Split:
    """The paper's protocol, per user and task: the last event is test, the one before it
    validation (users need 3+ events of a task to be held out on it).

    Both tasks are split together: any event of the user, of either task, on a held-out
    target item in or after the second of the held-out event is removed from training, so
    neither task's training data reveals the other's test target (with tags-only data a
    rating and a search are often the same tagging act, and one act often leaves several
    tags in the same second)."""
    by_user: dict[str, dict[str, list[UserEvent]]] = defaultdict(lambda: {"interaction": [], "search": []})
    for event in ds.user_events():
        by_user[event.user_id][event.type].append(event)
    train, valid, test, dropped = [], [], [], 0
    for tasks in by_user.values():
        held: set[str] = set()  # event ids
        barriers: list[tuple[str, float]] = []  # (item, time of the held-out event)
        for events in tasks.values():
            if len(events) >= 3:
                test.append(events[-1])
                valid.append(events[-2])
                for e in events[-2:]:
                    held.add(e.event_id)
                    barriers.append((target_item(e), e.timestamp))
        for events in tasks.values():
            for e in events:
                if e.event_id in held:
                    continue
                if any(target_item(e) == item and e.timestamp >= since for item, since in barriers):
                    dropped += 1
                else:
                    train.append(e)
    key = event_order
    return Split("leave-one-out", sorted(train, key=key), sorted(valid, key=key), sorted(test, key=key), dropped)


def temporal_split(ds: Dataset, valid_fraction: float = 0.1, test_fraction: float = 0.2) -> Split:
    """A global time cut for streaming replay: the first part of time trains, the next
    validates, the last is test (every event after the cut, both tasks)."""
    if not (0 <= valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
        raise ValueError("need 0 <= valid_fraction, 0 < test_fraction, and their sum < 1")
    events = ds.user_events()
    n = len(events)
    valid_start = int(n * (1 - valid_fraction - test_fraction))
    test_start = int(n * (1 - test_fraction))
    # Cut between seconds, never inside one: same-second events fall on one side.
    valid_start = _second_boundary(events, valid_start)
    test_start = max(valid_start, _second_boundary(events, test_start))
    return Split("temporal", events[:valid_start], events[valid_start:test_start], events[test_start:])


def _second_boundary(events: list[UserEvent], i: int) -> int:
    while 0 < i < len(events) and events[i].timestamp == events[i - 1].timestamp:
        i += 1
    return i
