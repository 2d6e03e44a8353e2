"""The learner's sample intake: at-least-once from the real broker, duplicates dropped,
a replay reservoir against forgetting, and resumption after a crash."""

from __future__ import annotations

import time

import pytest

from gensar.events import TrainingSample
from gensar.replay import make_producer
from gensar.topics import TRAINING_SAMPLES
from learner.samples import SampleBuffer, SampleConsumer


def sample(i: int, task: str = "rec") -> TrainingSample:
    return TrainingSample(event_id=f"s-{task}-{i}", timestamp=1000.0 + i, task=task, user_id=f"u{i % 7}",
                          history=[str(i - 1)] if i else [], target_item=str(i), source_event_id=f"e{i}",
                          query="a query" if task == "search" else None)


def test_buffer_drops_redelivered_samples_by_sample_id():
    buffer = SampleBuffer()
    assert buffer.add(sample(1)) and not buffer.add(sample(1))
    assert buffer.add(sample(1, task="search")), "a search and a rec sample of one event are distinct"
    second_click = sample(1, task="search").model_copy(update={"event_id": "s-search-1/1", "target_item": "9"})
    assert buffer.add(second_click), "a search with two clicked items yields two samples"
    assert len(buffer) == 3


def test_samples_arriving_while_a_refresh_trains_wait_for_the_next_one():
    buffer = SampleBuffer(window=10, replay=100)
    for i in range(8):
        buffer.add(sample(i))
    taken, _ = buffer.take()
    assert [s.target_item for s in taken] == [str(i) for i in range(8)] and buffer.pending() == 0
    for i in range(8, 20):  # past the window while the refresh trains: nothing it holds is dropped
        buffer.add(sample(i))
        buffer.bound()
    assert buffer.pending() == 12 and [s.target_item for s in buffer.recent][:8] == [str(i) for i in range(8)]
    buffer.retire()
    assert [s.target_item for s in buffer.recent] == [str(i) for i in range(8, 20)]
    assert {s.target_item for s in buffer.reservoir} == {str(i) for i in range(8)}
    buffer.bound()  # no refresh in flight: the window holds again, the oldest pending age out
    assert [s.target_item for s in buffer.recent] == [str(i) for i in range(10, 20)] and buffer.pending() == 10


def test_drain_replays_older_samples_and_the_reservoir_stays_bounded():
    buffer = SampleBuffer(replay=50, seed=1)
    for i in range(200):
        buffer.add(sample(i))
    recent, replayed = buffer.drain()
    assert [s.target_item for s in recent] == [str(i) for i in range(200)] and replayed == []
    assert len(buffer.reservoir) == 50 and len(buffer) == 0
    for i in range(200, 230):
        buffer.add(sample(i))
    recent, replayed = buffer.drain()
    assert len(recent) == 30 and len(replayed) == 30
    assert all(int(s.target_item) < 200 for s in replayed), "replay draws only older samples"


def test_save_and_load_round_trip(tmp_path):
    buffer = SampleBuffer(replay=10, seed=3)
    for i in range(40):
        buffer.add(sample(i))
    buffer.drain()
    buffer.add(sample(40))
    buffer.save(tmp_path / "buffer.json")
    restored = SampleBuffer(replay=10, seed=99)
    restored.load(tmp_path / "buffer.json")
    assert list(restored.recent) == list(buffer.recent) and restored.reservoir == buffer.reservoir
    assert not restored.add(sample(5)), "ids seen before the save are still remembered"
    assert restored.drain()[1] == buffer.drain()[1], "the random state is restored too"


def drain_topic(consumer: SampleConsumer, buffer: SampleBuffer, expected: int, timeout: float = 30.0) -> int:
    added, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        added += consumer.poll(buffer, timeout_ms=500)
        if added >= expected:
            # one more poll: anything beyond `expected` would be a duplicate that got through
            added += consumer.poll(buffer, timeout_ms=500)
            break
    return added


@pytest.mark.integration
def test_at_least_once_with_duplicates_and_a_crash(kafka, tmp_path):
    producer = make_producer(kafka)
    topic = TRAINING_SAMPLES.full_name(kafka)
    for i in [*range(100), *range(90, 100)]:  # the last ten redelivered
        producer.send(topic, key=sample(i).key(), value=sample(i).to_bytes())
    producer.send(topic, key=b"u", value=b"{broken")
    producer.flush()

    first, buffer = SampleConsumer(kafka), SampleBuffer()
    assert drain_topic(first, buffer, expected=100) == 100
    assert first.invalid == 1
    buffer.save(tmp_path / "buffer.json")
    first.commit()
    for i in range(100, 150):
        producer.send(topic, key=sample(i).key(), value=sample(i).to_bytes())
    producer.flush()
    assert drain_topic(first, buffer, expected=50) == 50
    first.close()  # crash: the 50 were polled, but neither saved nor committed

    restarted, restored = SampleConsumer(kafka), SampleBuffer()
    restored.load(tmp_path / "buffer.json")
    assert len(restored) == 100
    assert drain_topic(restarted, restored, expected=50) == 50, "uncommitted samples are read again"
    restarted.close()
    assert sorted(int(s.target_item) for s in restored.recent) == list(range(150))
    producer.close()
