"""Refreshes end to end without Ray on a tiny world: a good candidate is promoted, one
trained on shuffled labels or with a non-finite loss is rejected with its reason, and a
second refresh continues from the serving adapter."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from evaluation.generative import GenerativeSystem, fit_weights, prior_evidence
from gensar.data import event_order, target_item
from gensar.events import HistoryEntry, InteractionEvent, TrainingSample
from identifiers.idmap import IdentifierMap, MapStore
from learner.refresh import GateCases, Refresher, gate
from learner.registry import LocalArtifactStore, Registry
from learner.settings import LearnerSettings, RefreshTraining
from model.artifact import GenSARModel
from model.history import HistoryPrior
from model.tasks import KIND, TaskMix, build_pools
from model.train import TrainSettings, train
from test_model import TINY, tiny_model, tiny_world

MIN_CASES = 20  # the tiny world holds out 73 rec and 36 search samples: both tasks decide


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
    settings = TrainSettings(epochs=10, batch_tokens=1024, warmup_steps=10, learning_rate=5e-3, device="cpu")
    train(model, build_pools(renderer, bootstrap), TaskMix(), settings, vocab, progress=False)
    base = GenSARModel(model, vocab, TINY, renderer.settings, idmap.version, idmap.fingerprint())
    fresh = stream_samples([e for e in events if int(e.user_id) >= 24])
    return base, renderer, fresh


def refresher(base, renderer, tmp_path, **overrides) -> Refresher:
    defaults = dict(training=RefreshTraining(epochs=3, learning_rate=3e-3), gate_margin=0.05,
                    gate_min_cases=MIN_CASES, holdout_fraction=0.3, device="cpu")
    settings = LearnerSettings(**{**defaults, **overrides})
    return Refresher(base, "tiny-base", renderer, Registry(LocalArtifactStore(tmp_path / "registry")), settings)


def trained_ids(renderer, windows) -> Counter:
    """(task, item) of every identifier the windows put loss on (runs of rec / search kinds)."""
    out = Counter()
    for w in windows:
        for task in ("rec", "search"):
            tokens = renderer.rec_tokens if task == "rec" else renderer.search_tokens  # (n_items, 3)
            at = [i for i, k in enumerate(w.kinds) if k == KIND[task]]
            for i in range(0, len(at), 3):
                code = tuple(w.tokens[j] for j in at[i: i + 3])
                out[task, renderer.idmap.item_ids[int(np.flatnonzero((tokens == code).all(1))[0])]] += 1
    return out


def test_stream_samples_render_like_offline_training(world):
    base, renderer, _ = world
    ds = renderer.ds
    events = sorted([*ds.interactions, *ds.searches], key=event_order)
    by_user = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    # every event a sample: exactly the base model's user windows, though each sample holds 10 events
    assert renderer.stream_windows(stream_samples(events)) == [w for u in by_user.values() for w in renderer.windows(u)]


def test_stream_windows_train_each_sample_target_once_and_nothing_else(world):
    base, renderer, fresh = world
    by_user = defaultdict(list)
    for s in fresh:
        by_user[s.user_id].append(s)
    late = [s for samples in by_user.values() for s in samples[5:]]  # each user's first 5 events: history only
    search = next(s for s in late if s.task == "search")
    second_click = search.model_copy(update={"event_id": search.event_id + "/1", "target_item": "7"})
    unknown = late[0].model_copy(update={"event_id": "new", "target_item": "not-in-the-map"})
    # + a replay draw of older samples (some of them also recent: a repeat is trained once)
    samples = [*late, second_click, unknown, *fresh[:60:4]]
    windows = renderer.stream_windows(samples)
    known = list({s.event_id: s for s in samples if s.target_item in renderer.idmap}.values())
    assert len(known) < len(samples) - 1
    assert trained_ids(renderer, windows) == Counter((s.task, s.target_item) for s in known)
    # no other loss: besides the identifiers, only the query pieces (+ [SEP]) of the trained searches
    queries = sum(len(renderer.text(s.query)) + 1 for s in known if s.task == "search")
    assert sum(w.targets for w in windows) == 3 * len(known) + queries
    assert sum(w.kinds.count(KIND["next_query"]) for w in windows) == queries
    assert len(windows) < len(known) / 2  # a user's samples share windows and their context


def test_a_long_stream_user_is_cut_into_overlapping_windows_losing_no_target(world):
    base, renderer, fresh = world
    user = fresh[-1].user_id
    samples = [s for s in fresh if s.user_id == user]
    windows = renderer.stream_windows(samples)
    limit, overlap = renderer.settings.context_tokens, renderer.settings.overlap_tokens
    assert sum(len(renderer.event(h)[0]) for h in samples[-1].events) > limit  # its last history alone
    assert len(windows) > 2 and all(len(w.tokens) <= limit and w.tokens[0] == renderer.vocab.start_id for w in windows)
    assert trained_ids(renderer, windows) == Counter((s.task, s.target_item) for s in samples)
    for before, after in zip(windows, windows[1:]):  # the next starts with this one's tail, as context
        first = next(i for i, k in enumerate(after.kinds) if k)
        context = after.tokens[1: first - 1]  # between [CLS] and the first target's <rec> / <search>
        assert 0 < len(context) <= overlap and before.tokens[-len(context):] == context


def test_refreshes_are_promoted_and_the_second_continues_the_first(world, tmp_path):
    base, renderer, fresh = world
    r = refresher(base, renderer, tmp_path)
    first = r.run(fresh, [], "r0001")
    assert first.status == "promoted", first.reason
    manifest = r.registry.manifest("r0001")
    assert manifest.parent is None and manifest.base_model == "tiny-base" and manifest.idmap_version == "tiny1"
    assert {"candidate:rec", "candidate:search", "serving:rec", "serving:search"} <= set(manifest.metrics)
    assert manifest.gate.promote and manifest.gate.reason == first.reason and manifest.gate.fresher
    for task, comparison in manifest.gate.tasks.items():  # the paired interval is in the manifest
        assert comparison.n == manifest.metrics[f"candidate:{task}"]["n"] >= MIN_CASES
        lo, hi = comparison.ci95["HR@10"]
        assert lo <= comparison.difference["HR@10"] <= hi
    assert manifest.window.samples > 0 and len(manifest.train_loss) > 1  # a loss per step (falling: test_learner_lora)
    assert all(np.isfinite(manifest.train_loss))
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


def test_a_refresh_with_too_few_held_out_cases_is_not_decided_and_not_promoted(world, tmp_path):
    base, renderer, fresh = world
    r = refresher(base, renderer, tmp_path, gate_min_cases=500)
    decision = r.run(fresh, [], "few1")
    assert decision.status == "rejected" and decision.reason.startswith("not decided")
    gate_record = r.registry.manifest("few1").gate
    assert gate_record.outcome == "not decided" and not gate_record.promote
    assert {c.verdict for c in gate_record.tasks.values()} == {"not decided"}
    assert r.registry.serving() is None


def test_a_non_finite_loss_is_rejected_and_recorded(world, tmp_path):
    base, renderer, fresh = world
    # small batches: the loss of a step is taken before its update, so a step must follow the blow-up
    r = refresher(base, renderer, tmp_path, training=RefreshTraining(epochs=1, learning_rate=1e30, batch_tokens=256))
    decision = r.run(fresh, [], "nan1")
    assert decision.status == "rejected" and "non-finite loss" in decision.reason
    assert r.registry.status("nan1").status == "rejected" and r.registry.manifest("nan1").gate is None


def per_case(hits: list[float]) -> dict[str, np.ndarray]:
    """A task's per-case gate metrics (NDCG@10 here: half of each hit)."""
    return {"HR@10": np.array(hits, float), "NDCG@10": 0.5 * np.array(hits, float)}


def test_the_gate_does_not_decide_a_task_on_too_few_cases():
    few = gate({"search": per_case([1.0] * 20)}, {"search": per_case([0.0] * 20)}, fresher=True, min_cases=100,
               margin=0.02)
    assert not few.promote and few.outcome == "not decided" and few.reason.startswith("not decided")
    assert few.tasks["search"].verdict == "not decided" and few.tasks["search"].n == 20
    # a decided task decides; the undecided one is named, never counted as a pass
    rng = np.random.default_rng(0)
    serving = (rng.random(300) < 0.3).astype(float)
    mixed = gate({"rec": per_case(np.maximum(serving, rng.random(300) < 0.3)), "search": per_case([1.0] * 20)},
                 {"rec": per_case(serving), "search": per_case([0.0] * 20)}, fresher=False, min_cases=100, margin=0.02)
    assert mixed.promote and mixed.outcome == "better"
    assert mixed.tasks["search"].verdict == "not decided" and "search not decided (20 < 100 cases)" in mixed.reason


def test_the_gate_promotes_a_clearly_better_candidate_with_its_paired_interval():
    rng = np.random.default_rng(1)
    serving = (rng.random(400) < 0.3).astype(float)
    candidate = np.maximum(serving, rng.random(400) < 0.2)  # never worse on a case, better on many
    record = gate({"rec": per_case(candidate)}, {"rec": per_case(serving)}, fresher=False, min_cases=100, margin=0.02)
    assert record.promote and record.outcome == "better" and record.reason.startswith("better than serving")
    rec = record.tasks["rec"]
    assert rec.verdict == "better" and rec.n == 400
    lo, hi = rec.ci95["HR@10"]
    assert 0 < lo <= rec.difference["HR@10"] <= hi
    assert abs(rec.difference["HR@10"] - (candidate.mean() - serving.mean())) < 1e-12


def test_an_indistinguishable_candidate_is_promoted_only_when_fresher():
    rng = np.random.default_rng(2)
    serving = (rng.random(300) < 0.4).astype(float)
    candidate = serving.copy()  # as many cases gained as lost: no evidence either way
    candidate[np.flatnonzero(serving == 1)[:20]] = 0.0
    candidate[np.flatnonzero(serving == 0)[:20]] = 1.0
    both = ({"rec": per_case(candidate)}, {"rec": per_case(serving)})
    fresh = gate(*both, fresher=True, min_cases=100, margin=0.05)
    assert fresh.tasks["rec"].verdict == "indistinguishable", fresh.tasks["rec"]
    lo, hi = fresh.tasks["rec"].ci95["HR@10"]
    assert lo <= 0 <= hi
    assert fresh.promote and fresh.outcome == "fresher and not worse" and "fresher and not worse" in fresh.reason
    stale = gate(*both, fresher=False, min_cases=100, margin=0.05)
    assert not stale.promote and stale.outcome == "not fresher"


def test_a_worse_candidate_is_rejected():
    rng = np.random.default_rng(3)
    serving = (rng.random(300) < 0.5).astype(float)
    candidate = serving * (rng.random(300) < 0.7)  # loses about 30% of serving's hits
    record = gate({"rec": per_case(candidate), "search": per_case([1.0] * 200)},
                  {"rec": per_case(serving), "search": per_case([0.0] * 200)}, fresher=True, min_cases=100, margin=0.02)
    assert not record.promote and record.outcome == "worse" and record.reason.startswith("regressed")
    assert record.tasks["rec"].verdict == "worse" and record.tasks["rec"].ci95["HR@10"][1] < 0
    assert record.tasks["search"].verdict == "better"  # one task's gain does not buy the other's loss
    # "not worse" needs the mean within the margin too: a small sure loss beyond it is worse
    nudged = gate({"rec": per_case(np.r_[np.zeros(10), np.ones(190)])}, {"rec": per_case(np.ones(200))},
                  fresher=True, min_cases=100, margin=0.02)
    assert nudged.outcome == "worse"
    assert not gate({}, {"rec": per_case(serving)}, fresher=True, min_cases=1, margin=0.02).promote


def test_the_gate_ranks_held_out_cases_among_paper_protocol_candidates(world):
    base, renderer, fresh = world
    ids = list(renderer.idmap.item_ids)
    held = GateCases(fresh, ids, renderer.item_text, negatives=20, seed=0)
    assert set(held.by_task) == {"search", "rec"}
    for task, (cases, candidates) in held.by_task.items():
        assert candidates.shape == (len(cases), 21)
        for case, row in zip(cases, candidates):
            assert ids[row[0]] == case.target and len(set(row.tolist())) == 21
            if task == "rec":  # random items outside the user's history
                assert not {ids[r] for r in row[1:]} & {e.item_id for e in case.history}
            else:  # BM25 hard negatives: the best ones share the query's word
                assert case.query in renderer.item_text[ids[row[1]]]
    again = GateCases(fresh, ids, renderer.item_text, negatives=20, seed=0)
    assert all((again.by_task[t][1] == held.by_task[t][1]).all() for t in held.by_task)  # same lists for both versions
    small = GateCases(fresh, ids[:40], renderer.item_text, negatives=99, seed=0)  # fewer items than negatives asked
    for cases, candidates in small.by_task.values():
        assert candidates.shape[1] <= 40 and all(ids[row[0]] == c.target for c, row in zip(cases, candidates))


def test_a_task_adapter_learns_and_is_gated_on_its_own_task_only(world, tmp_path):
    base, renderer, fresh = world
    r = refresher(base, renderer, tmp_path)
    r.task = "rec"
    decision = r.run(fresh, [], "rec1")
    manifest = r.registry.manifest("rec1")
    assert decision.task == "rec" and manifest.task == "rec"
    assert set(manifest.metrics) == {"candidate:rec", "serving:rec"}
    assert manifest.window.samples < len(fresh)  # search samples were left to the search adapter


def test_a_refresh_trains_against_the_latest_map_and_scores_serving_on_its_own(world, tmp_path):
    base, renderer, fresh = world
    maps = MapStore(tmp_path / "maps")
    maps.save(renderer.idmap)
    r = refresher(base, renderer, tmp_path, gate_margin=1.0)  # the gate is tested above; here m1 must serve
    r.maps = maps
    first = r.run(fresh, [], "m1")
    assert first.status == "promoted", first.reason  # on the base map: nothing newer yet
    # The collaborative updater re-codes two items (here: they trade ids), in a new version.
    idmap = renderer.idmap
    rows = [idmap.row("6"), idmap.row("5")]
    maps.save(idmap.derive("tiny2", ["5", "6"], idmap.search_codes[rows], idmap.rec_codes[rows]))
    decision = r.run(fresh, [], "m2")
    assert r.registry.manifest("m1").idmap_version == "tiny1"
    assert r.registry.manifest("m2").idmap_version == "tiny2" and decision.reason
    assert r.renderer.target_id("rec", "5") == renderer.target_id("rec", "6")  # trained on the new ids
    assert "serving:rec" in r.registry.manifest("m2").metrics  # m1 scored with tiny1, the map it serves with
    wrong = IdentifierMap(version="tiny3", item_ids=idmap.item_ids, search_codes=idmap.search_codes,
                          rec_codes=idmap.rec_codes, n_shared=idmap.n_shared, codebook_size=16)
    maps.save(wrong)
    with pytest.raises(ValueError, match="layout"):  # a map of another shape needs another base model
        r.renderer_for("tiny3")


def test_each_refresh_refits_the_history_prior_on_samples_the_serving_version_had_not_seen(world, tmp_path):
    base, renderer, fresh = world
    r = refresher(base, renderer, tmp_path, prior_cases=60, prior_min_cases=50, gate_margin=1.0)
    train_part = fresh[: int(len(fresh) * 0.7)]  # holdout_fraction 0.3: the gate's slice is never pooled
    first = r.run(fresh, [], "p1")
    assert first.status == "promoted", first.reason
    record = r.registry.manifest("p1").prior
    assert record.cases == {"search": 60, "rec": 60}
    assert not r.prior_pool.pooled & {s.event_id for s in fresh[len(train_part):]}
    # the weights are those the base model (serving before p1) ranks the newest 60 training samples per task best with
    newest = [s for task in ("search", "rec") for s in [s for s in train_part if s.task == task][-60:]]
    cases = GateCases(newest, list(renderer.idmap.item_ids), renderer.item_text, 99, 0)
    for task, (task_cases, candidates) in cases.by_task.items():
        system = GenerativeSystem("check", task, base, renderer, cases.item_index)
        assert record.weights[task] == fit_weights(prior_evidence(system, task_cases, candidates))[0]
    assert r.prior_of("p1").weights == record.weights  # the version serves with them (serving.bundle reads them too)
    r.run(fresh, [], "p2")  # a retry of the same samples pools nothing twice
    assert r.registry.manifest("p2").prior.cases == {"search": 60, "rec": 60}


def test_a_task_with_too_few_pooled_cases_keeps_the_serving_versions_prior(world, tmp_path):
    base, renderer, fresh = world
    served = dataclasses.replace(base, prior=HistoryPrior(weights={"search": (2.0, 0.0, 4.0), "rec": (0.0, -2.0, 1.0)}))
    r = refresher(served, renderer, tmp_path, prior_cases=60, prior_min_cases=61)
    r.run(fresh, [], "k1")
    assert r.registry.manifest("k1").prior.model_dump() == {
        "weights": {"search": (2.0, 0.0, 4.0), "rec": (0.0, -2.0, 1.0)}, "cases": {"search": 0, "rec": 0}}
    off = refresher(served, renderer, tmp_path / "off", prior_pool=0)
    off.run(fresh, [], "o1")
    assert off.prior_pool is None and off.registry.manifest("o1").prior is None and off.prior_of("o1") == served.prior
