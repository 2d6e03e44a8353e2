"""The user's CURRENT history, read per request from the stream workers' tables
(streams.views through streams.client). The workers update a user's table entry as each
event is processed, so a click shows up in that user's next answer within the streams'
processing lag, independent of model refreshes. Serving keeps no copy: nothing to expire.

A failed or slow read (the timeout is short) answers as for a user without history and is
counted; unknown users (404) are simply users without history."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gensar.events import HistoryEntry
from serving.metrics import USER_STATE_ERRORS, USER_STATE_SECONDS


@dataclass(frozen=True)
class Histories:
    events: tuple[HistoryEntry, ...] = ()  # interactions and searches merged, oldest first
    queries: tuple[str, ...] = ()  # earlier queries, oldest first


class UserState:
    def __init__(self, base_url: str, timeout_s: float):
        from streams.client import UserStateClient

        self.client = UserStateClient(base_url, timeout_s=timeout_s)

    def histories(self, user_id: str) -> Histories:
        started = time.perf_counter()
        try:
            found = self.client.history(user_id)
        except (OSError, ValueError):  # unreachable, timed out, HTTP error, malformed answer
            USER_STATE_ERRORS.inc()
            return Histories()
        finally:
            USER_STATE_SECONDS.observe(time.perf_counter() - started)
        return Histories(tuple(found.events), tuple(found.search_history)) if found else Histories()
