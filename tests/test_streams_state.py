"""The stream workers' state logic, without Kafka: bounded histories in event order,
point-in-time samples, and idempotent application by source offset."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gensar.data import target_item
from gensar.events import InteractionEvent, SearchEvent
from streams.settings import StreamSettings
from streams.state import (ItemStats, UserState, apply_item_use, apply_user_event, before, insert_bounded,
                           order_key, sample_id, samples_for)

N, M = 3, 2  # history lengths small enough that eviction happens


def rating(i: int, user: str = "u1", item: str | None = None, ts: float | None = None) -> InteractionEvent:
    return InteractionEvent(event_id=f"r{i}", timestamp=ts if ts is not None else 100.0 + i, user_id=user,
                            item_id=item or f"i{i}", kind="rate", value=4.0)


def search(i: int, user: str = "u1", ts: float | None = None) -> SearchEvent:
    return SearchEvent(event_id=f"s{i}", timestamp=ts if ts is not None else 100.0 + i, user_id=user,
                       query=f"query {i}", clicked_items=[f"i{i}", f"i{i}", f"j{i}"])


def apply_all(events_with_offsets, state: UserState | None = None, lengths: tuple[int, int] = (N, M)) -> UserState:
    state = state or UserState()
    for topic, offset, event in events_with_offsets:
        state = apply_user_event(state, event, topic, offset, *lengths)
    return state


def test_history_keeps_the_latest_in_event_order_not_arrival_order():
    state = apply_all([("interactions", 0, rating(5)), ("interactions", 1, rating(1)), ("interactions", 2, rating(9)),
                       ("interactions", 3, rating(7))])
    assert [e[3] for e in state.items] == ["i5", "i7", "i9"]
    assert state.interactions == 4


def test_same_timestamp_orders_interactions_before_searches_then_by_id():
    a, b = rating(1, ts=50.0), search(0, ts=50.0)
    assert order_key(a) < order_key(b)
    assert order_key(rating(1, ts=50.0)) < order_key(InteractionEvent(**{**rating(1, ts=50.0).model_dump(), "event_id": "r2"}))


def test_applying_an_offset_twice_changes_nothing():
    events = [("interactions", i, rating(i)) for i in range(5)] + [("search-events", i, search(i)) for i in range(4)]
    once = apply_all(events)
    assert apply_all(events, once) == once
    assert once.interactions == 5 and once.searches == 4
    assert once.applied == {"interactions": 4, "search-events": 3}


def test_sample_history_is_strictly_before_the_event_even_when_later_events_arrived_first():
    state = apply_all([("interactions", 0, rating(1)), ("interactions", 1, rating(2)),
                       ("search-events", 0, search(10))])  # the search at t=110 arrived before r3
    late = rating(3)  # t=103: the query at t=110 is in its future
    [sample] = samples_for(state, late, N, M)
    assert sample.task == "rec" and sample.target_item == "i3" and sample.source_event_id == "r3"
    assert sample.history == ["i1", "i2"] and sample.search_history == []
    assert sample.timestamp == late.timestamp


def test_search_samples_one_per_distinct_clicked_item_with_the_query():
    state = apply_all([("interactions", 0, rating(1)), ("search-events", 0, search(0))])
    samples = samples_for(state, search(2), N, M)
    assert [(s.task, s.target_item, s.query) for s in samples] == [("search", "i2", "query 2"), ("search", "j2", "query 2")]
    assert all(s.history == ["i1"] and s.search_history == ["query 0"] for s in samples)
    assert len({s.event_id for s in samples}) == 2


def test_samples_carry_both_histories_merged_in_event_order_as_the_model_reads_them():
    no_click = SearchEvent(event_id="s9", timestamp=104.0, user_id="u1", query="nothing clicked")
    same_time = search(3, ts=103.0)  # a search at the time of an interaction comes after it
    arrivals = [("search-events", 0, search(2)), ("search-events", 1, same_time), ("search-events", 2, no_click),
                ("interactions", 0, rating(1)), ("interactions", 1, rating(3))]  # searches arrived first
    [sample] = samples_for(apply_all(arrivals, lengths=(10, 10)), rating(5), 10, 10)
    assert [(h.item_id, h.query, h.timestamp) for h in sample.events] == [
        ("i1", None, 101.0), ("i2", "query 2", 102.0), ("i3", None, 103.0), ("i3", "query 3", 103.0)]
    # the same order gensar.data gives the dataset's events, which the offline pools render
    dataset_order = sorted([rating(1), search(2), rating(3), same_time], key=order_key)
    assert [h.item_id for h in sample.events] == [target_item(e) for e in dataset_order]
    [bounded] = samples_for(apply_all(arrivals, lengths=(10, 10)), rating(5), 10, 10, events_length=2)
    assert bounded.events == sample.events[-2:]


def test_sample_ids_are_unique_and_bounded():
    long_id = "x" * 128
    ids = {sample_id(long_id, task, i) for task in ("rec", "search") for i in range(3)}
    assert len(ids) == 6 and all(len(i) <= 128 for i in ids)
    assert sample_id("e1", "rec", 0) == "e1/rec/0"


def test_item_statistics_count_each_offset_once_and_merge_across_partitions():
    stats = ItemStats()
    for offset, event in enumerate([rating(1, item="x"), rating(2, item="x")]):
        stats = apply_item_use(stats, event, "interactions", offset)
        stats = apply_item_use(stats, event, "interactions", offset)  # a replay after a crash
    clicks = apply_item_use(ItemStats(), search(3), "search-events", 0)
    total = stats.merge(clicks)
    assert (total.interactions, total.ratings, total.rating_sum, total.search_clicks) == (2, 2, 8.0, 1)
    assert (total.first_seen, total.last_seen) == (101.0, 103.0)


def test_bounded_insert_is_idempotent_and_drops_what_is_older_than_the_window():
    entries = []
    for i in (4, 2, 6, 8):
        entries = insert_bounded(entries, (float(i), False, f"e{i}", f"v{i}"), 3)
    assert [e[3] for e in entries] == ["v4", "v6", "v8"]
    assert insert_bounded(entries, (2.0, False, "e2", "v2"), 3) == entries, "an evicted entry does not come back"
    assert insert_bounded(entries, entries[0], 3) == entries
    assert before(entries, (6.0, False, "e6"), 3) == ["v4"]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=4))
def test_final_state_is_independent_of_how_the_two_topics_interleave_and_of_replays(seed, replays):
    """What the integration tests rely on: the final state is a function of the events,
    not of the arrival order across topics, nor of events applied again after a crash."""
    rng = random.Random(seed)
    interactions = [("interactions", i, rating(i, ts=float(rng.randint(0, 20)))) for i in range(12)]
    searches = [("search-events", i, search(i, ts=float(rng.randint(0, 20)))) for i in range(8)]
    merged, a, b = [], list(interactions), list(searches)
    while a or b:  # a random interleaving that keeps each topic's own order
        merged.append((a if a and (not b or rng.random() < 0.5) else b).pop(0))
    for _ in range(replays):  # a restart re-applies a suffix of what was applied
        start = rng.randrange(len(merged))
        merged += merged[start:start + rng.randint(1, 5)]
    state = apply_all(merged)
    expect_items = [e.item_id for _, _, e in sorted(interactions, key=lambda x: order_key(x[2]))][-N:]
    expect_queries = [e.query for _, _, e in sorted(searches, key=lambda x: order_key(x[2]))][-M:]
    assert [e[3] for e in state.items] == expect_items
    assert [e[3] for e in state.queries] == expect_queries
    assert (state.interactions, state.searches) == (12, 8)


def test_settings_refuse_unknown_keys_and_bad_values(monkeypatch):
    monkeypatch.setenv("GENSAR_STREAMS__HISTORY_LENGTH", "7")
    assert StreamSettings().history_length == 7
    for key, value in (("GENSAR_STREAMS__NO_SUCH_THING", "1"), ("GENSAR_STREAMS__PROCESSING_GUARANTEE", "maybe")):
        monkeypatch.setenv(key, value)
        try:
            StreamSettings()
        except ValueError:
            pass
        else:
            raise AssertionError(f"{key}={value} was accepted")
        monkeypatch.delenv(key)
    assert StreamSettings(web_host="0.0.0.0", web_advertised_host="10.0.0.7").advertised_url() == "http://10.0.0.7:6066"
    assert StreamSettings(web_host="127.0.0.1", web_port=7000).advertised_url() == "http://127.0.0.1:7000"
    try:
        StreamSettings(history_lenght=5)
    except ValueError:
        pass
    else:
        raise AssertionError("a misspelt keyword was accepted")
