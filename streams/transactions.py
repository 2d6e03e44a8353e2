"""Exactly-once: every output of an event and the event's offset commit in one Kafka
transaction, and a transaction never ends in the middle of an event.

Faust keeps one transaction open per source partition (transactional id
"<app id>-<partition group>-<partition>") and, left alone, commits it from a timer and
while waiting out a rebalance: the offsets it commits are those acknowledged *before* it
takes the transaction's lock, so events processed in between have their outputs
committed but not their offsets, and a crash then repeats those outputs. Here a
transaction is committed only by whoever holds its partition's processing lock — the
agent right after an event, a timer when the agent is idle, or Faust itself at a
rebalance or shutdown (its consumer's commit is routed here, by
streams.faust_fixes.route_consumer_commits) — with the offsets of exactly the events
processed in it.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from contextlib import asynccontextmanager
from typing import AsyncIterator

import faust
from faust.types import TP

from streams import faust_fixes


class Transactions:
    def __init__(self, app: faust.App, commit_interval_s: float):
        self.app, self.commit_interval_s = app, commit_interval_s
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._pending: dict[str, dict[TP, int]] = defaultdict(dict)  # id -> next offset per source partition
        self._opened: dict[str, float] = {}  # id -> when its first uncommitted event was processed

    @property
    def enabled(self) -> bool:
        return self.app.in_transaction

    def transactional_id(self, source: faust.types.Message) -> str | None:
        """The transaction of the partition `source` came from (None: at-least-once)."""
        if not self.enabled:
            return None
        return faust_fixes.transactional_id(self.app, source.topic, source.partition)

    @asynccontextmanager
    async def event(self, source: faust.types.Message) -> AsyncIterator[None]:
        """Process one event inside its partition's transaction; commit after it when due."""
        tid = self.transactional_id(source)
        if tid is None:
            yield
            return
        async with self._locks[tid]:
            yield
            self._pending[tid][source.tp] = source.offset + 1
            self._opened.setdefault(tid, time.monotonic())
            if time.monotonic() - self._opened[tid] >= self.commit_interval_s:
                await self._commit(tid)

    async def commit_idle(self) -> None:
        """Commit transactions whose partitions went quiet (a timer calls this)."""
        for tid in list(self._pending):
            lock = self._locks[tid]
            if lock.locked() or time.monotonic() - self._opened.get(tid, time.monotonic()) < self.commit_interval_s:
                continue
            async with lock:
                await self._commit(tid)

    def take_over_consumer_commits(self) -> None:
        """Route the commits Faust makes itself (rebalance, shutdown) through here."""
        if self.enabled:
            faust_fixes.route_consumer_commits(self.app.consumer, self.commit_all)

    async def commit_all(self, topics: object = None, start_new_transaction: bool = True) -> bool:
        """Commit every open transaction at an event boundary (Faust's consumer commit)."""
        for tid in list(self._pending):
            async with self._locks[tid]:
                await self._commit(tid, start_new_transaction)
        return True

    async def _commit(self, tid: str, start_new_transaction: bool = True) -> None:
        offsets = self._pending.pop(tid, None)
        self._opened.pop(tid, None)
        if offsets:
            await self.app.producer.commit_transactions({tid: offsets}, self.app.conf.id,
                                                        start_new_transaction=start_new_transaction)
