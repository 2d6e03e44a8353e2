"""Deterministic faults in the exactly-once stream worker (streams.faults): the setting, the
hook, the fault sites inside Faust (a tripwire like tests/test_faust_fixes.py's, which also
checks the overrides' signatures), and a kill matrix on the real broker.

Each case of the matrix runs a worker with the fault (and, for a kill, a long commit
interval, so that its transactions are open when it dies) on 600 user events, where it
dies by the fault (see Case.when for what is committed by then); a worker without the
fault takes over. Then, with no new input: (a) per partition, that worker's local store
equals the committed changelog, for every table; and after one more event for every user
and every item share: (b) every user's state and every item's statistics are exactly what
the data implies, and (c) the samples topic holds each sample exactly once (the direct
computation of tests/test_streams_integration.py). A delay is checked on the worker it
delayed.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import faust
import faust.tables.recovery
import pytest
from faust.transport import base as transport_base
from faust.transport.drivers import aiokafka as aiokafka_driver
from kafka import KafkaAdminClient
from pydantic import ValidationError

from gensar.events import InteractionEvent
from gensar.replay import replay
from gensar.settings import KafkaSettings, Settings
from gensar.topics import INTERACTIONS, SEARCH_EVENTS
from streams import faust_fixes, faults
from streams.app import StreamApp, app_id, partition_for
from streams.faults import SITES, Fault, Faults, parse_fault
from streams.inspect import changelog_digests, wait_caught_up
from streams.process import WorkerProcess
from streams.settings import StreamSettings
from streams.state import items_used
from test_streams_integration import STREAM_SETTINGS, assert_matches, dataset, expected_from  # noqa: F401 (a fixture)

# --- the setting ------------------------------------------------------------------------


@pytest.mark.parametrize("text, fault", [
    ("kill:after-commit:3", Fault("kill", "after-commit", count=3)),
    ("delay:recovery-seek:2.5", Fault("delay", "recovery-seek", seconds=2.5)),
])
def test_a_fault_is_read_from_the_environment(monkeypatch, text, fault):
    monkeypatch.setenv("GENSAR_STREAMS__FAULT", text)
    assert parse_fault(StreamSettings().fault) == fault
    monkeypatch.delenv("GENSAR_STREAMS__FAULT")
    assert StreamSettings().fault is None and not Faults.from_setting(None).enabled


@pytest.mark.parametrize("text, says", [
    ("kill:nowhere:1", "unknown fault site 'nowhere'; the sites are " + ", ".join(SITES)),
    ("explode:after-commit:1", "unknown fault action 'explode'; the actions are kill, delay"),
    ("kill:after-commit", "a fault is kill:<site>:<n> or delay:<site>:<seconds>"),
    ("kill:after-commit:0", "needs n, the reach that kills, a whole number >= 1, not '0'"),
    ("kill:after-commit:1.5", "not '1.5'"),
    ("delay:recovery-seek:-1", "needs seconds in (0, 600], not '-1'"),
    ("delay:recovery-seek:nan", "not 'nan'"),
    ("delay:recovery-seek:soon", "not 'soon'"),
])
def test_a_bad_fault_is_refused_saying_what_is_wrong(monkeypatch, text, says):
    monkeypatch.setenv("GENSAR_STREAMS__FAULT", text)
    with pytest.raises(ValidationError) as refused:
        StreamSettings()
    assert says in str(refused.value)


# --- the hook ---------------------------------------------------------------------------


def test_a_kill_is_sigkill_on_the_nth_reach_of_its_site_only(monkeypatch):
    kills = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    hook = Faults.from_setting("kill:after-commit:3")

    async def run() -> None:
        for site in ("after-commit", "before-commit", "after-commit", "after-commit", "after-commit"):
            await hook.reach(site)
            if site == "after-commit":
                assert len(kills) == (hook.reached >= 3)

    asyncio.run(run())
    assert kills == [(faults.os.getpid(), signal.SIGKILL)]


def test_a_delay_waits_at_every_reach_and_no_fault_does_nothing():
    async def run(hook: Faults, site: str, times: int) -> float:
        start = time.monotonic()
        for _ in range(times):
            await hook.reach(site)
        return time.monotonic() - start

    assert asyncio.run(run(Faults.from_setting("delay:recovery-seek:0.1"), "recovery-seek", 3)) >= 0.3
    assert asyncio.run(run(Faults.from_setting("delay:recovery-seek:5"), "after-commit", 3)) < 0.1
    assert asyncio.run(run(Faults(), "after-commit", 3)) < 0.1
    with pytest.raises(ValueError, match="unknown fault site"):
        asyncio.run(run(Faults(), "after-comit", 1))


# --- the fault sites inside Faust (streams.faust_fixes, 5.) ---------------------------------


RECHECK = "re-check the fault sites in streams/faust_fixes.py (5.) against this release"


def test_only_a_worker_with_a_fault_gets_the_fault_site_classes(tmp_path):
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"), state_dir=tmp_path)
    plain = StreamApp(settings, StreamSettings(store="memory://", metrics_port=0)).app
    assert (plain.transport.Consumer, type(plain.producer)) == (faust_fixes.Consumer, aiokafka_driver.Producer)
    faulty = StreamApp(settings, StreamSettings(store="memory://", metrics_port=0, fault="kill:after-commit:1")).app
    assert (faulty.transport.Consumer, type(faulty.producer)) == (faust_fixes._FaultSitesConsumer,
                                                                   faust_fixes._FaultSitesProducer)
    made = faulty.producer._producer_type
    assert made.func is faust_fixes._FaultSitesAIOKafkaProducer and made.keywords["faults"].fault.site == "after-commit"


def _between(source: str, first: str, then: str) -> str:
    assert first in source and then in source.split(first, 1)[1], f"{first!r} then {then!r}: {RECHECK}"
    return source.split(first, 1)[1].split(then, 1)[0]


def test_faust_commits_a_transaction_only_after_sending_it_its_offsets():
    commit = inspect.getsource(aiokafka_driver.Producer.commit_transactions)
    _between(commit, "send_offsets_to_transaction(", "commit_transaction()")
    users = [name for name, value in vars(aiokafka_driver.Producer).items()
             if callable(value) and "commit_transaction()" in inspect.getsource(value)]
    assert sorted(users) == ["commit_transaction", "commit_transactions"], RECHECK
    assert "self._producer_type(" in inspect.getsource(aiokafka_driver.Producer._new_producer), RECHECK
    assert isinstance(vars(aiokafka_driver.Producer)["_producer_type"], property), RECHECK
    assert "self.Producer(" in inspect.getsource(transport_base.Transport.create_producer), RECHECK
    assert "self.transport.create_producer(" in inspect.getsource(faust.App._new_producer), RECHECK


def test_recovery_resumes_flow_right_after_the_seek_and_reports_each_changelog_record():
    for method in (faust.tables.recovery.Recovery.on_recovery_completed, faust.tables.recovery.Recovery._resume_streams):
        between = _between(inspect.getsource(method), "consumer.perform_seek()", "consumer.resume_flow()")
        assert "await" not in between.split("\n", 1)[1], f"{method.__qualname__} awaits more after the seek: {RECHECK}"
    assert "await table.on_changelog_event(event)" in inspect.getsource(faust.tables.recovery), RECHECK


# --- the kill matrix on the real broker ----------------------------------------------------


EVENTS = 600  # the last user events of the bundled data: 15 users on all 4 partitions, 46 searches
FIRST = 300  # the first half: committed before the fault in most cases (see Case.when)
KILL_AT_EVENT = 60  # of the second half
RECOVERY_RECORDS = 500  # of the over 1,000 changelog records (all three tables) the first half leaves
SEEK_DELAY_S = 3.0
SESSION_TIMEOUT_S = "6"  # how long a killed worker holds its partitions, which its restart waits out: the broker's minimum
LONG_COMMIT_INTERVAL_S = "4"  # a worker processes the 300 events of a half in about a second


@dataclass(frozen=True)
class Case:
    fault: str
    # processing: the faulty worker commits the first half, then meets the fault in the second;
    # first-commits: it meets the fault in its first round of commits (one transaction per
    #   source partition: 4 user partitions and the items topic), the first half processed;
    # recovery: a clean worker commits the first half; the faulty one starts on it, the second half pending.
    when: Literal["processing", "first-commits", "recovery"]

    @property
    def site(self) -> str:
        return self.fault.split(":")[1]

    @property
    def kills(self) -> bool:
        return self.fault.startswith("kill:")


CASES = [
    Case(f"kill:after-local-write:{FIRST + KILL_AT_EVENT}", "processing"),
    Case("kill:between-changelog-sends:2", "first-commits"),  # one user transaction committed, the next half sent
    Case("kill:before-commit:3", "first-commits"),  # two transactions committed, one holding its offsets, two open
    Case("kill:after-commit:3", "first-commits"),  # three committed, two open
    Case(f"kill:recovery-record:{RECOVERY_RECORDS}", "recovery"),
    Case(f"delay:recovery-seek:{SEEK_DELAY_S}", "recovery"),  # what is fetched during the delay must not be lost
]


@pytest.fixture
def start_worker(kafka, tmp_path):
    started: list[WorkerProcess] = []

    def start(**settings: str) -> WorkerProcess:
        env = STREAM_SETTINGS | {"GENSAR_STREAMS__SESSION_TIMEOUT_S": SESSION_TIMEOUT_S} | {
            f"GENSAR_STREAMS__{name.upper()}": value for name, value in settings.items()}
        worker = WorkerProcess(kafka, tmp_path, "w0", env=env).start()  # one name: one store directory
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(10)


def committed_user_events(settings: Settings) -> int:
    """User events the group has committed (the source topics have no transaction markers:
    a committed offset is a count of records)."""
    admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        offsets = admin.list_group_offsets({app_id(settings): None}).get(app_id(settings), {})
    finally:
        admin.close()
    user_topics = {SEARCH_EVENTS.full_name(settings.kafka), INTERACTIONS.full_name(settings.kafka)}
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic in user_topics and meta.offset > 0)


def one_more_event_each(events: list, partitions: int) -> list[InteractionEvent]:
    """An interaction for every item share (a partition's statistics of an item) and, where
    that leaves a user out, one for that user, all later than every event so far."""
    users: dict[int, dict[str, None]] = defaultdict(dict)  # partition -> its users, in order
    shares: dict[int, dict[str, None]] = defaultdict(dict)  # partition -> the items it has a share of
    for e in events:
        partition = partition_for(e.user_id.encode(), partitions)
        users[partition][e.user_id] = None
        shares[partition].update(dict.fromkeys(items_used(e)))
    targets = []
    for partition, items in sorted(shares.items()):
        its_users = list(users[partition])
        targets += [(its_users[i % len(its_users)], item) for i, item in enumerate(items)]
        targets += [(user, next(iter(items))) for user in its_users[len(items):]]
    last = max(e.timestamp for e in events)
    return [InteractionEvent(event_id=f"after-fault-{i}", timestamp=last + 1 + i, user_id=user, item_id=item,
                             kind="rate", value=float(1 + i % 5)) for i, (user, item) in enumerate(targets)]


def assert_stores_equal_changelogs(settings: Settings, worker: WorkerProcess, when: str) -> None:
    for table in ("users", "item-stats", "catalogue"):
        status, store = worker.get(f"/tables/{table}/digest")
        assert status == 200, store
        changelog = changelog_digests(settings, table)
        differ = {p: (store.get(p), changelog.get(p)) for p in store.keys() | changelog.keys()
                  if store.get(p) != changelog.get(p)}
        assert not differ, f"{when}: the local store of {table} differs from its committed changelog in " + "; ".join(
            f"partition {p}: store {s and s['entries']} entries, changelog {c and c['entries']}"
            for p, (s, c) in sorted(differ.items()))


# Not in `make test` (slow): about 3 to 5 minutes on 2 cores. The recovery-seek case is the
# regression test of the records that recovery's resume threw away (streams/faust_fixes.py,
# fix 2; README, Streams); one of 5 matrix runs since failed at before-commit, cause not
# found yet. Run it with `pytest -m slow tests/test_streams_faults.py`.
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.site)
def test_a_worker_killed_or_delayed_at_a_fault_site_loses_and_repeats_nothing(kafka, dataset, start_worker, case):  # noqa: F811
    settings = Settings(kafka=kafka)
    user_events = dataset.user_events()[-EVENTS:]
    catalogue = [dataset.items[i] for i in dict.fromkeys(i for e in user_events for i in items_used(e))]
    first, second = user_events[:FIRST], user_events[FIRST:]
    faulty_settings = dict(fault=case.fault, commit_interval_s=LONG_COMMIT_INTERVAL_S) if case.kills else \
        dict(fault=case.fault)

    replay([*catalogue, *first], kafka, progress=False)
    if case.when == "recovery":
        clean = start_worker()
        wait_caught_up(settings, timeout_s=120)
        assert clean.stop() == 0
        replay(second, kafka, progress=False)
    faulty = start_worker(**faulty_settings)
    if case.when == "processing":
        wait_caught_up(settings, timeout_s=120)
        replay(second, kafka, progress=False)

    if case.kills:
        try:
            faulty.process.wait(90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the fault {case.fault} did not kill the worker:\n{faulty.log_tail()}")
        assert faulty.process.returncode == -signal.SIGKILL, faulty.log_tail()
        assert f"fault: SIGKILL at {case.site}" in faulty.log_tail(), faulty.log_tail()
        committed = committed_user_events(settings)
        left = {"processing": (FIRST, FIRST + KILL_AT_EVENT - 1), "first-commits": (1, FIRST - 1),
                "recovery": (FIRST, FIRST)}[case.when]  # the kill found processed events uncommitted
        assert left[0] <= committed <= left[1], f"the kill left {committed} user events committed, not {left}"
        if case.when == "first-commits":
            replay(second, kafka, progress=False)
        survivor = start_worker()
    else:
        survivor = faulty
    wait_caught_up(settings, timeout_s=120)
    assert_stores_equal_changelogs(settings, survivor, "after recovery")  # (a)

    more = one_more_event_each(user_events, kafka.partitions)
    replay(more, kafka, progress=False)
    wait_caught_up(settings, timeout_s=120)
    assert_matches(settings, expected_from([*catalogue, *user_events, *more]))  # (b) and (c)
    assert_stores_equal_changelogs(settings, survivor, "after one more event each")
    if not case.kills:
        assert f"fault: delaying {SEEK_DELAY_S:.3f} s at {case.site}" in survivor.log_path.read_text()
