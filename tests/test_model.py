"""The GenSAR model on a tiny world: it trains (loss falls), decodes only valid ids, and
round-trips through save/load; training resumes from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gensar.data import Dataset, leave_one_out
from gensar.events import InteractionEvent, ItemUpsert, SearchEvent
from gensar.artifacts import ArtifactError
from identifiers.constraints import PrefixConstraint
from identifiers.idmap import IdentifierMap
from identifiers.semantic import item_texts
from model.artifact import GenSARModel
from model.generate import beam_search
from model.modeling import ModelSettings, build_model, parameter_count
from model.tasks import TASKS, RenderSettings, Renderer, TaskMix, build_pools, epoch_order
from model.train import TrainSettings, train
from model.vocab import IdLayout, Vocabulary

GENRES = ["comedy", "drama", "horror", "western"]
WORDS = ["alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo", "lima", "mike", "oscar", "papa"]
TINY = ModelSettings(d_model=32, layers=1, heads=2, d_ff=64, dropout=0.0)


def tiny_world(n_items: int = 128, n_users: int = 24, seed: int = 0) -> tuple[Dataset, IdentifierMap]:
    """Users walk the catalogue in steps of one (so the next item is learnable) and tag
    some items with a word of their title. Ids: K=8, one shared level + two specific."""
    rng = np.random.default_rng(seed)
    items = {str(i): ItemUpsert(event_id=f"i-{i}", timestamp=0, item_id=str(i),
                                title=f"{WORDS[i % len(WORDS)]} {WORDS[(i // len(WORDS)) % len(WORDS)]} {i}",
                                fields={"genres": GENRES[i % len(GENRES)]}) for i in range(n_items)}
    interactions, searches, t = [], [], 1000
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for j in range(10):
            item = (start + j) % n_items
            interactions.append(InteractionEvent(event_id=f"r-{u}-{j}", timestamp=t, user_id=str(u), item_id=str(item),
                                                 kind="rate", value=4.0))
            t += 1
            if j % 2 == 0:
                searches.append(SearchEvent(event_id=f"t-{u}-{j}", timestamp=t, user_id=str(u),
                                            query=items[str(item)].title.split()[0], clicked_items=[str(item)]))
                t += 1
    ds = Dataset(Path("tiny"), items, interactions, searches, has_ratings=True)
    i = np.arange(n_items)
    search = np.stack([i // 64 % 8, i // 8 % 8, i % 8], 1)
    rec = np.stack([i // 64 % 8, i % 8, i // 8 % 8], 1)
    return ds, IdentifierMap(version="tiny1", item_ids=tuple(items), search_codes=search, rec_codes=rec,
                             n_shared=1, codebook_size=8)


def tiny_model(ds, idmap, seed: int = 0):
    texts = item_texts(ds, leave_one_out(ds).train)
    vocab = Vocabulary.for_corpus(IdLayout.of(idmap), [*texts.values(), *(e.query for e in ds.searches)])
    renderer = Renderer(vocab, idmap, ds, texts, RenderSettings(history_events=4, max_source_tokens=40))
    return vocab, renderer, build_model(TINY, vocab, seed=seed)


@pytest.fixture(scope="module")
def world():
    ds, idmap = tiny_world()
    vocab, renderer, model = tiny_model(ds, idmap)
    pools = build_pools(renderer, leave_one_out(ds).train)
    return ds, idmap, vocab, renderer, model, pools


def test_vocabulary_layout_shares_the_prefix_tokens(world):
    ds, idmap, vocab, *_ = world
    search, rec = vocab.id_tokens("search", idmap.search_codes), vocab.id_tokens("rec", idmap.rec_codes)
    assert (search[:, 0] == rec[:, 0]).all()  # shared level: one token in both tasks
    assert set(search[:, 1:].ravel()).isdisjoint(rec[:, 1:].ravel())  # specific levels: their own tokens
    assert search.min() >= vocab.text_size and rec.max() < vocab.size
    assert vocab.text_size < 1000  # compacted to the corpus' word pieces
    assert vocab.decode_text(vocab.text("alpha bravo")) == "alpha bravo"


def test_every_task_has_samples_and_the_mix_follows_its_weights(world):
    *_, pools = world
    assert all(pools[t] for t in TASKS)
    for s in pools["rec"]:
        assert s.target[-1] == world[2].eos_id and len(s.source) <= 40
    mix = TaskMix(rec=1.0, search=2.0, synthetic_search=0.0, item_to_id=0.5, id_to_item=0.0, next_query=0.0)
    order = epoch_order(pools, mix, seed=0, epoch=0)
    counts = {t: sum(s.task == t for s in order) for t in TASKS}
    assert counts["rec"] == len(pools["rec"]) and counts["search"] == 2 * len(pools["search"])
    assert counts["item_to_id"] == round(0.5 * len(pools["item_to_id"])) and counts["synthetic_search"] == 0
    assert TaskMix.single("rec").search == 0 and TaskMix.single("search").rec == 0


def test_a_tiny_model_trains_its_loss_falls_and_it_decodes_only_valid_ids(world, tmp_path):
    ds, idmap, vocab, renderer, model, pools = world
    settings = TrainSettings(epochs=8, batch_size=32, warmup_steps=10, learning_rate=5e-3, log_every=5, device="cpu")
    report = train(model, pools, TaskMix(), settings, vocab.pad_id, progress=False)
    assert report.losses[-1] < 0.6 * report.losses[0], report.losses
    assert report.samples_per_second > 0 and report.epochs_done == pytest.approx(8, rel=0.05)
    # constrained decoding over a catalogue subset: every returned id is a valid one of that subset
    allowed_rows = np.arange(0, 128, 3)
    constraint = PrefixConstraint(idmap.rec_codes[allowed_rows], 8, rows=allowed_rows)
    sources = [s.source for s in pools["rec"][:6]]
    ranked = beam_search(model, vocab, "rec", sources, constraint, beam_size=10)
    assert (ranked.rows >= 0).all() and set(ranked.rows.ravel()) <= set(allowed_rows.tolist())
    assert (np.diff(ranked.scores, axis=1) <= 1e-6).all()  # best first
    for b in range(len(sources)):
        assert len(set(ranked.rows[b])) == 10  # distinct items
        assert (idmap.rec_codes[ranked.rows[b]] == ranked.codes[b]).all()
    # fewer valid ids than beams: the rest is empty, never invalid
    few = PrefixConstraint(idmap.search_codes[:3], 8)
    ranked = beam_search(model, vocab, "search", sources[:2], few, beam_size=5)
    assert (np.sort(ranked.rows[:, :3], 1) == [0, 1, 2]).all() and (ranked.rows[:, 3:] == -1).all()
    assert np.isneginf(ranked.scores[:, 3:]).all()


def test_save_then_load_gives_identical_outputs_and_damage_is_refused(world, tmp_path):
    ds, idmap, vocab, renderer, model, pools = world
    gm = GenSARModel(model, vocab, TINY, renderer.settings, idmap.version, idmap.fingerprint(), step=7)
    path = gm.save(tmp_path / "m1")
    loaded = GenSARModel.load(path)
    assert loaded.idmap_version == "tiny1" and loaded.step == 7 and loaded.vocab.text_ids == vocab.text_ids
    loaded.check_map(idmap)
    constraint = PrefixConstraint(idmap.search_codes, 8)
    sources = [s.source for s in pools["search"][:5]]
    a = beam_search(model, vocab, "search", sources, constraint, beam_size=8)
    b = beam_search(loaded.model, loaded.vocab, "search", sources, constraint, beam_size=8)
    assert (a.rows == b.rows).all() and np.allclose(a.scores, b.scores, atol=1e-5)
    other = IdentifierMap(version="tiny2", item_ids=idmap.item_ids, search_codes=idmap.search_codes,
                          rec_codes=idmap.rec_codes, n_shared=1, codebook_size=8)
    with pytest.raises(ValueError, match="trained against identifier map tiny1"):
        loaded.check_map(other)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError, match="model.safetensors"):
        GenSARModel.load(path)


def test_training_resumes_from_its_checkpoint(tmp_path):
    ds, idmap = tiny_world(n_items=128, n_users=8, seed=1)
    vocab, renderer, model = tiny_model(ds, idmap)
    pools = build_pools(renderer, leave_one_out(ds).train)
    settings = TrainSettings(epochs=2, batch_size=16, warmup_steps=2, checkpoint_every=5, device="cpu")
    full = train(model, pools, TaskMix(), settings, vocab.pad_id, checkpoint_dir=tmp_path / "ckpt", progress=False)
    # a fresh model resuming from the finished run's checkpoint has nothing left to do...
    _, _, again = tiny_model(ds, idmap, seed=5)
    resumed = train(again, pools, TaskMix(), settings, vocab.pad_id, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert resumed.resumed_from_step == full.steps and resumed.steps == 0
    # ...and holds the trained weights, not its own initialisation
    for p, q in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)
    assert parameter_count(model) > 0


def test_stream_training_samples_render_like_dataset_histories(world):
    from gensar.events import HistoryEntry, TrainingSample

    ds, idmap, vocab, renderer, *_ = world
    events = [e for e in ds.user_events() if e.user_id == "3"]
    history, target = events[:-1], events[-1]
    entries = [HistoryEntry(item_id=e.item_id if e.type == "interaction" else e.clicked_items[0],
                            query=getattr(e, "query", None), timestamp=e.timestamp) for e in history]
    sample = TrainingSample(event_id="s1", timestamp=target.timestamp, task="rec", user_id="3",
                            history=[h.item_id for h in entries], events=entries, target_item=target.item_id,
                            source_event_id=target.event_id)
    rendered = renderer.training_sample(sample)
    assert rendered.source == renderer.source("rec", history)
    assert rendered.target == renderer.target_id("rec", target.item_id)
    unknown = sample.model_copy(update={"target_item": "not-in-the-map"})
    assert renderer.training_sample(unknown) is None
