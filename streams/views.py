"""The read interface of the tables, served by every worker's web server (Faust's
aiohttp server on `web_port`). A request for a key another worker owns is forwarded
to that worker (Faust table routing), so any worker answers for any user or item.

    GET /users/{user_id}/history  -> UserHistory (404 for a user never seen)
    GET /items/{item_id}          -> the item's latest upsert, from the catalogue (404 if unknown)
    GET /items/{item_id}/stats    -> ItemStats, summed over every worker's partitions
                                     (404 for an item never used)
    GET /items/{item_id}/stats/local -> the same, over this worker's partitions only
    GET /tables/{table}/digest    -> per partition this worker holds, the entries of its local
                                     store (count, SHA-256: streams.state.entries_digest), to
                                     compare with the changelog's (streams.inspect.changelog_digests)
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import TYPE_CHECKING
from urllib.parse import quote

import faust
from pydantic import BaseModel, ConfigDict

from gensar.events import HistoryEntry
from streams.state import ItemStats, UserState, entries_digest, item_stats_key, merged_history

if TYPE_CHECKING:
    from streams.app import StreamApp


class UserHistory(BaseModel):
    """A user's state as serving reads it: histories oldest first, as the learner saw them."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    history: list[str]  # interacted item ids, latest `history_length`
    search_history: list[str]  # queries, latest `search_history_length`
    events: list[HistoryEntry]  # both merged in event order: what the model renders
    interactions: int
    searches: int

    @classmethod
    def of(cls, user_id: str, state: UserState) -> "UserHistory":
        return cls(user_id=user_id, history=[e[3] for e in state.items], search_history=[e[3] for e in state.queries],
                   events=merged_history(state), interactions=state.interactions, searches=state.searches)


def declare_views(s: "StreamApp") -> None:
    app = s.app

    @app.page("/users/{user_id}/history")
    class UserHistoryView(faust.web.View):
        @app.table_route(table=s.users, match_info="user_id")
        async def get(self, request: faust.web.Request, user_id: str) -> faust.web.Response:
            state = s.user_states.lookup(user_id.encode())  # its latest writes included, committed or not
            if state is None:
                return self.notfound(f"no events of user {user_id!r}")
            return self.json(UserHistory.of(user_id, state).model_dump())

    @app.page("/items/{item_id}")
    class ItemView(faust.web.View):
        async def get(self, request: faust.web.Request, item_id: str) -> faust.web.Response:
            raw = s.catalogue.get(item_id.encode()) if item_id else None
            if raw is None:
                return self.notfound(f"item {item_id!r} is not in the catalogue")
            return self.bytes(raw, content_type="application/json")

    def local_stats(item_id: str) -> ItemStats | None:
        topic = s.item_stats.changelog_topic.get_topic_name()
        shares = [s.item_shares.lookup(item_stats_key(tp.partition, item_id))
                  for tp in app.assignor.assigned_actives() if tp.topic == topic]
        shares = [share for share in shares if share is not None]
        return functools.reduce(ItemStats.merge, shares) if shares else None

    def stats_response(view: faust.web.View, item_id: str, stats: ItemStats | None) -> faust.web.Response:
        if stats is None:
            return view.notfound(f"item {item_id!r} has not been used")
        return view.json(stats.model_dump(exclude={"applied"}))

    @app.page("/items/{item_id}/stats/local")
    class LocalItemStatsView(faust.web.View):
        async def get(self, request: faust.web.Request, item_id: str) -> faust.web.Response:
            return stats_response(self, item_id, local_stats(item_id))

    @app.page("/items/{item_id}/stats")
    class ItemStatsView(faust.web.View):
        async def get(self, request: faust.web.Request, item_id: str) -> faust.web.Response:
            shares = [local_stats(item_id)]
            me = str(app.conf.canonical_url).rstrip("/")
            for url in app.router.table_metadata(s.item_stats.name):  # every worker holding partitions
                if url.rstrip("/") != me:
                    async with app.http_client.get(f"{url.rstrip('/')}/items/{quote(item_id, safe='')}/stats/local") as r:
                        if r.status == 200:
                            shares.append(ItemStats.model_validate(await r.json()))
                        elif r.status != 404:
                            return self.error(502, f"worker {url} answered {r.status}")
            shares = [share for share in shares if share is not None]
            return stats_response(self, item_id, functools.reduce(ItemStats.merge, shares) if shares else None)

    tables = {table.name: table for table in (s.users, s.item_stats, s.catalogue)}

    @app.page("/tables/{table}/digest")
    class TableDigestView(faust.web.View):
        """Reads this worker's whole store of the table: for tests and operators, not serving."""

        async def get(self, request: faust.web.Request, table: str) -> faust.web.Response:
            if table not in tables:
                return self.notfound(f"no table {table!r}; the tables are {', '.join(tables)}")
            by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
            for key, value in tables[table].items():  # the partitions this worker holds (a global table: all)
                by_partition[s.partition_of(tables[table], key)].append((key, value))
            return self.json({str(p): entries_digest(entries) for p, entries in sorted(by_partition.items())})
