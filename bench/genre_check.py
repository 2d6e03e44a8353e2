"""A person's check of search: each genre word of the demo's catalogue asked as a query with
no user. How many of the top 10 carry that genre, for three ways side by side:

    model         the generative model alone (constrained beam, serving.engine without dense)
    /search       what serving answers (the model fused with the dense look-up, RRF)
    dense MiniLM  the dense look-up alone over title + genres (serving.dense)

World: the demo's bootstrap for a profile (demo.bootstrap; kept in `--state` and reused):
its catalogue, identifier map and base model, trained as the demo trains it.

    .venv/bin/python -m bench.genre_check [--profile quick|full] [--state DIR]

Results: bench/results/genre_check_<profile>.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bench.output import write_results
from demo.bootstrap import BASE_NAME, ensure_base_model, ensure_identifiers, prepare_world
from demo.settings import FULL, QUICK
from gensar.layout import Layout
from gensar.machine import machine
from gensar.settings import Settings
from serving.bundle import Loader
from serving.catalogue import Catalogue
from serving.dense import DenseIndex
from serving.engine import Engine, Query
from serving.settings import ServingSettings

K = 10
WAYS = ("model", "/search", "dense MiniLM")


def share(catalogue: Catalogue, genre: str, item_ids: list[str]) -> float:
    return float(np.mean([genre in catalogue.genres[i] for i in item_ids[:K]])) if item_ids else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--state", type=Path, default=None, help="Where the world is kept (reused); default: a temp dir.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = {"quick": QUICK, "full": FULL}[args.profile].model_copy(update={"qdrant": False})
    root = args.state or Path(tempfile.mkdtemp(prefix="gensar-genre-check-"))
    layout = Layout.under(root)
    world = prepare_world(Settings().data_dir, root, settings)
    idmap = ensure_identifiers(world, layout, settings, print)
    ensure_base_model(world, idmap, layout, settings, print)

    catalogue = Catalogue.of(world.ds)
    serving = ServingSettings(catalogue=world.data_dir, base_model=BASE_NAME, device="cpu")
    loader = Loader(serving, layout, catalogue)
    dense = DenseIndex(catalogue, layout.embeddings)
    engines = {"model": Engine(loader, catalogue, None, serving.beam_size),
               "/search": Engine(loader, catalogue, dense, serving.beam_size, serving.dense_k,
                                 (serving.dense_weight, serving.dense_weight_without_history))}
    base = loader.load(None)
    for engine in engines.values():
        engine.slots = {"search": base, "rec": base}

    genres = [g for g in catalogue.all_genres() if g != "(no genres listed)"]
    queries = [Query("search", K, query=g) for g in genres]
    answers = {way: [[i.id for i in a.items] for a in engine.search(queries)] for way, engine in engines.items()}
    answers["dense MiniLM"] = [[i for i, _ in r] for r in dense.lookup(genres, K)]
    per_genre = {g: {way: share(catalogue, g, answers[way][n]) for way in WAYS} for n, g in enumerate(genres)}
    mean = {way: float(np.mean([row[way] for row in per_genre.values()])) for way in WAYS}
    comedy = genres.index("comedy") if "comedy" in genres else 0
    examples = {way: [catalogue.titles[i] for i in answers[way][comedy][:K]] for way in WAYS}

    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = {"date": when, "machine": machine(), "profile": args.profile, "items": len(catalogue.titles),
              "train_minutes": settings.train_minutes, "train_epochs": settings.train_epochs,
              "mean_share": mean, "per_genre": per_genre, "examples": {genres[comedy]: examples}}
    lines = [f"# Genre check ({when})", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. The demo's {args.profile} "
             f"catalogue ({len(catalogue.titles):,} items) and base model (at most {settings.train_minutes} min, "
             f"{settings.train_epochs} epochs). Each genre word asked as a query with no user; the share of the top "
             f"{K} that carry the genre.", "",
             "| genre | " + " | ".join(WAYS) + " |", "|---|" + "---|" * len(WAYS)]
    lines += [f"| {g} | " + " | ".join(f"{row[w]:.1f}" for w in WAYS) + " |" for g, row in per_genre.items()]
    lines += [f"| **mean** | " + " | ".join(f"**{mean[w]:.3f}**" for w in WAYS) + " |", "",
              f"'{genres[comedy]}', top {K}:", ""]
    lines += [f"- {way}: " + "; ".join(titles) for way, titles in examples.items()]
    write_results(f"genre_check_{args.profile}", result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
