"""The synthetic dataset generator: loadable, exact counts, deterministic, MovieLens-like structure."""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict

import pytest
from typer.testing import CliRunner

from gensar.data import leave_one_out, load, temporal_split
from gensar.synthetic import generate, write_synthetic

SMALL = dict(items=300, users=80, events=2000)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "small"
    stats = write_synthetic(root, **SMALL, seed=0)
    return root, stats, load(root)


def test_loads_with_exact_counts(small):
    root, stats, ds = small
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "movies.csv", "tags.csv"]
    assert (root / "README.txt").read_text().startswith("SYNTHETIC DATA")
    s = ds.stats()
    # Guaranteed exactly: items, users (each has an event), tag rows = loaded search events.
    assert (s["items"], s["users"], s["searches"]) == (300, 80, 2000)
    assert s["interaction_source"] == "tags" and not ds.has_ratings and not ds.skipped
    assert s["interactions"] == stats["tagged_pairs"]  # first tag per (user, item)
    assert (stats["items"], stats["users"], stats["tags"], stats["ratings"]) == (300, 80, 2000, 0)
    assert len({e.event_id for e in ds.user_events()}) == len(ds.user_events())
    assert all("(" in i.title and i.title.endswith(")") for i in ds.items.values())


def test_deterministic_for_a_seed(tmp_path, small):
    root, stats, _ = small
    again = write_synthetic(tmp_path / "again", **SMALL, seed=0)
    other = write_synthetic(tmp_path / "other", **SMALL, seed=1)
    for name in ("movies.csv", "tags.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (root / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != (root / name).read_bytes()
    assert {k: v for k, v in again.items() if k != "root"} == {k: v for k, v in stats.items() if k != "root"}


def test_retagging_bursts_and_heavy_tailed_users(small):
    _, stats, ds = small
    per_pair = Counter((e.user_id, e.clicked_items[0]) for e in ds.searches)
    retagged = [pair for pair, n in per_pair.items() if n > 1]
    assert len(retagged) == stats["retagged_pairs"] and len(retagged) > 0.2 * len(per_pair)
    same_second = Counter((e.user_id, e.clicked_items[0], e.timestamp) for e in ds.searches)
    assert sum(n > 1 for n in same_second.values()) > 50
    for user, item in retagged[:50]:  # a re-tag uses different words
        tags = [e.query.lower() for e in ds.searches if (e.user_id, e.clicked_items[0]) == (user, item)]
        assert len(set(tags)) > 1
    activity = sorted(Counter(e.user_id for e in ds.searches).values())
    assert activity[-1] > 5 * activity[len(activity) // 2]  # a few users with many events


def test_timestamps_increase_per_user_and_users_start_at_different_times(small):
    _, _, ds = small
    by_user = defaultdict(list)
    for e in sorted(ds.searches, key=lambda e: (e.user_id, e.timestamp)):
        by_user[e.user_id].append(e.timestamp)
    starts = sorted(ts[0] for ts in by_user.values())
    assert starts[-1] - starts[0] > 2 * 365 * 86400
    first, last = ds.stats()["first_timestamp"], ds.stats()["last_timestamp"]
    assert 1_388_534_400 <= first < last < 1_388_534_400 + 5 * 365 * 86400


def test_sequences_have_learnable_structure(small):
    _, _, ds = small
    topic = generate(**SMALL, seed=0).topic_of()
    sequences = defaultdict(list)
    for e in ds.interactions:  # time order
        sequences[e.user_id].append(e.item_id)
    consecutive = [(a, b) for seq in sequences.values() for a, b in zip(seq, seq[1:])]
    rng = random.Random(0)
    seen = [e.item_id for e in ds.interactions]
    random_pairs = [(rng.choice(seen), rng.choice(seen)) for _ in range(len(consecutive))]

    def share(pairs, same):
        return sum(same(a, b) for a, b in pairs) / len(pairs)

    same_topic = lambda a, b: topic[a] == topic[b]  # noqa: E731
    assert share(consecutive, same_topic) > 0.6 and share(consecutive, same_topic) > 4 * share(random_pairs, same_topic)
    # Visible without the hidden topics too: consecutive items share a genre far more often.
    genres = {i.item_id: set(i.fields.get("genres", "").split(", ")) - {""} for i in ds.items.values()}
    share_genre = lambda a, b: bool(genres[a] & genres[b])  # noqa: E731
    assert share(consecutive, share_genre) > 1.8 * share(random_pairs, share_genre)
    # Zipf-like popularity: the top 10% of items draw far more than 10% of the events.
    counts = sorted(Counter(seen).values(), reverse=True)
    assert sum(counts[:30]) > 0.3 * len(seen)


def test_splits_work_and_temporal_test_has_searches(small):
    _, _, ds = small
    loo = leave_one_out(ds)
    assert loo.test and loo.valid and loo.train
    assert {e.type for e in loo.test} == {"search", "interaction"}
    temporal = temporal_split(ds)
    tested = Counter(e.type for e in temporal.test)
    assert tested["search"] > tested["interaction"] > 0  # more search cases than rec cases
    cut = temporal.test[0].timestamp
    assert all(e.timestamp < cut for e in temporal.train + temporal.valid)
    both_sides = {e.user_id for e in temporal.train} & {e.user_id for e in temporal.test}
    assert both_sides and {e.user_id for e in temporal.test} - {e.user_id for e in temporal.train}


def test_ratings_variant_and_rewriting(tmp_path):
    root = tmp_path / "rated"
    stats = write_synthetic(root, items=200, users=30, events=1500, seed=3, ratings=True)
    ds = load(root)
    s = ds.stats()
    assert ds.has_ratings and (s["items"], s["users"], s["interactions"]) == (200, 30, 1500)
    assert s["searches"] == stats["tags"] > 0
    values = {e.value for e in ds.interactions}
    assert values <= {x / 2 for x in range(1, 11)} and len(values) > 4
    assert len({(e.user_id, e.item_id) for e in ds.interactions}) == 1500  # one rating per (user, item)
    write_synthetic(root, items=200, users=30, events=600, seed=3)  # a synthetic dir is replaced
    assert not (root / "ratings.csv").exists() and load(root).stats()["searches"] == 600


def test_refuses_foreign_directories_and_bad_sizes(tmp_path):
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n")
    with pytest.raises(FileExistsError):
        write_synthetic(tmp_path, items=10, users=2, events=5)
    assert (tmp_path / "movies.csv").read_text() == "movieId,title,genres\n"
    with pytest.raises(ValueError):
        generate(items=10, users=5, events=4)  # every user needs an event
    with pytest.raises(ValueError):
        generate(items=10, users=2, events=21, ratings=True)  # one rating per (user, item)


def test_tiny_sizes_still_load(tmp_path):
    write_synthetic(tmp_path / "tiny", items=3, users=2, events=7)
    s = load(tmp_path / "tiny").stats()
    assert (s["items"], s["users"], s["searches"]) == (3, 2, 7)


def test_full_size_is_fast():
    started = time.perf_counter()
    data = generate(items=10_000, users=3_993, events=93_972, seed=0)
    assert time.perf_counter() - started < 60
    assert (len(data.items), len(data.tags), len({t[0] for t in data.tags})) == (10_000, 93_972, 3_993)


def test_cli_synth_then_stats(tmp_path):
    from cli.main import app

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--items", "120", "--users", "20",
                                 "--events", "400", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert (out / "tags.csv").exists() and not (out / "ratings.csv").exists()
    stats = runner.invoke(app, ["data", "stats", "--data", str(out)])
    assert stats.exit_code == 0, stats.output
    assert "400" in stats.output and "tags" in stats.output
    refused = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--items", "5", "--users", "1",
                                  "--events", "2"])
    assert refused.exit_code == 2 and "error" in refused.output
