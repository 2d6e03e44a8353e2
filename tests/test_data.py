"""Dataset loading and splits: the bundled data, both layouts, and malformed inputs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from gensar.data import DataError, event_order, leave_one_out, load, target_item, temporal_split

MOVIES = "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,Jumanji (1995),Adventure\n3,Heat (1995),(no genres listed)\n"


def write(root: Path, **files: str | bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name.replace("_", ".")
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


@pytest.fixture(scope="module")
def bundled(bundled_data):
    return load(bundled_data)


def test_bundled_data_counts(bundled):
    stats = bundled.stats()
    assert (stats["items"], stats["users"], stats["interactions"], stats["searches"]) == (9742, 610, 100836, 3683)
    assert stats["interaction_source"] == "ratings"
    ids = [e.event_id for e in bundled.user_events()]
    assert len(ids) == len(set(ids)), "event ids must be unique"


def test_events_are_in_deterministic_time_order(bundled):
    events = bundled.user_events()
    assert events == sorted(events, key=event_order)
    assert all(a.timestamp <= b.timestamp for a, b in zip(events, events[1:]))


def test_item_text_fields(bundled):
    toy_story = bundled.items["1"]
    assert toy_story.title == "Toy Story (1995)"
    assert toy_story.fields["genres"].startswith("Adventure, Animation")


def test_tags_only_dataset_uses_earliest_tag_per_user_item(tmp_path):
    root = write(tmp_path / "d", movies_csv=MOVIES, tags_csv=(
        "userId,movieId,tag,timestamp\n7,1,funny,100\n7,1,pixar,50\n7,2,jungle,70\n8,1,\"cute, short\",60\n"))
    ds = load(root)
    assert not ds.has_ratings
    assert len(ds.searches) == 4
    pairs = {(e.user_id, e.item_id): e.timestamp for e in ds.interactions}
    assert pairs == {("7", "1"): 50, ("7", "2"): 70, ("8", "1"): 60}
    assert all(e.kind == "tag" for e in ds.interactions)
    assert {e.query for e in ds.searches} == {"funny", "pixar", "jungle", "cute, short"}


def test_dat_layout(tmp_path):
    root = write(tmp_path / "dat",
                 movies_dat="1::Toy Story (1995)::Animation|Comedy\n2::Heat (1995)::Action\n",
                 ratings_dat="1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n")
    ds = load(root)
    assert len(ds.items) == 2 and len(ds.interactions) == 3 and ds.searches == []
    assert ds.interactions[0].value == 5.0


@pytest.mark.parametrize("files, line, message", [
    ({"ratings_csv": "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,\"2,3.0,200\n"}, 3, "bad CSV"),
    ({"ratings_csv": "userId,movieId,timestamp\n1,1,100\n"}, 1, "missing column(s) rating"),
    ({"ratings_csv": "userId,movieId,rating,timestamp\n1,1,four,100\n"}, 2, "column rating: expected a number"),
    ({"ratings_csv": "userId,movieId,rating,timestamp\n1,1,4.0,100\nx,1,4.0,100\n"}, 3, "column userId: expected an integer"),
    ({"ratings_csv": "userId,movieId,rating,timestamp\n1,1,4.0\n"}, 2, "expected 4 fields, found 3"),
    ({"ratings_csv": "userId,movieId,rating,timestamp\n1,99,4.0,100\n"}, 2, "movieId 99 is not in movies.csv"),
    ({"ratings_csv": ""}, None, "empty file"),
    ({"tags_csv": b"userId,movieId,tag,timestamp\n1,1,ok,5\n1,2,caf\xe9,6\n"}, 3, "not valid utf-8"),
])
def test_malformed_rows_name_file_and_line(tmp_path, files, line, message):
    root = write(tmp_path / "bad", movies_csv=MOVIES, **files)
    with pytest.raises(DataError) as err:
        load(root)
    name = next(iter(files)).replace("_", ".")
    assert err.value.path.name == name
    assert err.value.line == line
    assert message in str(err.value)
    assert str(err.value).startswith(f"{err.value.path}:{line}" if line else str(err.value.path))


def test_lenient_loading_skips_and_counts(tmp_path):
    root = write(tmp_path / "lenient", movies_csv=MOVIES, ratings_csv=(
        "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,1,x,101\n1,99,3.0,102\n2,2,5.0,103\n1,2\n"),
        tags_csv=b"userId,movieId,tag,timestamp\n1,1,ok,5\n1,2,caf\xe9,6\n")
    ds = load(root, strict=False)
    assert len(ds.interactions) == 2
    assert len(ds.searches) == 1
    assert ds.skipped == {"ratings.csv": 3, "tags.csv": 1}


def test_directory_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load(tmp_path / "missing")
    with pytest.raises(DataError, match="not a MovieLens layout"):
        load(write(tmp_path / "nothing", readme_txt="hi"))
    with pytest.raises(DataError, match="needs ratings.csv or tags.csv"):
        load(write(tmp_path / "only-movies", movies_csv=MOVIES))
    with pytest.raises(DataError, match="no items"):
        load(write(tmp_path / "no-items", movies_csv="movieId,title,genres\n", tags_csv="userId,movieId,tag,timestamp\n"))


def test_leave_one_out_holds_out_last_event_per_user_and_task(bundled):
    split = leave_one_out(bundled)
    held = defaultdict(list)
    for e in split.test:
        held[(e.user_id, e.type)].append(e)
    assert all(len(v) == 1 for v in held.values()), "one test case per user and task"
    last = {}
    for e in bundled.user_events():
        last[(e.user_id, e.type)] = e
    for key, (event,) in held.items():
        assert event == last[key]
    # 610 users all have 20+ ratings; the ~50 real-query cases of the mission.
    assert sum(e.type == "interaction" for e in split.test) == 610
    assert 40 <= sum(e.type == "search" for e in split.test) <= 60


def test_leave_one_out_training_never_reveals_a_held_out_target(bundled):
    split = leave_one_out(bundled)
    barriers = defaultdict(list)
    for e in [*split.valid, *split.test]:
        barriers[e.user_id].append((target_item(e), e.timestamp))
    for e in split.train:
        for item, since in barriers[e.user_id]:
            assert not (target_item(e) == item and e.timestamp >= since), e
    held_ids = {e.event_id for e in [*split.valid, *split.test]}
    assert held_ids.isdisjoint(e.event_id for e in split.train)
    total = len(split.train) + len(split.valid) + len(split.test) + split.dropped
    assert total == len(bundled.user_events())


def test_leave_one_out_with_tags_only_never_trains_on_the_test_tagging_act(tmp_path, bundled_data):
    root = write(tmp_path / "tags-only", movies_csv=(bundled_data / "movies.csv").read_bytes(),
                 tags_csv=(bundled_data / "tags.csv").read_bytes())
    split = leave_one_out(load(root))
    test_acts = {(e.user_id, target_item(e), e.timestamp) for e in split.test}
    assert not any((e.user_id, target_item(e), e.timestamp) in test_acts for e in split.train)


def test_temporal_split_is_ordered_and_never_cuts_inside_a_second(bundled):
    split = temporal_split(bundled, valid_fraction=0.1, test_fraction=0.2)
    assert max(e.timestamp for e in split.train) < min(e.timestamp for e in split.valid)
    assert max(e.timestamp for e in split.valid) < min(e.timestamp for e in split.test)
    assert len(split.train) + len(split.valid) + len(split.test) == len(bundled.user_events())
    assert 0.18 < len(split.test) / len(bundled.user_events()) < 0.22
    with pytest.raises(ValueError):
        temporal_split(bundled, valid_fraction=0.5, test_fraction=0.6)
