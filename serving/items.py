"""Items published while a replica serves: it follows the compacted items topic and makes
each new (or re-titled) item known to the catalogue and findable by the dense look-up at
once, long before a model refresh gives it an identifier. The topic is read from the start
(it is compacted: the latest upsert per item), so a replica also catches up with items that
arrived after the catalogue files were written."""

from __future__ import annotations

import logging
import threading

from gensar.events import InvalidEvent, ItemUpsert, decode
from gensar.settings import KafkaSettings
from gensar.topics import ITEMS
from serving.catalogue import Catalogue, genres_of
from serving.dense import DenseIndex
from serving.metrics import ITEMS_ADDED, ITEMS_INVALID

log = logging.getLogger("gensar.serving.items")


def apply(item: ItemUpsert, catalogue: Catalogue, dense: DenseIndex | None) -> bool:
    """Add or update one item; False when it is already known as it is."""
    genres = genres_of(item.fields)
    if catalogue.titles.get(item.item_id) == item.title and catalogue.genres.get(item.item_id) == genres:
        return False
    catalogue.titles[item.item_id] = item.title
    catalogue.genres[item.item_id] = genres
    if dense is not None:
        dense.add(item.item_id, catalogue.text(item.item_id))
    ITEMS_ADDED.inc()
    return True


def follow_items(kafka: KafkaSettings, catalogue: Catalogue, dense: DenseIndex | None, stop: threading.Event,
                 poll_ms: int = 500) -> None:
    """Consume the items topic until `stop` is set; a broker that is not there yet is retried."""
    from kafka import KafkaConsumer

    while not stop.is_set():
        try:
            consumer = KafkaConsumer(ITEMS.full_name(kafka), **kafka.client_options(), group_id=None,
                                     auto_offset_reset="earliest", enable_auto_commit=False)
        except Exception:  # noqa: BLE001 - the broker is down or unreachable: try again
            log.warning("items topic unreachable at %s; retrying", kafka.bootstrap_servers)
            stop.wait(5.0)
            continue
        try:
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=poll_ms).values():
                    for record in records:
                        try:
                            apply(decode(record.value, ItemUpsert), catalogue, dense)
                        except InvalidEvent:
                            ITEMS_INVALID.inc()
        finally:
            consumer.close()
