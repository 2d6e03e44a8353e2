"""The collaborative updater: identifiers that follow the stream, without a rebuild.

    training-samples (rec) ─▶ Item2Vec.partial_fit ─▶ drifted warm items ─▶ recode_items ─┐
    items topic (upserts) ─▶ titles ─┐                                                    ├─▶ map versions
    new items named by either ───────┴─▶ MiniLM + collaborative (own or cold start) ─▶ add_items ┘   (MapStore)
                                                                                        └─▶ Qdrant vectors

Each step reads what arrived, moves the collaborative embeddings, and publishes at most two
new identifier-map versions (one re-coding drifted items, one adding new items; each
derives from the one before, so every diff stays exact). The trainers pick up the latest
map at their next refresh, and serving loads each adapter with the map it was trained on,
so a re-coded id is never decoded by a model that has not learned it.

Delivery: per step, the Item2Vec state and the map versions are written (atomically,
checksummed) before the consumer's offsets are committed; a crash in between re-applies
that step's samples once more on restart (at-least-once: one more SGNS step on a handful
of pairs, not a corruption), and a map version is either whole or absent.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer

from gensar.data import Dataset
from gensar.events import InvalidEvent, ItemUpsert, TrainingSample, decode
from gensar.layout import Layout
from gensar.settings import KafkaSettings
from gensar.topics import ITEMS, TRAINING_SAMPLES
from identifiers.assign import add_items, coder, drifted_items, recode_items
from identifiers.collaborative import Item2Vec
from identifiers.collisions import CapacityError
from identifiers.idmap import IdentifierMap, MapStore
from identifiers.semantic import SemanticEncoder, item_text
from identifiers.settings import IdentifierSettings, QdrantSettings
from identifiers.vectors import ItemVectorStore
from learner.settings import CollaborativeSettings

log = logging.getLogger("gensar.learner.collaborative")


def consumer_group(kafka: KafkaSettings) -> str:
    return f"{kafka.topic_prefix}learner-collaborative"


@dataclass
class StepReport:
    samples: int = 0  # rec samples applied
    upserts: int = 0
    moved: int = 0  # items whose collaborative vector moved
    recoded: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)  # no free id under their prefix
    versions: list[str] = field(default_factory=list)  # map versions published

    def counts(self) -> dict[str, int]:
        return {"samples": self.samples, "moved": self.moved, "recoded": len(self.recoded),
                "added": len(self.added), "unplaced": len(self.unplaced), "versions": len(self.versions)}


class CollaborativeUpdater:
    def __init__(self, layout: Layout, kafka: KafkaSettings, ds: Dataset, settings: CollaborativeSettings,
                 ids: IdentifierSettings | None = None, qdrant: QdrantSettings | None = None):
        self.settings, self.ids, self.layout = settings, ids or IdentifierSettings(), layout
        self.maps = MapStore(layout.identifier_maps)
        self.idmap = self.maps.load()
        self.coder = coder(self.idmap)
        self.state_root = layout.item2vec
        self.item2vec = self._load_item2vec()
        self.catalogue: dict[str, ItemUpsert] = dict(ds.items)  # then the items topic's upserts
        self.encoder = SemanticEncoder(layout.embeddings, self.ids.device, self.ids.encode_batch_size,
                                       progress=False)
        self.vectors = ItemVectorStore(layout.qdrant, qdrant)
        group = consumer_group(kafka)
        self.items_topic = ITEMS.full_name(kafka)
        self.consumer = KafkaConsumer(
            TRAINING_SAMPLES.full_name(kafka), self.items_topic, **kafka.client_options(), group_id=group,
            client_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed", max_poll_records=5000)
        self.invalid = 0

    # --- one step ---------------------------------------------------------------------

    def step(self, timeout_ms: int = 1000) -> StepReport:
        """Apply what arrived; publish new map versions when ids change; then commit."""
        report, pairs, named = StepReport(), [], []
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                try:
                    if record.topic == self.items_topic:
                        upsert = decode(record.value, ItemUpsert)
                        self.catalogue[upsert.item_id] = upsert
                        named.append(upsert.item_id)
                        report.upserts += 1
                    else:
                        sample = decode(record.value, TrainingSample)
                        named.append(sample.target_item)
                        if sample.task == "rec":
                            pairs.append((sample.history, sample.target_item))
                except InvalidEvent:  # the stream workers validate; this counts what slipped past
                    self.invalid += 1
        report.samples = len(pairs)
        moved = self.item2vec.partial_fit(pairs, epochs=self.settings.epochs) if pairs else []
        report.moved = len(moved)

        warm_known = [i for i, w in zip(moved, self.item2vec.warm(moved)) if w and i in self.idmap]
        if warm_known:
            report.recoded = drifted_items(self.idmap, warm_known, self.item2vec.vectors(warm_known),
                                           self.ids.drift_threshold)
        if report.recoded:
            semantic = self._semantic(report.recoded)
            report.recoded = self._publish(recode_items, report.recoded, semantic,
                                           self.item2vec.vectors(report.recoded), report)
        new = [i for i in dict.fromkeys(named) if i not in self.idmap and i in self.catalogue]
        if new:
            semantic = self._semantic(new)
            report.added = self._publish(add_items, new, semantic, self._collaborative(new, semantic), report)
        if pairs:
            self._save_item2vec()
        self.consumer.commit()
        return report

    def _publish(self, derive, items: list[str], semantic: np.ndarray, collaborative: np.ndarray,
                 report: StepReport) -> list[str]:
        """One new map version from `derive` (add_items or recode_items) over `items`;
        returns the items it placed. An item whose id prefix has no free code left keeps
        what it had (no id, or its old one) and is reported unplaced."""
        version, row = self.maps.next_version(), {item: j for j, item in enumerate(items)}

        def over(subset: list[str]) -> IdentifierMap:
            rows = [row[i] for i in subset]
            return derive(self.idmap, version, subset, semantic[rows], collaborative[rows], self.coder)

        placed = items
        try:
            idmap = over(items)
        except CapacityError:
            placed = []
            for item in items:  # greedily, in order: the largest prefix of the batch that fits
                try:
                    over([*placed, item])
                    placed.append(item)
                except CapacityError:
                    report.unplaced.append(item)
            log.warning("no free id under the prefix of %d item(s), e.g. %s: a re-bootstrap adds a level",
                        len(report.unplaced), report.unplaced[:3])
            if not placed:
                return []
            idmap = over(placed)
        self.maps.save(idmap)
        try:
            rows = [row[i] for i in placed]
            self.vectors.upsert_items(placed, [self.catalogue[i].title for i in placed], semantic[rows],
                                      self.item2vec.vectors(placed), self.item2vec.warm(placed), idmap)
            self.vectors.record_map(idmap)
        except Exception as exc:  # noqa: BLE001 - the map is published; Qdrant catches up at the next change
            log.warning("map %s published; Qdrant not updated: %s", idmap.version, exc)
        self.idmap = idmap
        report.versions.append(idmap.version)
        log.info("identifier map %s (parent %s): %d added, %d re-coded", idmap.version, idmap.parent,
                 len(idmap.diff.added), len(idmap.diff.recoded))
        return placed

    # --- item vectors -----------------------------------------------------------------

    def _semantic(self, items: list[str]) -> np.ndarray:
        """(n, 384) MiniLM vectors: those the bootstrap stored in Qdrant, else encoded now."""
        out, missing = {}, []
        for item in items:
            stored = self._stored(item)
            if stored is not None:
                out[item] = stored["vectors"]["semantic"]
            else:
                missing.append(item)
        if missing:
            out.update(zip(missing, self.encoder.encode([item_text(self.catalogue[i]) for i in missing])))
        return np.stack([out[i] for i in items]).astype(np.float32)

    def _collaborative(self, items: list[str], semantic: np.ndarray) -> np.ndarray:
        """(n, d): the item's own Item2Vec vector once warm, else its semantic neighbours'
        (the bootstrap's cold-start rule, through Qdrant)."""
        rows = self.item2vec.vectors(items)
        for j, warm in enumerate(self.item2vec.warm(items)):
            if not warm:
                try:
                    rows[j] = self.vectors.cold_start_collaborative(semantic[j], self.settings.cold_start_neighbours)
                except (LookupError, ValueError) as exc:  # no collection or no warm item in it yet
                    log.warning("cold start of %s without Qdrant neighbours (%s): its own vector", items[j], exc)
        return rows

    def _stored(self, item: str) -> dict | None:
        try:
            return self.vectors.get(item, with_vectors=True)
        except ValueError:  # no collection yet
            return None

    # --- Item2Vec state ---------------------------------------------------------------

    def _saved_states(self) -> list[Path]:
        """The saved Item2Vec states s1, s2, …, oldest first."""
        return sorted(self.state_root.glob("s*"), key=lambda p: int(p.name[1:])) if self.state_root.is_dir() else []

    def _load_item2vec(self) -> Item2Vec:
        saved = self._saved_states()
        return Item2Vec.load(saved[-1] if saved else self.layout.collaborative_state(self._bootstrap_version()))

    def _bootstrap_version(self) -> str:
        idmap = self.idmap
        while idmap.parent is not None:
            idmap = self.maps.load(idmap.parent)
        return idmap.version

    def _save_item2vec(self) -> None:
        saved = self._saved_states()
        number = int(saved[-1].name[1:]) + 1 if saved else 1
        self.item2vec.save(self.state_root / f"s{number}")
        for old in saved:  # the new state is whole on disk: the older ones are not needed
            shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.vectors.close()
        self.encoder.close()
