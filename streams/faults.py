"""Deterministic fault injection, for tests of the exactly-once worker: the setting
`fault` (GENSAR_STREAMS__FAULT) names one site of the worker's processing and what
happens there:

    kill:<site>:<n>        SIGKILL this process the n-th time the site is reached
    delay:<site>:<seconds> wait that long every time the site is reached

A kill is SIGKILL on itself, the same death as a lost node: nothing is flushed, no
transaction aborted, the group not left. Each site is reached from one place in the code
(`await faults.reach(site)`); without a fault that is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

#: Where a fault can be injected, and what holds when the site is reached.
SITES = {
    "after-local-write": "a user event's table writes are made (read back from the worker's cache; they reach "
                         "the store with the transaction's changelogs); none of its outputs is queued",
    "between-changelog-sends": "a transaction is being committed: its samples and its first table's changelog "
                               "records (users) are handed to the producer, the others (item-stats) are not",
    "before-commit": "a transaction holds its consumed offsets (sent to it); it is not committed",
    "after-commit": "a transaction has just committed; its partition's next one is not begun",
    "recovery-record": "Faust's table recovery has read this many changelog records (of any table, the "
                       "global catalogue's continuing reads included; it applies them to the store in batches)",
    "recovery-seek": "the stream partitions are sought back to their committed offsets after recovery "
                     "(or while flow is stopped); the flow is stopped until recovery resumes it",
}


@dataclass(frozen=True)
class Fault:
    action: Literal["kill", "delay"]
    site: str
    count: int = 0  # kill: the reach that kills
    seconds: float = 0.0  # delay: at every reach


def parse_fault(text: str) -> Fault:
    """A fault from its setting; ValueError says what is wrong with it."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"a fault is kill:<site>:<n> or delay:<site>:<seconds>, not {text!r}")
    action, site, amount = parts
    if site not in SITES:
        raise ValueError(f"unknown fault site {site!r}; the sites are {', '.join(SITES)}")
    if action == "kill":
        if not (amount.isascii() and amount.isdigit()) or int(amount) < 1:
            raise ValueError(f"kill:{site}:<n> needs n, the reach that kills, a whole number >= 1, not {amount!r}")
        return Fault("kill", site, count=int(amount))
    if action == "delay":
        try:
            seconds = float(amount)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= 600:
            raise ValueError(f"delay:{site}:<seconds> needs seconds in (0, 600], not {amount!r}")
        return Fault("delay", site, seconds=seconds)
    raise ValueError(f"unknown fault action {action!r}; the actions are kill, delay")


class Faults:
    """The one fault of a worker (or none), counting how often its site was reached."""

    def __init__(self, fault: Fault | None = None):
        self.fault = fault
        self.reached = 0

    @classmethod
    def from_setting(cls, setting: str | None) -> "Faults":
        """From StreamSettings.fault (validated there)."""
        return cls(parse_fault(setting) if setting else None)

    @property
    def enabled(self) -> bool:
        return self.fault is not None

    async def reach(self, site: str) -> None:
        if site not in SITES:  # a typo in the code would silently never fire
            raise ValueError(f"unknown fault site {site!r}")
        fault = self.fault
        if fault is None or fault.site != site:
            return
        self.reached += 1
        if fault.action == "delay":
            logger.warning("fault: delaying %.3f s at %s (reach %d)", fault.seconds, site, self.reached)
            await asyncio.sleep(fault.seconds)
        elif self.reached == fault.count:
            logger.warning("fault: SIGKILL at %s (reach %d)", site, self.reached)
            for handler in logging.getLogger().handlers:  # the log line is all a test sees of it
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
