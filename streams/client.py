"""A small typed client of the workers' read interface (streams.views), for serving and
operators. Any worker answers for any key: it forwards to the owner."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from streams.state import ItemStats
from streams.views import UserHistory


class UserStateClient:
    def __init__(self, base_url: str = "http://127.0.0.1:6066", timeout_s: float = 2.0):
        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s

    def history(self, user_id: str) -> UserHistory | None:
        """The user's current histories, or None for a user the workers have never seen."""
        raw = self._get(f"/users/{urllib.parse.quote(user_id, safe='')}/history")
        return None if raw is None else UserHistory.model_validate(raw)

    def item_stats(self, item_id: str) -> ItemStats | None:
        raw = self._get(f"/items/{urllib.parse.quote(item_id, safe='')}/stats")
        return None if raw is None else ItemStats.model_validate(raw)

    def _get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
