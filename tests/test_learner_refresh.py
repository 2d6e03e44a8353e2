"""Refreshes end to end without Ray on a tiny world: a good candidate is promoted, one
trained on shuffled labels or with a non-finite loss is rejected with its reason, and a
second refresh continues from the serving adapter."""

from __future__ import annotations

import random

import pytest

from gensar.data import event_order, target_item
from gensar.events import HistoryEntry, InteractionEvent, TrainingSample
from learner.refresh import Refresher, gate
from learner.registry import LocalArtifactStore, Registry
from learner.settings import LearnerSettings, RefreshTraining
from model.artifact import GenSARModel
from model.tasks import TaskMix, build_pools
from model.train import TrainSettings, train
from test_model import TINY, tiny_model, tiny_world


def stream_samples(events) -> list[TrainingSample]:
    """What the stream workers emit: each event with the user's history before it."""
    history: dict[str, list[HistoryEntry]] = {}
    out = []
    for e in sorted(events, key=event_order):
        before = history.setdefault(e.user_id, [])
        task, query = ("rec", None) if isinstance(e, InteractionEvent) else ("search", e.query)
        out.append(TrainingSample(event_id=f"{e.event_id}/{task}", timestamp=e.timestamp, task=task, user_id=e.user_id,
                                  history=[h.item_id for h in before if h.query is None], query=query,
                                  target_item=target_item(e), source_event_id=e.event_id, events=before[-10:]))
        before.append(HistoryEntry(item_id=target_item(e), query=query, timestamp=e.timestamp))
    return out


@pytest.fixture(scope="module")
def world():
    ds, idmap = tiny_world(n_users=48)
    vocab, renderer, model = tiny_model(ds, idmap)
    events = sorted([*ds.interactions, *ds.searches], key=event_order)
    bootstrap = [e for e in events if int(e.user_id) < 24]
    settings = TrainSettings(epochs=10, batch_size=32, warmup_steps=10, learning_rate=5e-3, device="cpu")
    train(model, build_pools(renderer, bootstrap), TaskMix(), settings, vocab.pad_id, progress=False)
    base = GenSARModel(model, vocab, TINY, renderer.settings, idmap.version, idmap.fingerprint())
    fresh = stream_samples([e for e in events if int(e.user_id) >= 24])
    return base, renderer, fresh


def refresher(base, renderer, tmp_path, **overrides) -> Refresher:
    defaults = dict(training=RefreshTraining(epochs=3, learning_rate=3e-3), gate_margin=0.05, gate_beam_size=10,
                    holdout_fraction=0.3, device="cpu")
    settings = LearnerSettings(**{**defaults, **overrides})
    return Refresher(base, "tiny-base", renderer, Registry(LocalArtifactStore(tmp_path / "registry")), settings)


def test_stream_samples_render_like_offline_training(world):
    base, renderer, fresh = world
    rendered = [renderer.training_sample(s) for s in fresh]
    assert all(r is not None for r in rendered)
    assert {r.task for r in rendered} == {"rec", "search"}
    assert all(r.source[: len(renderer.prompts["recommend:"])] == renderer.prompts["recommend:"]
               for r in rendered if r.task == "rec")


def test_refreshes_are_promoted_and_the_second_continues_the_first(world, tmp_path):
    base, renderer, fresh = world
    r = refresher(base, renderer, tmp_path)
    first = r.run(fresh, [], "r0001")
    assert first.status == "promoted", first.reason
    manifest = r.registry.manifest("r0001")
    assert manifest.parent is None and manifest.base_model == "tiny-base" and manifest.idmap_version == "tiny1"
    assert {"candidate:rec", "candidate:search", "serving:rec", "serving:search"} <= set(manifest.metrics)
    assert manifest.window.samples > 0 and manifest.train_loss[-1] < manifest.train_loss[0]
    second = r.run(fresh[::-1][: len(fresh) // 2][::-1], fresh[:50], "r0002")
    assert r.registry.manifest("r0002").parent == "r0001"
    assert second.status in ("promoted", "rejected")  # either way, decided with a reason
    assert second.reason


def test_a_candidate_trained_on_shuffled_labels_is_rejected(world, tmp_path):
    base, renderer, fresh = world
    r = refresher(base, renderer, tmp_path, training=RefreshTraining(epochs=6, learning_rate=1e-2))
    holdout_start = int(len(fresh) * 0.7)
    targets = [s.target_item for s in fresh[:holdout_start]]
    random.Random(0).shuffle(targets)
    shuffled = [s.model_copy(update={"target_item": t}) for s, t in zip(fresh, targets)] + fresh[holdout_start:]
    decision = r.run(shuffled, [], "bad1")
    assert decision.status == "rejected" and decision.reason.startswith("regressed")
    assert r.registry.serving() is None


def test_a_non_finite_loss_is_rejected_and_recorded(world, tmp_path):
    base, renderer, fresh = world
    r = refresher(base, renderer, tmp_path, training=RefreshTraining(epochs=1, learning_rate=1e30))
    decision = r.run(fresh, [], "nan1")
    assert decision.status == "rejected" and "non-finite loss" in decision.reason
    assert r.registry.status("nan1").status == "rejected"


def test_gate_rule():
    serving = {"rec": {"HR@10": 0.5, "NDCG@10": 0.3}, "search": {"HR@10": 0.4, "NDCG@10": 0.2}}
    assert gate({"rec": {"HR@10": 0.49, "NDCG@10": 0.31}, "search": {"HR@10": 0.5, "NDCG@10": 0.2}}, serving, 0.02)[0]
    ok, reason = gate({"rec": {"HR@10": 0.7, "NDCG@10": 0.5}, "search": {"HR@10": 0.3, "NDCG@10": 0.2}}, serving, 0.02)
    assert not ok and "search HR@10" in reason
    assert not gate({}, serving, 0.02)[0]


def test_a_task_adapter_learns_and_is_gated_on_its_own_task_only(world, tmp_path):
    base, renderer, fresh = world
    r = refresher(base, renderer, tmp_path)
    r.task = "rec"
    decision = r.run(fresh, [], "rec1")
    manifest = r.registry.manifest("rec1")
    assert decision.task == "rec" and manifest.task == "rec"
    assert set(manifest.metrics) == {"candidate:rec", "serving:rec"}
    assert manifest.window.samples < len(fresh)  # search samples were left to the search adapter
