"""Synthetic datasets in the MovieLens CSV layout, for testing on data of another shape.

`write_synthetic(root, items, users, events)` writes movies.csv, tags.csv (and ratings.csv
with `ratings=True`) plus a README.txt, readable by `gensar.data.load`. The data have
structure, not uniform noise:

- items belong to latent topics (20-50; fewer only with fewer than 20 items); a topic has
  a few MovieLens genres, a few title words, a small tag vocabulary and an era. Titles are
  made of words ("Silent Harbor (1994)"); item popularity is Zipf-like;
- users have 1-3 preferred topics and a heavy-tailed activity (lognormal: a few users with
  very many events, many with few). A user's items follow a sticky walk over topics
  (mostly the current topic, sometimes another preferred one, rarely any topic), and
  about a third of the steps go to a "related" item of the previous one, so the next item
  is predictable from collaborative signal;
- a tagging act is a burst of 1-6 different tags on one item (mean about 2), often in the
  same second, as in real MovieLens; tags come from the item's own tags, its topic's
  vocabulary, its genres and title words, or are generic ("classic", "must see");
- timestamps increase per user, in sessions, across four years (2014-2017); users start at
  different times, so a global time cut has users on both sides.

Counts are exact: `items` items; `users` users, each with at least one event; `events`
rows of tags.csv (tags only) or of ratings.csv (with `ratings=True`: one rating per
(user, item), so no user has more ratings than there are items; about one rated item in
twelve also gets a tag burst). Tags only, a very heavy user may tag an item again later
only once they have tagged every item.
Each row is a distinct loaded event (no two tags of a user share item, second and text),
so `load(root)` has exactly `events` searches (tags only) or interactions (ratings).
Deterministic for a seed (pure-Python `random.Random`, no set-order dependence).
"""

from __future__ import annotations

import bisect
import csv
import random
import zlib
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
# Roughly MovieLens' genre frequencies: Drama and Comedy common, Film-Noir and IMAX rare.
GENRE_WEIGHTS = (18, 12, 6, 6, 39, 13, 4, 44, 8, 1, 10, 2, 3, 6, 16, 10, 19, 4, 2)

TOPIC_WORDS = """
Harbor Shadow River Empire Midnight Galaxy Desert Ghost Winter Dragon Thunder Ocean Forest Crown
Steel Mirror Island Storm Wolf Planet Night Summer Castle Blood Garden Machine Star Jungle Frontier
Mountain Hunter Tiger Soldier Witch Angel Robot Pirate Samurai Detective Outlaw Prince Queen Killer
Demon Cowboy Spy Dancer Comet Orbit Nebula Canyon Prairie Glacier Volcano Reef Lagoon Harvest Lantern
Circus Carnival Ballroom Casino Kingdom Citadel Fortress Temple Shrine Abbey Asylum Manor Cabin Bunker
Subway Highway Railroad Airport Harbour Lighthouse Station Colony Outpost Reactor Laboratory Android
Cyborg Mutant Zombie Vampire Phantom Specter Wraith Goblin Giant Titan Knight Baron Duke Sheriff Bandit
Ranger Marshal Gunslinger Sailor Captain Admiral Pilot Astronaut Diver Climber Boxer Fighter Champion
Gambler Thief Heist Cartel Syndicate Mafia Gang Rebel Exile Nomad Wanderer Pilgrim Prophet Oracle
Wizard Sorcerer Alchemist Inventor Doctor Nurse Teacher Student Orphan Widow Bride Lover Stranger
Neighbor Twin Clone Puppet Doll Mask Crystal Ember Frost Ash Dust Smoke Rain Snow Wind Fire Iron Gold
Silver Copper Jade Ruby Velvet Silk Paper Glass Stone Bone Neon Chrome
""".split()

GENERIC_WORDS = """
Silent Last Lost Secret Hidden Broken Dark Golden Red Black White Blue Little Big Long Final Eternal
Wild Sweet Bitter Cold Hot Quiet Loud Forgotten Burning Falling Rising Endless Distant Lonely Savage
Gentle Crimson Hollow Electric Perfect Dangerous Beautiful Strange Sudden Deadly Brave Young Old New
Wicked Lucky Crazy Magic Sacred Stolen Fallen Frozen Sleeping Dancing Running Flying Singing Laughing
Return Revenge Rise Fall Dawn Dusk Edge Heart Soul Dream Promise Legend Journey Escape Tale Story
Game Road Line City House Room Door Window Bridge Street Town Country World Land Sky Sea Moon Sun
Day Week Year Hour Minute Season Time Life Death Love War Peace Family Friend Enemy Stranger Affair
""".split()

THEMES = """
time travel|heist|zombies|space|dystopia|serial killer|coming of age|road trip|aliens|superhero|
high school|revenge|conspiracy|artificial intelligence|post-apocalyptic|vampires|haunted house|
martial arts|world war ii|cold war|espionage|courtroom|prison|boxing|baseball|football|music|jazz|
dance|cooking|wine|fashion|journalism|politics|religion|psychology|mental illness|addiction|
family drama|friendship|romance|wedding|divorce|christmas|new york|paris|london|tokyo|small town|
suburbia|desert island|submarine|pirates|knights|dragons|magic|witches|fairy tale|talking animals|
dinosaurs|monsters|robots|cyberpunk|hackers|virtual reality|parallel universe|dreams|memory loss|
amnesia|identity|twins|cloning|genetics|pandemic|disaster|earthquake|shipwreck|survival|mountaineering|
sailing|surfing|cars|racing|trains|aviation|astronauts|mars|the moon|ocean|jungle|wilderness|cowboys|
gunfights|bank robbery|mafia|gangsters|drugs|police|detective|film noir|femme fatale|murder mystery|
whodunit|kidnapping|hostage|assassin|mercenaries|military|vietnam|civil war|ancient rome|ancient egypt|
medieval|renaissance|victorian|1920s|1950s|1960s|1980s|biography|true story|based on a book|
shakespeare|mythology|gods|afterlife|ghosts|demons|exorcism|possession|cult|witchcraft|slasher|
gore|body horror|found footage|mockumentary|satire|parody|black comedy|slapstick|romantic comedy|
stand-up|musical numbers|animation|stop motion|anime|puppets|video games|chess|gambling|poker|
circus|magicians|art|painting|photography|architecture|science|mathematics|chemistry|inventors|
philosophy|existentialism|nihilism|surreal|dreamlike|nonlinear|twist ending|unreliable narrator
""".replace("\n", "").split("|")

GENERIC_TAGS = ("classic", "boring", "must see", "funny", "atmospheric", "thought-provoking", "overrated",
                "underrated", "quirky", "dark", "beautiful", "predictable", "slow", "cult film",
                "great soundtrack", "visually appealing", "emotional", "intense", "cheesy", "masterpiece",
                "good acting", "bad acting", "seen it", "In Netflix queue", "favorite", "rewatch",
                "stylized", "clever", "violent", "feel-good")

T0 = 1_388_534_400  # 2014-01-01T00:00:00Z
SPAN = 4 * 365 * 86_400  # four years
BURST_SIZES = (1, 2, 3, 4, 5, 6)
BURST_WEIGHTS = (45, 25, 15, 8, 4, 3)  # mean about 2.1 tags per tagging act
BURST_CUM = list(accumulate(BURST_WEIGHTS))
RATINGS_TAG_SHARE = 1 / 12  # with ratings: share of rated items that are also tagged


@dataclass
class Topic:
    index: int
    genres: list[str]
    words: list[str]  # title words
    themes: list[str]  # tag vocabulary
    era: tuple[float, float]  # mean year, spread
    weight: float  # how popular the topic is among users


@dataclass
class SynthItem:
    movie_id: int
    title: str
    genres: list[str]  # empty: "(no genres listed)"
    topic: int
    tags: list[str]  # the item's own tag vocabulary
    quality: float  # rating offset


@dataclass
class SyntheticData:
    params: dict
    topics: list[Topic]
    items: list[SynthItem]
    tags: list[tuple[int, int, str, int]] = field(default_factory=list)  # userId, movieId, tag, timestamp
    ratings: list[tuple[int, int, float, int]] = field(default_factory=list)  # userId, movieId, rating, ts
    user_topics: dict[int, list[int]] = field(default_factory=dict)  # userId -> preferred topics

    def topic_of(self) -> dict[str, int]:
        """movieId (as the loader spells it) -> latent topic: the ground truth for tests."""
        return {str(item.movie_id): item.topic for item in self.items}


def _cumulative(weights: list[float]) -> list[float]:
    return list(accumulate(weights))


def _pick(rng: random.Random, population: list, cum: list[float]):
    return population[bisect.bisect_left(cum, rng.random() * cum[-1], 0, len(cum) - 1)]


def _title_case_words(rng: random.Random, topic: Topic) -> str:
    word, generic = rng.choice(topic.words), rng.choice(GENERIC_WORDS)
    pattern = rng.random()
    if pattern < 0.35:
        return f"{generic} {word}"
    if pattern < 0.55:
        return f"The {generic} {word}" if rng.random() < 0.6 else f"{generic} {word}, The"
    if pattern < 0.75:
        return f"{word} of the {generic}"
    if pattern < 0.85:
        return word if rng.random() < 0.5 else f"{word}s"
    if pattern < 0.95:
        return f"{word} {rng.choice(('II', '2', '3', 'Returns', 'Reloaded', 'Rising'))}"
    return f"{generic} {rng.choice(GENERIC_WORDS)} {word}"


def generate(items: int, users: int, events: int, seed: int = 0, ratings: bool = False) -> SyntheticData:
    """The dataset in memory (see the module docstring); `write_synthetic` writes it."""
    if items < 1 or users < 1:
        raise ValueError("need at least one item and one user")
    if events < users:
        raise ValueError(f"need events >= users (every user has an event): {events} < {users}")
    rng = random.Random(seed)
    params = {"items": items, "users": users, "events": events, "seed": seed, "with_ratings": ratings}

    # --- topics ---
    n_topics = min(items, max(20, min(50, items // 200)))
    words = TOPIC_WORDS[:]
    rng.shuffle(words)
    themes = THEMES[:]
    rng.shuffle(themes)
    genre_cum = _cumulative(list(GENRE_WEIGHTS))
    topics = []
    for t in range(n_topics):
        genres = [_pick(rng, list(GENRES), genre_cum)]
        while len(genres) < rng.choice((2, 2, 3)):
            g = _pick(rng, list(GENRES), genre_cum)
            if g not in genres:
                genres.append(g)
        title_words = [words[(3 * t + k) % len(words)] for k in range(3)]
        signature = [themes[(2 * t + k) % len(themes)] for k in range(2)]  # mostly this topic's own
        shared = [rng.choice(themes) for _ in range(rng.randint(3, 5))]
        vocab = list(dict.fromkeys(signature + shared))
        era = (rng.uniform(1950, 2015), rng.uniform(4, 12))
        topics.append(Topic(t, genres, title_words, vocab, era, 1.0 / (t + 2) ** 0.8))

    # --- items: topic sizes Zipf-like, every topic at least one item ---
    topic_cum = _cumulative([1.0 / (t + 3) ** 0.6 for t in range(n_topics)])
    order = list(range(n_topics))
    rng.shuffle(order)  # the biggest topic is not the most liked one
    assignment = list(range(n_topics)) + [order[_pick(rng, list(range(n_topics)), topic_cum)]
                                          for _ in range(items - n_topics)]
    rng.shuffle(assignment)
    catalogue: list[SynthItem] = []
    titles: set[str] = set()
    movie_id = 0
    for t in assignment:
        topic = topics[t]
        movie_id += 1 if rng.random() < 0.8 else rng.randint(2, 40)  # sparse ids, like MovieLens
        for attempt in range(20):
            year = int(round(min(2018, max(1915, rng.gauss(*topic.era)))))
            title = f"{_title_case_words(rng, topic)} ({year})"
            if title not in titles:
                break
        else:
            title = f"{title[:-7]} {movie_id} ({year})"
        titles.add(title)
        if rng.random() < 0.004:
            genres = []
        else:
            genres = [g for g in topic.genres if rng.random() < 0.7] or [topic.genres[0]]
            if rng.random() < 0.12:
                extra = _pick(rng, list(GENRES), genre_cum)
                if extra not in genres:
                    genres.append(extra)
            genres.sort(key=GENRES.index)
        own = rng.sample(topic.themes, min(len(topic.themes), rng.randint(2, 3)))
        title_words = [w.lower() for w in title[:-7].replace(",", "").split()
                       if w not in ("The", "of", "the") and len(w) > 2]
        if title_words and rng.random() < 0.5:
            own.append(rng.choice(title_words))
        if genres and rng.random() < 0.5:
            own.append(rng.choice(genres).lower())
        catalogue.append(SynthItem(movie_id, title, genres, t, list(dict.fromkeys(own)), rng.gauss(0, 0.6)))

    # Zipf-like popularity over a random ranking; per-topic samplers.
    ranks = list(range(1, items + 1))
    rng.shuffle(ranks)
    popularity = [1.0 / r ** 1.0 for r in ranks]
    members: list[list[int]] = [[] for _ in range(n_topics)]
    for i, item in enumerate(catalogue):
        members[item.topic].append(i)
    member_cum = [_cumulative([popularity[i] for i in m]) for m in members]
    global_cum = _cumulative(popularity)
    all_items = list(range(items))
    related: list[list[int]] = []
    for i, item in enumerate(catalogue):
        m = members[item.topic]
        near = [_pick(rng, m, member_cum[item.topic]) for _ in range(5)]
        related.append([j for j in dict.fromkeys(near) if j != i] or [i])

    # --- users: preferred topics, heavy-tailed activity, exact event counts ---
    liked_cum = _cumulative([topics[t].weight for t in range(n_topics)])
    topic_ids = list(range(n_topics))
    prefs: list[list[int]] = []
    pref_cums: list[list[float]] = []
    for _ in range(users):
        want = min(n_topics, rng.choice((1, 1, 2, 2, 3)))
        mine: list[int] = []
        while len(mine) < want:
            t = _pick(rng, topic_ids, liked_cum)
            if t not in mine:
                mine.append(t)
        prefs.append(mine)
        pref_cums.append(_cumulative([rng.uniform(0.3, 1.0) for _ in mine]))
    activity_cum = _cumulative([rng.lognormvariate(0.0, 1.4) for _ in range(users)])
    user_ids = list(range(users))
    counts = [1] * users
    cap = items if ratings else events  # a user rates an item once
    if events > users * cap:
        raise ValueError(f"{events} ratings do not fit {users} users x {items} items (one rating per pair)")
    for _ in range(events - users):
        u = _pick(rng, user_ids, activity_cum)
        for _ in range(50):
            if counts[u] < cap:
                break
            u = _pick(rng, user_ids, activity_cum)
        else:
            u = next(v for v in user_ids if counts[v] < cap)
        counts[u] += 1

    data = SyntheticData(params, topics, catalogue)
    generic_tags = list(GENERIC_TAGS)
    for u in range(users):
        user_id = u + 1
        data.user_topics[user_id] = prefs[u]
        bias = rng.gauss(0, 0.5)
        seen: set[int] = set()  # membership only: never iterated
        current = _pick(rng, prefs[u], pref_cums[u])
        previous: int | None = None
        acts: list[tuple[int, int]] = []  # (item index, tags in its burst)
        remaining = counts[u]  # tag rows (tags only) or rating rows (ratings)
        while remaining > 0:
            item = None
            for attempt in range(24):
                if attempt >= 16:
                    candidate = _pick(rng, all_items, global_cum)
                elif previous is not None and rng.random() < 0.35:
                    candidate = rng.choice(related[previous])
                else:
                    if rng.random() < 0.2:  # move on: another liked topic, rarely anything
                        current = (_pick(rng, prefs[u], pref_cums[u]) if rng.random() < 0.85
                                   else _pick(rng, topic_ids, liked_cum))
                    candidate = _pick(rng, members[current], member_cum[current])
                if candidate not in seen:
                    item = candidate
                    break
            if item is None:  # a very heavy user: scan for an unseen item, else repeat one
                start = rng.randrange(items)
                item = next(((start + k) % items for k in range(items) if (start + k) % items not in seen),
                            rng.randrange(items))
            seen.add(item)
            previous = item
            if ratings:
                burst = _pick(rng, BURST_SIZES, BURST_CUM) if rng.random() < RATINGS_TAG_SHARE else 0
                acts.append((item, burst))
                remaining -= 1
            else:
                burst = min(remaining, _pick(rng, BURST_SIZES, BURST_CUM))
                acts.append((item, burst))
                remaining -= burst
        _place_in_time(rng, data, user_id, acts, bias, ratings, generic_tags, prefs[u])
    if ratings:
        assert len(data.ratings) == events
    else:
        assert len(data.tags) == events
    return data



def _place_in_time(rng: random.Random, data: SyntheticData, user_id: int, acts: list[tuple[int, int]],
                   bias: float, ratings: bool, generic_tags: list[str], liked: list[int]) -> None:
    """Timestamps in sessions; the tags of each burst; the ratings."""
    start = T0 + int(rng.random() * SPAN * 0.92)
    duration = (T0 + SPAN - start) * rng.random() ** 2 if len(acts) > 1 else 0
    sizes = []
    left = len(acts)
    while left:
        size = min(left, 1 + int(rng.expovariate(1 / 4)))
        sizes.append(size)
        left -= size
    session_starts = sorted([start] + [start + int(rng.random() * duration) for _ in sizes[1:]])
    t = start - 1
    a = 0
    for session_start, size in zip(session_starts, sizes):
        t = max(t + 1, session_start)
        for k in range(size):
            index, burst = acts[a]
            a += 1
            if k:
                t += rng.randint(20, 900)
            item = data.items[index]
            if ratings:
                score = 3.5 + bias + item.quality + (0.4 if item.topic in liked else -0.3) + rng.gauss(0, 0.7)
                data.ratings.append((user_id, item.movie_id, min(5.0, max(0.5, round(score * 2) / 2)), t))
            tags = _burst_tags(rng, data.topics[item.topic], item, burst, generic_tags)
            if not ratings:
                assert len(tags) == burst
            for n, tag in enumerate(tags):
                if n and rng.random() >= 0.6:  # 60% of re-tags in the same second
                    t += rng.randint(1, 30)
                data.tags.append((user_id, item.movie_id, tag, t))
            t += 1  # the next act is in a later second


def _burst_tags(rng: random.Random, topic: Topic, item: SynthItem, n: int, generic_tags: list[str]) -> list[str]:
    """n different tags for one item (different text, different loader ids)."""
    out: list[str] = []
    keys: list[str] = []
    digests: list[int] = []
    pool_size = len(item.tags) + len(topic.themes) + len(generic_tags)
    tries = 0
    while len(out) < n and tries < 20 * n + 20:
        tries += 1
        r = rng.random()
        if r < 0.5:
            tag = rng.choice(item.tags)
        elif r < 0.7:
            tag = rng.choice(topic.themes)
        elif r < 0.77:
            tag = rng.choice(topic.genres).lower()
        elif r < 0.8:
            tag = f"{rng.choice(('great', 'dark', 'funny', 'slow', 'weird'))} {rng.choice(topic.themes)}"
        else:
            tag = rng.choice(generic_tags)
        if rng.random() < 0.12:
            tag = tag[0].upper() + tag[1:]
        digest = zlib.crc32(tag.encode())
        if tag.lower() in keys or digest in digests:
            continue
        out.append(tag)
        keys.append(tag.lower())
        digests.append(digest)
    if len(out) < n:  # cannot happen with the vocabularies above (pool_size > 6)
        raise AssertionError(f"could not draw {n} distinct tags from a pool of {pool_size}")
    return out


README = """\
SYNTHETIC DATA - not MovieLens, not real users.

Generated by gensar.synthetic.write_synthetic (GenSAR Stream) in the MovieLens
ml-latest-small CSV layout, to test the system on data of another shape:

    gensar data synth --out DIR --items {items} --users {users} --events {events}{ratings_flag} --seed {seed}

Files: movies.csv (movieId,title,genres), tags.csv (userId,movieId,tag,timestamp){ratings_file}.

How it was made: {topics} latent topics, each with a few MovieLens genres, title words, a
tag vocabulary and an era; items (Zipf-like popularity) belong to one topic each, titles
are made from a topic word and generic words plus a year. Each user likes 1-3 topics and
has a heavy-tailed (lognormal) activity; a user's items follow a sticky walk over topics
with jumps to related items of the previous one, so the next item is predictable. A
tagging act is a burst of 1-6 different tags on one item (mean ~2.1), 60% of re-tags in
the same second. Timestamps increase per user, in sessions, across 2014-2017; users start
at different times.{ratings_note}

Counts: {items} items, {users} users, {tags} tag rows, {rating_rows} rating rows,
{retagged_pairs} (user, item) pairs tagged more than once. Deterministic for the seed.
"""

_FILES = ("movies.csv", "ratings.csv", "tags.csv", "README.txt")


def write_synthetic(root: Path, items: int, users: int, events: int, seed: int = 0, ratings: bool = False) -> dict:
    """Write a synthetic MovieLens-CSV-layout dataset into `root` and return its stats.

    `events` is the number of tags.csv rows (tags only) or ratings.csv rows (ratings=True),
    exactly. `root` must be missing, empty, or an earlier synthetic directory (its files are
    replaced; a stale ratings.csv is removed when ratings=False)."""
    root = Path(root)
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"{root}: exists and is not a directory")
        readme = root / "README.txt"
        ours = readme.exists() and readme.read_text(errors="replace").startswith("SYNTHETIC DATA")
        if any(root.iterdir()) and not ours:
            raise FileExistsError(f"{root}: not empty and not a synthetic dataset; choose another --out")
    data = generate(items, users, events, seed=seed, ratings=ratings)
    root.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
        (root / name).unlink(missing_ok=True)
    with open(root / "movies.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("movieId", "title", "genres"))
        for item in data.items:
            w.writerow((item.movie_id, item.title, "|".join(item.genres) or "(no genres listed)"))
    with open(root / "tags.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("userId", "movieId", "tag", "timestamp"))
        w.writerows(data.tags)
    if ratings:
        with open(root / "ratings.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(("userId", "movieId", "rating", "timestamp"))
            w.writerows((u, m, f"{r:.1f}", t) for u, m, r, t in data.ratings)
    stats = synthetic_stats(data)
    stats["root"] = str(root)
    (root / "README.txt").write_text(README.format(
        ratings_flag=" --ratings" if ratings else "",
        ratings_file=", ratings.csv (userId,movieId,rating,timestamp)" if ratings else "",
        ratings_note=(" With ratings: one rating (0.5-5.0) per (user, item), from the user's bias,"
                      "\nthe item's quality and whether the user likes its topic; about 1 in 12 rated"
                      "\nitems also gets a tag burst.") if ratings else
                     "\nNo ratings.csv: the loader makes each (user, item)'s first tag the interaction.",
        rating_rows=stats["ratings"], **{k: stats[k] for k in ("items", "users", "events", "seed", "topics",
                                                               "tags", "retagged_pairs")}), encoding="utf-8")
    return stats


def synthetic_stats(data: SyntheticData) -> dict:
    per_pair: dict[tuple[int, int], int] = {}
    for user, movie, _, _ in data.tags:
        per_pair[(user, movie)] = per_pair.get((user, movie), 0) + 1
    same_second = sum(a[0] == b[0] and a[1] == b[1] and a[3] == b[3] for a, b in zip(data.tags, data.tags[1:]))
    rows = data.ratings if data.params["with_ratings"] else data.tags
    per_user: dict[int, int] = {}
    for row in rows:
        per_user[row[0]] = per_user.get(row[0], 0) + 1
    activity = sorted(per_user.values())
    stamps = [row[3] for row in data.tags] + [row[3] for row in data.ratings]
    return {
        **data.params,
        "topics": len(data.topics),
        "tags": len(data.tags),
        "ratings": len(data.ratings),
        "tagged_pairs": len(per_pair),
        "retagged_pairs": sum(n > 1 for n in per_pair.values()),
        "same_second_retags": same_second,
        "items_with_events": len({row[1] for row in rows}),
        "events_per_user": {"min": activity[0], "median": activity[len(activity) // 2], "max": activity[-1]},
        "first_timestamp": min(stamps),
        "last_timestamp": max(stamps),
    }
