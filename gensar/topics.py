"""The Kafka topics of the system: one declaration each, with the settings they are
created with. User-keyed topics share one partition count so a user's search and
interaction events land on the same partition number (Faust co-partitioning)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gensar.settings import KafkaSettings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str  # without the deployment prefix
    key: str  # what the record key is: explains the ordering guarantee
    doc: str
    partitions: int | None = None  # None: the user-keyed partition count from settings
    config: dict[str, str] = field(default_factory=dict)

    def full_name(self, kafka: KafkaSettings) -> str:
        return kafka.topic_prefix + self.name

    def partition_count(self, kafka: KafkaSettings) -> int:
        return self.partitions or kafka.partitions


SEARCH_EVENTS = TopicSpec(
    "search-events",
    key="user_id",
    doc="A user's query and the item(s) clicked for it.",
    config={"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
)
INTERACTIONS = TopicSpec(
    "interactions",
    key="user_id",
    doc="Clicks, ratings, tags: the recommendation signal.",
    config={"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
)
ITEMS = TopicSpec(
    "items",
    key="item_id",
    doc="Item upserts (title and text fields); the latest per item is the catalogue.",
    partitions=1,
    config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
)
DEAD_LETTER = TopicSpec(
    "dead-letter",
    key="source topic",
    doc="Events that failed validation, with the original payload, reason and source offset.",
    partitions=1,
    config={"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
)
TRAINING_SAMPLES = TopicSpec(
    "training-samples",
    key="user_id",
    doc="Point-in-time training samples emitted by the stream workers for the learner.",
    config={"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
)
MODEL_VERSIONS = TopicSpec(
    "model-versions",
    key="version id",
    doc="Announcements of model versions and their gate decisions; compacted so the latest state of every version survives.",
    partitions=1,
    config={"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    SEARCH_EVENTS,
    INTERACTIONS,
    ITEMS,
    DEAD_LETTER,
    TRAINING_SAMPLES,
    MODEL_VERSIONS,
)
