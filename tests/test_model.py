"""The GenSAR model on a tiny world: user windows train every target once, the model
trains (loss falls), exact scoring equals a plain forward pass, beam search decodes only
valid ids, save/load round-trips, training resumes from a checkpoint."""

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
from model.generate import beam_search, prefill, score, score_ids, search
from model.modeling import ModelSettings, build_model, parameter_count, parts
from model.tasks import ALIGNMENT, KIND, RenderSettings, Renderer, TaskMix, build_pools, epoch_order
from model.train import TrainSettings, batches, train
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
    renderer = Renderer(vocab, idmap, ds, texts, RenderSettings(context_tokens=40, overlap_tokens=16))
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


def test_user_windows_train_every_target_once_and_fit_the_context(world):
    ds, idmap, vocab, renderer, model, pools = world
    train = leave_one_out(ds).train
    assert all(pools[t] for t in ALIGNMENT)
    windows = pools["events"]
    assert all(len(s.tokens) <= 40 and s.tokens[0] == vocab.start_id for s in windows)
    # every training event's identifier is a target in exactly one window
    ids = sum(s.kinds.count(KIND["rec"]) + s.kinds.count(KIND["search"]) for s in windows)
    assert ids == sum(3 for e in train)  # 3 levels per identifier in the tiny map
    users = {e.user_id for e in train}
    assert len(windows) > len(users)  # long users are cut into several windows (40 tokens)...
    first = [s for s in windows if s.kinds[1:5] == (0, 0, 0, 0)]
    assert first  # ...the later ones start with context already trained in the one before
    # an interaction is <rec> + rec id, a search is <search> + query + [SEP] + search id
    s = windows[0]
    assert s.tokens[1] in (vocab.markers["rec"], vocab.markers["search"])


def test_the_mix_weighs_tasks_and_draws_alignment_sequences(world):
    *_, pools = world
    mix = TaskMix(rec=1.0, search=0.0, next_query=0.0, synthetic_search=0.0, item_to_id=0.5, id_to_item=2.0)
    order = epoch_order(pools, mix, seed=0, epoch=0)
    counts = {t: sum(s.task == t for s in order) for t in ("events", *ALIGNMENT)}
    assert counts["events"] == len(pools["events"]) and counts["synthetic_search"] == 0
    assert counts["item_to_id"] == round(0.5 * len(pools["item_to_id"]))
    assert counts["id_to_item"] == 2 * len(pools["id_to_item"])
    weights = mix.weights()
    assert weights[KIND["rec"]] == 1.0 and weights[KIND["search"]] == 0.0 and weights[0] == 0.0
    assert TaskMix.single("rec").search == 0 and TaskMix.single("search").rec == 0
    packed = batches(order, 256, seed=0, epoch=0)
    assert sum(map(len, packed)) == len(order)
    assert all(len(b) * max(len(s.tokens) for s in b) <= 256 or len(b) == 1 for b in packed)


def test_exact_scores_equal_a_plain_forward_pass(world):
    ds, idmap, vocab, renderer, model, pools = world
    events = [e for e in ds.user_events() if e.user_id == "3"]
    sources = [renderer.source("rec", events[:k]) for k in (1, 4, 9)] + [renderer.source("search", events[:5], "alpha")]
    tasks = ["rec", "rec", "rec", "search"]
    codes = {"rec": idmap.rec_codes, "search": idmap.search_codes}
    decoder, out_weight = parts(model)
    model.eval()
    for source, task in zip(sources, tasks):
        candidates = codes[task][[0, 5, 77]][None]  # (1, 3, L)
        exact = score_ids(model, vocab, task, [source], candidates)[0]
        for j, c in enumerate(candidates[0]):
            tokens = torch.tensor([list(source) + vocab.id_tokens(task, c).tolist()])
            with torch.no_grad():
                hidden = decoder(input_ids=tokens).last_hidden_state[0]
            plain = sum(torch.log_softmax(hidden[len(source) - 1 + l] @ out_weight.detach()[vocab.level_tokens(task, l)].T, -1)[c[l]]
                        for l in range(len(c)))
            assert exact[j] == pytest.approx(float(plain), abs=1e-4)
    # candidates without an identifier score -inf; a batch of prefixes of different lengths
    # (left padding) scores each as alone
    batch = np.stack([codes["rec"][[0, 5, 77]]] * 3)
    batch[1, 2] = -1
    together = score_ids(model, vocab, "rec", sources[:3], batch)
    assert np.isneginf(together[1, 2])
    for i in range(3):
        alone = score_ids(model, vocab, "rec", [sources[i]], batch[i: i + 1])[0]
        assert np.allclose(together[i][np.isfinite(together[i])], alone[np.isfinite(alone)], atol=1e-4)


def test_a_tiny_model_trains_its_loss_falls_and_it_decodes_only_valid_ids(world, tmp_path):
    ds, idmap, vocab, renderer, model, pools = world
    settings = TrainSettings(epochs=30, batch_tokens=1024, warmup_steps=10, learning_rate=5e-3, log_every=5, device="cpu")
    report = train(model, pools, TaskMix(), settings, vocab, progress=False)
    assert report.losses[-1] < 0.6 * report.losses[0], report.losses
    assert report.identifiers_per_second > 0 and report.epochs_done == pytest.approx(30, rel=0.05)
    # constrained decoding over a catalogue subset: every returned id is a valid one of that subset
    allowed_rows = np.arange(0, 128, 3)
    constraint = PrefixConstraint(idmap.rec_codes[allowed_rows], 8, rows=allowed_rows)
    events = [e for e in ds.user_events() if e.user_id == "5"]
    sources = [renderer.source("rec", events[:k]) for k in range(1, 7)]
    ranked = beam_search(model, vocab, "rec", sources, constraint, beam_size=10)
    assert (ranked.rows >= 0).all() and set(ranked.rows.ravel()) <= set(allowed_rows.tolist())
    assert (np.diff(ranked.scores, axis=1) <= 1e-6).all()  # best first
    for b in range(len(sources)):
        assert len(set(ranked.rows[b])) == 10  # distinct items
        assert (idmap.rec_codes[ranked.rows[b]] == ranked.codes[b]).all()
    # a beam's scores are the exact scores of what it found, and nothing valid scores above its best
    exact = score_ids(model, vocab, "rec", sources, np.stack([idmap.rec_codes[allowed_rows]] * len(sources)))
    for b in range(len(sources)):
        column = {int(r): j for j, r in enumerate(allowed_rows)}
        assert np.allclose(ranked.scores[b], exact[b, [column[int(r)] for r in ranked.rows[b]]], atol=1e-4)
        assert exact[b].max() == pytest.approx(ranked.scores[b, 0], abs=1e-4)
    # fewer valid ids than beams: the rest is empty, never invalid
    few = PrefixConstraint(idmap.search_codes[:3], 8)
    ranked = beam_search(model, vocab, "search", sources[:2], few, beam_size=5)
    assert (np.sort(ranked.rows[:, :3], 1) == [0, 1, 2]).all() and (ranked.rows[:, 3:] == -1).all()
    assert np.isneginf(ranked.scores[:, 3:]).all()
    # it learned the walk: the next item of a user ranks first far more often than chance
    split = leave_one_out(ds)
    hits = 0
    for e in split.test:
        if e.type != "interaction":
            continue
        history = [x for x in ds.user_events() if x.user_id == e.user_id and x.timestamp < e.timestamp]
        scores = score_ids(model, vocab, "rec", [renderer.source("rec", history)], idmap.rec_codes[None])[0]
        hits += int(np.argsort(-scores)[:10].tolist().count(idmap.row(e.item_id)))
    assert hits >= 0.5 * sum(e.type == "interaction" for e in split.test)  # chance: 10 / 128


def test_save_then_load_gives_identical_outputs_and_damage_is_refused(world, tmp_path):
    ds, idmap, vocab, renderer, model, pools = world
    gm = GenSARModel(model, vocab, TINY, renderer.settings, idmap.version, idmap.fingerprint(), step=7)
    path = gm.save(tmp_path / "m1")
    loaded = GenSARModel.load(path)
    assert loaded.idmap_version == "tiny1" and loaded.step == 7 and loaded.vocab.text_ids == vocab.text_ids
    assert loaded.vocab.markers == vocab.markers
    loaded.check_map(idmap)
    constraint = PrefixConstraint(idmap.search_codes, 8)
    events = [e for e in ds.user_events() if e.user_id == "2"]
    sources = [renderer.source("search", events[:k], "bravo") for k in range(5)]
    a = beam_search(model, vocab, "search", sources, constraint, beam_size=8)
    b = beam_search(loaded.model, loaded.vocab, "search", sources, constraint, beam_size=8)
    assert (a.rows == b.rows).all() and np.allclose(a.scores, b.scores, atol=1e-5)
    codes = np.stack([idmap.search_codes[:20]] * len(sources))
    assert np.allclose(score_ids(model, vocab, "search", sources, codes),
                       score_ids(loaded.model, loaded.vocab, "search", sources, codes), atol=1e-5)
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
    settings = TrainSettings(epochs=2, batch_tokens=256, warmup_steps=2, checkpoint_every=5, device="cpu")
    full = train(model, pools, TaskMix(), settings, vocab, checkpoint_dir=tmp_path / "ckpt", progress=False)
    # a fresh model resuming from the finished run's checkpoint has nothing left to do...
    _, _, again = tiny_model(ds, idmap, seed=5)
    resumed = train(again, pools, TaskMix(), settings, vocab, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert resumed.resumed_from_step == full.steps and resumed.steps == 0
    # ...and holds the trained weights, not its own initialisation
    for p, q in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)
    assert parameter_count(model) > 0


def test_a_stream_sample_renders_like_its_dataset_history_with_the_loss_on_its_event(world):
    from gensar.events import HistoryEntry, TrainingSample

    ds, idmap, vocab, renderer, *_ = world
    events = [e for e in ds.user_events() if e.user_id == "3"]
    history, target = events[:-1], events[-1]
    entries = [HistoryEntry(item_id=e.item_id if e.type == "interaction" else e.clicked_items[0],
                            query=getattr(e, "query", None), timestamp=e.timestamp) for e in history]
    sample = TrainingSample(event_id="s1", timestamp=target.timestamp, task="rec", user_id="3",
                            history=[h.item_id for h in entries], events=entries, target_item=target.item_id,
                            source_event_id=target.event_id)
    # the user's sequence as the base model reads it, the loss on the sample's own event only
    assert renderer.stream_windows([sample]) == renderer.windows(events, [False] * len(history) + [True])
    (window,) = renderer.stream_windows([sample])
    source = renderer.source("rec", history)
    assert window.tokens == source + renderer.target_id("rec", target.item_id)  # as much history as fits
    assert window.kinds == (0,) * len(source) + (KIND["rec"],) * 3
    unknown = sample.model_copy(update={"target_item": "not-in-the-map"})
    assert renderer.stream_windows([unknown]) == []  # a new item: no identifier yet


def test_the_history_prior_lifts_searched_items_and_scores_them_exactly(world):
    from gensar.events import HistoryEntry
    from model.history import HistoryPrior, features, rank_with_history

    ds, idmap, vocab, renderer, model, pools = world
    history = [HistoryEntry(item_id="77", query="oscar", timestamp=1), HistoryEntry(item_id="77", query="x", timestamp=2),
               HistoryEntry(item_id="5", timestamp=3)]
    source = renderer.source("search", history, "papa")
    few = PrefixConstraint(idmap.search_codes[:4], 8)  # a beam that cannot reach item 77
    # the beam and the lifted items are branches of one prefix (serving's way)
    prefix = prefill(model, [source], vocab.pad_id)
    ranked = search(model, vocab, "search", prefix, few, np.zeros(1, np.int64), 4)
    row_of = {item: r for r, item in enumerate(idmap.item_ids)}
    prior = HistoryPrior(weights={"search": (3.0, -1.0)})  # saved before recency: its weight is 0
    assert prior.of("search") == (3.0, -1.0, 0.0)
    rows, scores = rank_with_history(lambda codes: score(model, vocab, "search", prefix, codes), "search", [history],
                                     ranked.rows, ranked.scores, idmap.search_codes, idmap.item_ids, row_of, prior)
    assert 77 in rows[0] and set(ranked.rows[0]) <= set(rows[0])  # lifted, nothing dropped
    assert (np.diff(scores[0][np.isfinite(scores[0])]) <= 1e-9).all()  # best first
    exact = score_ids(model, vocab, "search", [source], idmap.search_codes[rows[0]][None])[0]
    bonus = features(history, [idmap.item_ids[r] for r in rows[0]]) @ np.array([3.0, -1.0, 0.0])
    assert np.allclose(scores[0], exact + bonus, atol=1e-4)
    assert bonus[list(rows[0]).index(77)] == pytest.approx(3.0 * np.log(3))  # searched twice
    # zero weights change nothing, and lift nothing
    same_rows, same_scores = rank_with_history(lambda codes: score_ids(model, vocab, "search", [source], codes),
                                               "search", [history], ranked.rows, ranked.scores, idmap.search_codes,
                                               idmap.item_ids, row_of, HistoryPrior())
    assert (same_rows == ranked.rows).all() and np.allclose(same_scores, ranked.scores)


def test_the_history_prior_weighs_recency_and_lifts_the_latest_items():
    from gensar.events import HistoryEntry
    from model.history import HistoryPrior, features, lifted

    history = [HistoryEntry(item_id="77", query="oscar", timestamp=1), HistoryEntry(item_id="5", timestamp=2),
               HistoryEntry(item_id="77", query="x", timestamp=3), HistoryEntry(item_id="9", timestamp=4)]
    recency = features(history, ["9", "77", "5", "unseen"])[:, 2]
    assert recency.tolist() == [1.0, 0.5, 1 / 3, 0.0]  # 1 / (1 + events after the item's latest)
    assert lifted(HistoryPrior(weights={"search": (0.0, 0.0, 1.0)}), "search", history) == ["9", "77", "5"]
    assert lifted(HistoryPrior(weights={"search": (1.0, 0.0, 0.0)}), "search", history) == ["77"]


def test_history_events_can_carry_both_identifiers(world):
    ds, idmap, vocab, renderer, *_ = world
    both = Renderer(vocab, idmap, ds, renderer.item_text, renderer.settings.model_copy(update={"history_ids": "both"}))
    interaction = next(e for e in ds.interactions if e.item_id == "5")
    tokens, kinds = both.event(interaction)
    assert tokens == [vocab.markers["rec"], *both.ids("rec", 5), *both.ids("search", 5)[1:]]  # 1 shared level
    assert kinds == [0] + [KIND["rec"]] * 3 + [0, 0]  # the other id is context, not a target
    assert renderer.event(interaction)[0] == tokens[:4]
