"""Stream workers on the real broker, run as real processes (`python -m streams run`).

The expected state is computed here, directly from the dataset, without the workers'
code: per user the latest histories in event order and the event counts, per item the
usage counts, and per event the samples it must yield with their point-in-time histories.
Every run is then compared with it exactly: the tables as their changelogs hold them,
the samples and dead letters as a read_committed consumer sees them (by event id)."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import pytest

from gensar.data import event_order, load
from gensar.events import DeadLetter, InteractionEvent, TrainingSample
from gensar.replay import make_producer, replay
from gensar.settings import KafkaSettings, Settings
from gensar.topics import DEAD_LETTER, ITEMS, TRAINING_SAMPLES
from streams.dead_letters import MAX_DEAD_LETTER_PAYLOAD
from streams.inspect import read_topic, table_snapshot, wait_caught_up
from streams.process import WorkerProcess
from streams.state import ItemStats, UserState

pytestmark = pytest.mark.integration

HISTORY, SEARCH_HISTORY = 20, 5  # short, so that histories fill and evict in a slice of the data
SAMPLE_EVENTS = 8  # the merged history a sample carries: shorter than both together
SLICE = 12_000  # the last user events of the bundled data: ~1.2k searches among them


@pytest.fixture(scope="module")
def dataset(bundled_data):
    return load(bundled_data)


def replay_slice(dataset, n: int = SLICE) -> list:
    """The catalogue, then the last `n` user events (both tasks occur there), in time order."""
    return [*dataset.items.values(), *dataset.user_events()[-n:]]


# --- running workers -------------------------------------------------------------------


STREAM_SETTINGS = {"GENSAR_STREAMS__HISTORY_LENGTH": str(HISTORY),
                   "GENSAR_STREAMS__SEARCH_HISTORY_LENGTH": str(SEARCH_HISTORY),
                   "GENSAR_STREAMS__SAMPLE_EVENTS": str(SAMPLE_EVENTS),
                   "GENSAR_STREAMS__COMMIT_INTERVAL_S": "0.3", "GENSAR_STREAMS__LAG_INTERVAL_S": "0.5"}


@pytest.fixture
def workers(kafka, tmp_path):
    started: list[WorkerProcess] = []

    def start(name: str = "w0", **env: str) -> WorkerProcess:
        worker = WorkerProcess(kafka, tmp_path, name, env={**STREAM_SETTINGS, **env}).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process and worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(10)


# --- the direct computation ------------------------------------------------------------


@dataclass
class Expected:
    users: dict[str, dict]
    item_stats: dict[str, tuple]
    samples: dict[str, tuple]  # sample event id -> (task, source event id, target, same-topic history)
    before: dict[str, tuple[list[str], list[str]]]  # source event id -> (items, queries) strictly earlier


def expected_from(events: list) -> Expected:
    user_events = sorted((e for e in events if e.type != "item"), key=event_order)
    items_seen: dict[str, list[str]] = defaultdict(list)
    queries_seen: dict[str, list[str]] = defaultdict(list)
    samples, before = {}, {}
    stats: dict[str, Counter] = defaultdict(Counter)
    for e in user_events:
        before[e.event_id] = (list(items_seen[e.user_id]), list(queries_seen[e.user_id]))
        if isinstance(e, InteractionEvent):
            samples[f"{e.event_id}/rec/0"] = ("rec", e.event_id, e.item_id, items_seen[e.user_id][-HISTORY:])
            items_seen[e.user_id].append(e.item_id)
            stats[e.item_id].update(interactions=1, ratings=e.value is not None)
            stats[e.item_id]["rating_sum"] += e.value or 0.0
        else:
            for i, item in enumerate(dict.fromkeys(e.clicked_items)):
                samples[f"{e.event_id}/search/{i}"] = ("search", e.event_id, item, queries_seen[e.user_id][-SEARCH_HISTORY:])
                stats[item].update(search_clicks=1)
            queries_seen[e.user_id].append(e.query)
    users = {u: {"history": items_seen[u][-HISTORY:], "search_history": queries_seen[u][-SEARCH_HISTORY:],
                 "interactions": len(items_seen[u]), "searches": len(queries_seen[u])}
             for u in {e.user_id for e in user_events}}
    item_stats = {i: (c["interactions"], c["ratings"], c["rating_sum"], c["search_clicks"]) for i, c in stats.items()}
    return Expected(users, item_stats, samples, before)


def is_contiguous_run(part: list[str], whole: list[str]) -> bool:
    return not part or any(whole[i:i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def assert_matches(settings: Settings, expected: Expected, dead_letters: int = 0) -> list[TrainingSample]:
    """The tables and the samples topic hold exactly what the data implies."""
    letters = [DeadLetter.model_validate_json(r.value) for r in read_topic(settings.kafka, DEAD_LETTER.full_name(settings.kafka))]
    assert len(letters) == dead_letters, Counter((letter.reason, letter.detail[:60]) for letter in letters).most_common(5)
    users = {k.decode(): UserState.model_validate_json(v) for k, v in table_snapshot(settings, "users").items()}
    got_users = {u: {"history": [e[3] for e in s.items], "search_history": [e[3] for e in s.queries],
                     "interactions": s.interactions, "searches": s.searches} for u, s in users.items()}
    assert got_users.keys() == expected.users.keys()
    wrong = [u for u in expected.users if got_users[u] != expected.users[u]]
    assert not wrong, f"{len(wrong)} users differ, e.g. {wrong[0]}: {got_users[wrong[0]]} != {expected.users[wrong[0]]}"

    shares: dict[str, ItemStats] = {}
    partitions: dict[str, dict[str, dict]] = defaultdict(dict)  # item -> partition -> its share, for the message
    for key, value in table_snapshot(settings, "item-stats").items():
        partition, item = key.decode().split("/", 1)
        share = ItemStats.model_validate_json(value)
        partitions[item][partition] = share.model_dump(include={"interactions", "search_clicks", "applied"})
        shares[item] = shares[item].merge(share) if item in shares else share
    got_stats = {i: (s.interactions, s.ratings, s.rating_sum, s.search_clicks) for i, s in shares.items()}
    wrong_items = sorted(i for i in expected.item_stats.keys() | got_stats.keys() if got_stats.get(i) != expected.item_stats.get(i))
    assert not wrong_items, f"{len(wrong_items)} items' statistics differ, e.g. " + "; ".join(
        f"{i}: {got_stats.get(i)} != {expected.item_stats.get(i)} (shares {partitions[i]})" for i in wrong_items[:4])

    records = read_topic(settings.kafka, TRAINING_SAMPLES.full_name(settings.kafka))
    samples = [TrainingSample.model_validate_json(r.value) for r in records]
    ids = Counter(s.event_id for s in samples)
    duplicates = [i for i, n in ids.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} samples appear more than once, e.g. {duplicates[:3]}"
    assert ids.keys() == expected.samples.keys(), (
        f"missing {len(expected.samples.keys() - ids.keys())}, unexpected {len(ids.keys() - expected.samples.keys())}")
    for s in samples:
        task, source, target, same_topic = expected.samples[s.event_id]
        assert (s.task, s.source_event_id, s.target_item) == (task, source, target)
        earlier_items, earlier_queries = expected.before[source]
        if task == "rec":  # same topic: exact; the other topic: what had arrived, never later events
            assert s.history == same_topic, s
            assert is_contiguous_run(s.search_history, earlier_queries), s
        else:
            assert s.search_history == same_topic, s
            assert is_contiguous_run(s.history, earlier_items), s
        # the merged history the model renders: the latest of both lists, in event order
        # (every bundled search has a click, so every search is in it)
        items = [h.item_id for h in s.events if h.query is None]
        queries = [h.query for h in s.events if h.query is not None]
        assert len(s.events) == min(SAMPLE_EVENTS, len(s.history) + len(s.search_history)), s
        assert items == s.history[len(s.history) - len(items):], s
        assert queries == s.search_history[len(s.search_history) - len(queries):], s
        assert [h.timestamp for h in s.events] == sorted(h.timestamp for h in s.events), s
    return samples


# --- the tests -------------------------------------------------------------------------


def test_replay_gives_exactly_the_directly_computed_state_and_samples(kafka, dataset, workers):
    events = replay_slice(dataset)
    settings = Settings(kafka=kafka)
    worker = workers()
    replay(events, kafka, progress=False)
    wait_caught_up(settings, timeout_s=240)
    expected = expected_from(events)
    samples = assert_matches(settings, expected)
    assert Counter(s.task for s in samples) == Counter(t for t, *_ in expected.samples.values())

    catalogue = table_snapshot(settings, "catalogue")
    assert {k.decode() for k in catalogue} == set(dataset.items)

    # The read interface serving uses.
    user = max(expected.users, key=lambda u: expected.users[u]["interactions"])
    status, body = worker.get(f"/users/{user}/history")
    assert status == 200 and {k: body[k] for k in expected.users[user]} == expected.users[user]
    assert worker.get("/users/no-such-user/history")[0] == 404
    item = max(expected.item_stats, key=lambda i: expected.item_stats[i][0])
    status, body = worker.get(f"/items/{item}/stats")
    assert status == 200 and (body["interactions"], body["ratings"], body["search_clicks"]) == expected.item_stats[item][:2] + expected.item_stats[item][3:]
    status, body = worker.get(f"/items/{item}")
    assert status == 200 and body["title"] == dataset.items[item].title

    metrics = worker.metrics()
    in_by_topic = {dict(labels)["topic"]: v for (name, labels), v in metrics.items()
                   if name == "gensar_stream_events_total" and ("outcome", "processed") in labels}
    n_searches = sum(e.type == "search" for e in events)
    assert in_by_topic == {ITEMS.full_name(kafka): len(dataset.items),
                           kafka.topic_prefix + "interactions": SLICE - n_searches,
                           kafka.topic_prefix + "search-events": n_searches}
    produced = metrics[("gensar_stream_events_total", (("outcome", "produced"), ("topic", TRAINING_SAMPLES.full_name(kafka))))]
    assert produced == len(samples)
    deadline = time.monotonic() + 10
    while True:  # measured every half second
        lags = [v for (name, _), v in worker.metrics().items() if name == "gensar_stream_consumer_lag"]
        if (lags and max(lags) == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lags and max(lags) == 0, lags
    assert metrics[("gensar_stream_processing_seconds_count", (("topic", kafka.topic_prefix + "interactions"),))] >= SLICE - n_searches
    assert worker.stop() == 0


def test_sigkill_mid_stream_and_restart_lose_and_repeat_nothing(kafka, dataset, workers):
    events = replay_slice(dataset)
    settings = Settings(kafka=kafka)
    first = workers("w0")
    replay(events, kafka, progress=False)
    first.wait_processed(len(dataset.items) + SLICE // 3)
    first.kill()  # mid-stream: transactions open, the local store ahead of the last commit
    second = workers("w0")  # the same name: the same store directory
    wait_caught_up(settings, timeout_s=240)
    assert_matches(settings, expected_from(events))
    assert second.processed() < len(dataset.items) + SLICE, "the restart resumed from the last commit"


def test_rebalance_between_two_workers_mid_stream(kafka, dataset, workers):
    events = replay_slice(dataset)
    settings = Settings(kafka=kafka)
    first = workers("w0")
    replay(events[:len(dataset.items)], kafka, progress=False)
    user_events = events[len(dataset.items):]
    feeding = threading.Thread(target=paced_replay, args=(user_events, kafka))  # ~30 s of traffic
    feeding.start()
    first.wait_processed(len(dataset.items) + SLICE // 4)
    second = workers("w1")  # joins mid-stream: the group rebalances, partitions move with their state
    second.wait_processed(1, timeout_s=180)  # it took partitions over and processes them
    feeding.join()
    wait_caught_up(settings, timeout_s=240)
    expected = expected_from(events)
    assert_matches(settings, expected)
    assert first.processed() > len(dataset.items) + SLICE // 4 and second.processed() > 0

    # Either worker answers for any user: requests for the other's users are forwarded.
    for user in sorted(expected.users)[:8]:
        for worker in (first, second):
            status, body = worker.get(f"/users/{user}/history")
            assert status == 200 and body["history"] == expected.users[user]["history"], (worker.name, user, body)
    assert first.stop() == 0 and second.stop() == 0


# --- partitions handed back (#14 item 2) -------------------------------------------------


def assert_matches_or_show_logs(settings: Settings, expected: Expected, *workers_seen: WorkerProcess) -> None:
    """assert_matches, failing with every worker's log tail (one file each): who recovered what."""
    try:
        assert_matches(settings, expected)
    except AssertionError as failure:
        tails = "\n".join(f"--- {w.name} ({w.log_path}) ---\n{w.log_tail()}" for w in workers_seen)
        raise AssertionError(f"{failure}\n{tails}") from failure


def recovered(worker: WorkerProcess) -> int:
    """How many recoveries Faust logged in the worker's log (all its runs)."""
    return worker.log_path.read_text(errors="replace").count("Recovery complete")


def test_a_worker_joining_while_the_first_recovers_loses_and_repeats_nothing(kafka, dataset, workers):
    """The first worker is killed mid-stream; while its restart recovers its store from the
    changelogs (held at the end of recovery, between its seek and its resume, by a delay
    fault), a second joins: the group rebalances inside recovery, partitions move to the
    second and the rest stay with the first."""
    events = replay_slice(dataset)
    settings = Settings(kafka=kafka)
    first = workers("w0")
    replay(events, kafka, progress=False)
    first.wait_processed(len(dataset.items) + SLICE // 3)
    first.kill()
    # The same store directory: recovery replays its changelogs, then waits 10 s at its seek.
    restarted = workers("w0", GENSAR_STREAMS__FAULT="delay:recovery-seek:10")
    deadline = time.monotonic() + 60
    while "Restoring state from changelog topics" not in restarted.log_tail(20_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = workers("w1")  # joins (a few seconds to start) while the restart is recovering
    wait_caught_up(settings, timeout_s=240)
    assert_matches_or_show_logs(settings, expected_from(events), restarted, second)
    assert recovered(restarted) >= 2 and recovered(second) >= 1, (restarted.log_tail(), second.log_tail())
    assert restarted.stop() == 0 and second.stop() == 0


def test_partitions_return_to_the_first_worker_when_the_second_is_killed(kafka, dataset, workers):
    """A second worker joins mid-stream and takes partitions over, then is SIGKILLed: after the
    session times out its partitions come back to the first worker, whose store kept the
    others, and it recovers them from their changelogs."""
    events = replay_slice(dataset)
    settings = Settings(kafka=kafka)
    first = workers("w0")
    replay(events[:len(dataset.items)], kafka, progress=False)
    feeding = threading.Thread(target=paced_replay, args=(events[len(dataset.items):], kafka))  # ~30 s
    feeding.start()
    first.wait_processed(len(dataset.items) + SLICE // 4)
    second = workers("w1")
    second.wait_processed(1, timeout_s=180)  # it took partitions over and processes them
    second.kill()  # transactions open: what it did not commit is aborted and done again by the first
    feeding.join()
    wait_caught_up(settings, timeout_s=240)
    assert_matches_or_show_logs(settings, expected_from(events), first, second)
    assert recovered(first) >= 3, first.log_tail()  # start, the join, the hand-back
    assert first.stop() == 0


def test_fuzzed_input_is_dead_lettered_with_reasons_and_good_events_still_flow(kafka, dataset, workers):
    good = [*dataset.items.values(), *dataset.user_events()[-1500:]]
    bad = list(malformed_events(dataset, 1200))
    nasty = list(nasty_records(dataset))  # what the decision fuzz (tests/test_streams_dead_letters.py) found
    for j, record in enumerate(nasty):  # spread among the others, the first one early
        bad.insert(j * len(bad) // len(nasty), record)
    settings = Settings(kafka=kafka)
    worker = workers()
    producer = make_producer(kafka)
    topic = {"item": ITEMS.full_name(kafka), "interaction": kafka.topic_prefix + "interactions",
             "search": kafka.topic_prefix + "search-events"}
    replay(good[:len(dataset.items)], kafka, progress=False, producer=producer)
    user_events = good[len(dataset.items):]
    sent = []  # (future of the bad record's metadata, its payload, the reason we expect)
    for i, event in enumerate(user_events):  # malformed records between the good ones
        producer.send(topic[event.type], key=event.key(), value=event.to_bytes())
        for kind, key, value, reason in bad[i * len(bad) // len(user_events):(i + 1) * len(bad) // len(user_events)]:
            sent.append((producer.send(topic[kind], key=key, value=value), value or b"", reason))
    producer.flush()
    expect = {}
    for future, value, reason in sent:
        meta = future.get(timeout=30)
        expect[(meta.topic, meta.partition, meta.offset)] = (value, reason)
    producer.close()
    wait_caught_up_while_alive(settings, worker, timeout_s=240)

    records = read_topic(kafka, DEAD_LETTER.full_name(kafka))
    letters = {(letter.source_topic, letter.source_partition, letter.source_offset): (letter, record.headers)
               for record in records for letter in [DeadLetter.model_validate_json(record.value)]}
    assert len(records) == len(letters) == len(bad), "one dead letter per malformed record, each naming its own"
    assert letters.keys() == expect.keys()
    for source, (letter, headers) in letters.items():
        value, reason = expect[source]
        assert letter.reason == reason, (letter.reason, letter.detail[:200], value[:200])
        assert letter.detail
        text = value.decode(errors="replace")
        if len(text) > MAX_DEAD_LETTER_PAYLOAD:  # the text is cut, and the detail says so
            assert letter.payload == text[:MAX_DEAD_LETTER_PAYLOAD]
            assert f"payload cut to {MAX_DEAD_LETTER_PAYLOAD} of {len(text)} characters" in letter.detail
        else:
            assert letter.payload == text
        if len(value) <= MAX_DEAD_LETTER_PAYLOAD:  # the exact bytes ride along in a header
            assert headers["payload"] == value
        else:
            assert "payload" not in headers and f"{len(value)} bytes" in letter.detail
    assert sum(len(value) > MAX_DEAD_LETTER_PAYLOAD for value, _ in expect.values()) >= 2
    assert_matches(settings, expected_from(good), dead_letters=len(bad))

    metrics = worker.metrics()
    by_reason = {dict(labels)["reason"]: v for (name, labels), v in metrics.items() if name == "gensar_stream_dead_letters_total"}
    assert by_reason == dict(Counter(reason for *_, reason in bad))
    assert len(by_reason) == 8, "every kind of breakage occurred"
    assert worker.process.poll() is None, "the worker survived every malformed record"


def wait_caught_up_while_alive(settings: Settings, worker: WorkerProcess, timeout_s: float) -> None:
    """wait_caught_up, failing at once (with the worker's log) if the worker exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert worker.process.poll() is None, f"the worker exited ({worker.process.returncode}):\n{worker.log_tail()}"
        try:
            wait_caught_up(settings, timeout_s=min(5.0, max(0.5, deadline - time.monotonic())))
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def nasty_records(dataset):
    """(topic kind, key, value, the reason we expect): payloads that once stopped the worker
    or lost their dead letter's note, and a few seeded random ones; two over 64 KiB."""
    rating = next(e for e in reversed(dataset.user_events()) if e.type == "interaction")
    search = next(e for e in reversed(dataset.user_events()) if e.type == "search")
    interaction = json.loads(rating.to_bytes())
    rng = random.Random(14)
    yield "interaction", rating.key(), b'{"event_id": "big", "timestamp": ' + b"9" * 5000 + b"}", "malformed-json"
    yield "item", b"bad-item-big", b'{"item_id": "x", "title": ' + b"1" * 4400 + b"}", "malformed-json"
    yield "search", search.key(), b"[" * 50_000, "malformed-json"  # nested deeper than the parser recurses
    yield "interaction", rating.key(), json.dumps(dict(interaction, event_id="nan", value=float("nan"))).encode(), \
        "schema-violation"
    yield "interaction", rating.key(), json.dumps(dict(interaction, event_id="inf")).encode()[:-1] + b', "value": 1e999}', \
        "schema-violation"
    # over 64 KiB, with an unknown field whose name alone is longer than a dead letter's detail
    yield "interaction", rating.key(), json.dumps(dict(interaction, **{"k" * 3000: "v" * 70_000})).encode(), \
        "schema-violation"
    yield "search", search.key(), b"\xff\xfe" * 40_000, "malformed-json"  # over 64 KiB, not UTF-8
    for kind in ("interaction", "search", "item"):
        key = {"interaction": rating.key(), "search": search.key()}.get(kind, b"bad-item-random")
        yield kind, key, b"{" + bytes(rng.randrange(256) for _ in range(rng.randrange(8, 400))), "malformed-json"


def paced_replay(events: list, kafka: KafkaSettings, chunk: int = 100, pause_s: float = 0.25) -> None:
    producer = make_producer(kafka)
    for start in range(0, len(events), chunk):
        replay(events[start:start + chunk], kafka, progress=False, producer=producer)
        time.sleep(pause_s)
    producer.close()


def malformed_events(dataset, n: int):
    """(topic kind, key, value, the reason we expect) for `n` records broken in every way we know."""
    rating = next(e for e in reversed(dataset.user_events()) if e.type == "interaction")
    search = next(e for e in reversed(dataset.user_events()) if e.type == "search")
    base = {"interaction": json.loads(rating.to_bytes()), "search": json.loads(search.to_bytes()),
            "item": json.loads(next(iter(dataset.items.values())).to_bytes())}
    key_of = {"interaction": rating.key(), "search": search.key()}
    far_future = time.time() + 10 * 86400
    cases = [
        ("malformed-json", lambda d, i: b'{"event_id": "x' + str(i).encode()),
        ("malformed-json", lambda d, i: bytes([0xFF, 0xFE, i % 256]) * 3),
        ("malformed-json", lambda d, i: None),  # a tombstone
        ("not-an-object", lambda d, i: json.dumps([d, i]).encode()),
        ("unsupported-schema-version", lambda d, i: json.dumps({**d, "schema_version": 2 + i % 3}).encode()),
        ("schema-violation", lambda d, i: json.dumps({**d, "unexpected": i}).encode()),
        ("schema-violation", lambda d, i: json.dumps({**d, "timestamp": "yesterday"}).encode()),
        ("schema-violation", lambda d, i: json.dumps({k: v for k, v in d.items() if k != "event_id"}).encode()),
        ("schema-violation", lambda d, i: json.dumps({**d, "timestamp": -5}).encode()),
        ("oversize-field", lambda d, i: json.dumps({**d, "event_id": "e" * 500}).encode()),
        ("future-timestamp", lambda d, i: json.dumps({**d, "event_id": f"future-{i}", "timestamp": far_future}).encode()),
    ]
    for i in range(n):
        kind = ("interaction", "search", "item")[i % 3]
        if i % 7 == 0 and kind != "item":  # valid, but names an item that does not exist
            body = dict(base[kind], event_id=f"ghost-{i}")
            body |= {"item_id": f"no-such-item-{i}"} if kind == "interaction" else {"clicked_items": [f"no-such-item-{i}"]}
            yield kind, key_of[kind], json.dumps(body).encode(), "unknown-item"
        elif i % 11 == 0 and kind != "item":  # valid, but keyed by someone else: it would split the user's state
            yield kind, b"someone-else", json.dumps(dict(base[kind], event_id=f"rekeyed-{i}")).encode(), "key-mismatch"
        else:
            reason, make = cases[i % len(cases)]
            key = key_of[kind] if kind != "item" else f"bad-item-{i}".encode()  # never shadow a real item
            yield kind, key, make(base[kind], i), reason
