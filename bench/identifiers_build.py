"""Identifier build time for the bundled catalogue, and codes per second for new items.

    .venv/bin/python -m bench.identifiers_build [--rounds 3]

Side by side, each repeated `--rounds` times (median and range reported):
- item text encoding: MiniLM with an empty cache vs the warm content-hash cache;
- the full bootstrap (`build_identifiers`, default config, warm text cache) by stage;
- Qdrant embedded mode: first write of 2,000 items vs an idempotent re-write;
- new items: 500 at once vs one at a time through `add_items` (encode through the
  trained RQ-VAE, place against the existing ids, derive a version; no retraining),
  and the RQ-VAE encoding alone.
Plus, once, the next-item signal of the collaborative embeddings (not a timing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.output import write_results
from gensar import data
from gensar.events import InteractionEvent
from gensar.layout import Layout
from gensar.machine import machine
from gensar.settings import BUNDLED_DATA
from identifiers.assign import add_items, coder
from identifiers.build import BuildConfig, build_identifiers, torch_threads
from identifiers.collaborative import next_item_hit_rate, user_sequences
from identifiers.idmap import IdentifierMap
from identifiers.semantic import SemanticEncoder, item_texts
from identifiers.settings import IdentifierSettings
from identifiers.vectors import ItemVectorStore

NEW_ITEMS = 500


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(seconds: list[float], units: int | None = None) -> dict:
    median = statistics.median(seconds)
    row = {"median_s": round(median, 3), "min_s": round(min(seconds), 3), "max_s": round(max(seconds), 3),
           "runs": len(seconds)}
    if units:
        row["per_s"] = round(units / median, 1)
    return row


def without_rows(idmap: IdentifierMap, items: set[str]) -> IdentifierMap:
    keep = np.array([i not in items for i in idmap.item_ids])
    return IdentifierMap("bench", tuple(i for i in idmap.item_ids if i not in items), idmap.search_codes[keep],
                         idmap.rec_codes[keep], idmap.n_shared, idmap.codebook_size,
                         coded_collaborative=idmap.coded_collaborative[keep], model_config=idmap.model_config,
                         model_state=idmap.model_state)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = args.rounds

    ds = data.load(BUNDLED_DATA)
    split = data.leave_one_out(ds)
    texts = item_texts(ds, split.train)
    all_texts = [texts[i] for i in ds.items]
    settings = IdentifierSettings()
    results: dict = {}

    # 1. text encoding: empty cache vs warm cache
    cold_n = 1000
    cold, warm = [], []
    with torch_threads(settings.torch_threads):
        for r in range(rounds):
            with tempfile.TemporaryDirectory() as empty:
                encoder = SemanticEncoder(Path(empty), progress=False)
                encoder.encode(all_texts[:1])  # load the model outside the timing
                cold.append(timed(lambda: encoder.encode(all_texts[1 + r * cold_n: 1 + (r + 1) * cold_n])))
                encoder.close()
        encoder = SemanticEncoder(Layout.of().embeddings, progress=False)
        encoder.encode(all_texts)  # fill the real cache once
        warm = [timed(lambda: encoder.encode(all_texts)) for _ in range(rounds)]
        encoder.close()
    results["text_encoding"] = {"MiniLM, empty cache": summary(cold, cold_n),
                                "content-hash cache hit": summary(warm, len(all_texts))}

    # 2. the full bootstrap, by stage
    stages: dict[str, list[float]] = {}
    totals, build = [], None
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as state:
            started = time.perf_counter()
            build = build_identifiers(ds, split.train, BuildConfig(), Layout.under(Path(state)), progress=False)
            totals.append(time.perf_counter() - started)
        for stage, seconds in build.metrics["seconds"].items():
            stages.setdefault(stage, []).append(seconds)
    results["bootstrap"] = {"total (incl. save)": summary(totals, len(ds.items)),
                            **{stage: summary(s) for stage, s in stages.items()}}

    # 3. Qdrant embedded: first write vs idempotent re-write
    n_q = 2000
    ids = list(build.item_ids[:n_q])
    titles = [ds.items[i].title for i in ids]
    first, again = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder, ItemVectorStore(Path(folder)) as store:
            args_q = (ids, titles, build.semantic[:n_q], build.collaborative[:n_q], build.warm[:n_q], build.idmap)
            first.append(timed(lambda: store.upsert_items(*args_q)))
            again.append(timed(lambda: store.upsert_items(*args_q)))
    results["qdrant_embedded"] = {"first write": summary(first, n_q), "idempotent re-write": summary(again, n_q)}

    # 4. new items without retraining
    rng = np.random.default_rng(0)
    late = [build.item_ids[i] for i in sorted(rng.choice(len(build.item_ids), NEW_ITEMS, replace=False))]
    rows = [build.idmap.row(i) for i in late]
    base = without_rows(build.idmap, set(late))
    semantic, collaborative = build.semantic[rows], build.collaborative[rows]
    model = coder(base)
    single_n = 50
    with torch_threads(settings.torch_threads):
        batched = [timed(lambda: add_items(base, "b", late, semantic, collaborative, model)) for _ in range(rounds)]
        single = [timed(lambda: [add_items(base, "s", [late[j]], semantic[j:j + 1], collaborative[j:j + 1], model)
                                 for j in range(single_n)]) for _ in range(rounds)]
        encode = [timed(lambda: model.assign(semantic, collaborative, balanced=False)) for _ in range(rounds)]
    child = add_items(base, "b", late, semantic, collaborative, model)
    same_prefix = float(np.mean([child.search_id(i)[:2] == build.idmap.search_id(i)[:2] for i in late]))
    results["new_items"] = {f"add_items, {NEW_ITEMS} at once": summary(batched, NEW_ITEMS),
                            f"add_items, one at a time ({single_n})": summary(single, single_n),
                            f"RQ-VAE encoding only, {NEW_ITEMS} at once": summary(encode, NEW_ITEMS)}
    results["new_items_shared_prefix_as_bootstrap"] = same_prefix

    # 5. once: do the collaborative embeddings carry signal?
    targets = [(e.user_id, e.item_id) for e in split.test if isinstance(e, InteractionEvent)]
    results["collaborative_signal"] = next_item_hit_rate(build.item2vec, user_sequences(split.train), targets, k=10)

    out = {"benchmark": "identifiers_build", "machine": machine(), "items": len(ds.items),
           "train_events": len(split.train), "rounds": rounds, "torch_threads": settings.torch_threads,
           "config": BuildConfig().model_dump(mode="json"), "results": results}
    m = out["machine"]
    lines = [f"# Identifier build ({m['date'][:10]}, {m['cpu']}, {m['cores']} cores, torch threads "
             f"{settings.torch_threads})", "",
             f"Bundled MovieLens: {len(ds.items):,} items, {len(split.train):,} leave-one-out training events; "
             f"default BuildConfig (2 shared + 2 specific levels, 256 codes). {rounds} runs each; the machine "
             "was shared with other jobs, so ranges are wide.", ""]
    for section, rows_ in results.items():
        if not isinstance(rows_, dict) or section == "collaborative_signal":
            continue
        lines += [f"## {section.replace('_', ' ')}", "", "| way | median s | min–max s | per second (median) |",
                  "|---|---|---|---|"]
        for name, row in rows_.items():
            rate = f"{row['per_s']:,.1f}" if "per_s" in row else ""
            lines.append(f"| {name} | {row['median_s']:.2f} | {row['min_s']:.2f}–{row['max_s']:.2f} | {rate} |")
        lines.append("")
    enc = results["text_encoding"]
    new = results["new_items"]
    lines += [f"Cache hit vs MiniLM (texts/s): **{enc['content-hash cache hit']['per_s'] / enc['MiniLM, empty cache']['per_s']:,.0f}x**.",
              f"New items, batched vs one at a time (codes/s): **{new[f'add_items, {NEW_ITEMS} at once']['per_s'] / new[f'add_items, one at a time ({single_n})']['per_s']:.1f}x**; "
              f"{same_prefix:.1%} of the {NEW_ITEMS} re-added items got the shared prefix they had in the bootstrap.", ""]
    s = results["collaborative_signal"]
    lo, hi = s["hr@10_neighbours_minus_popularity_ci95"]
    lo2, hi2 = s["hr@10_sgns_minus_popularity_ci95"]
    lines += ["## collaborative signal (not a timing)", "",
              f"Next-item HR@10 over the full catalogue, leave-one-out, n = {s['n']} users, ties broken at random: "
              f"item2vec nearest neighbours of the last item {s['hr@10_neighbours']:.4f}, item2vec score "
              f"{s['hr@10_sgns']:.4f}, training popularity {s['hr@10_popularity']:.4f}. Paired 95% interval of the "
              f"difference to popularity: neighbours [{lo:+.4f}, {hi:+.4f}], score [{lo2:+.4f}, {hi2:+.4f}]."]
    write_results("identifiers_build", out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
