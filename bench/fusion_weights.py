"""How much the dense look-up should weigh against the model in /search's fusion, chosen on
validation: serving.engine fuses the model's top k with the dense top `dense_k` by weighted
reciprocal-rank fusion (serving.dense.fuse), one weight for a search with a history and one
for a search without (no user). This measures both regimes on the same validation searches:

    data      the bundled dataset, temporal split (real tag queries): the identifier map and a
              base model from its training part, trained as the demo's full profile trains
              (learner.bootstrap; the prior fitted on training's last 10%)
    cases     the split's validation searches (evaluation.protocols.cases, part "valid"),
              never its test part
    with      each case's own history (the user's earlier events)
    without   the same query asked with no user

and, per regime and dense weight, HR@10 / NDCG@10 of what the engine answers. The weight
chosen per regime is the best NDCG@10, ties to the smaller weight (the model's side).

    .venv/bin/python -m bench.fusion_weights [--state DIR] [--train-minutes M] [--threads N]

Results: bench/results/fusion_weights.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bench.output import write_results
from demo.prequential import rank_metrics
from demo.settings import FULL
from evaluation.protocols import cases
from gensar import data as datasets
from gensar.data import SearchEvent, UserEvent
from gensar.events import HistoryEntry
from gensar.layout import Layout
from gensar.machine import machine
from gensar.settings import Settings
from identifiers.build import BuildConfig
from identifiers.rqvae import RQVAEConfig
from learner.bootstrap import ensure_base_model, ensure_identifiers
from model.train import TrainSettings
from serving.bundle import Loader
from serving.catalogue import Catalogue
from serving.dense import DenseIndex, fuse
from serving.engine import Engine, Query
from serving.settings import ServingSettings

K = 10
NAME = "fusion-bench"
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 100.0)  # 0: the model alone; 100: the dense list first


def as_history(events: tuple[UserEvent, ...]) -> tuple[HistoryEntry, ...]:
    return tuple(HistoryEntry(item_id=e.clicked_items[0], query=e.query, timestamp=int(e.timestamp))
                 if isinstance(e, SearchEvent) else HistoryEntry(item_id=e.item_id, timestamp=int(e.timestamp))
                 for e in events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, default=None, help="Where the world is kept (reused); default: a temp dir.")
    parser.add_argument("--train-minutes", type=float, default=FULL.train_minutes)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.state or Path(tempfile.mkdtemp(prefix="gensar-fusion-"))
    layout = Layout.under(root)
    data_dir = Settings().data_dir
    ds = datasets.load(data_dir)
    split = datasets.temporal_split(ds)
    rqvae = RQVAEConfig(epochs=FULL.rqvae_epochs, warmup_epochs=min(10, FULL.rqvae_epochs // 2))
    idmap = ensure_identifiers(ds, split.train, layout, BuildConfig(rqvae=rqvae), False, print)
    train = TrainSettings(epochs=FULL.train_epochs, max_minutes=args.train_minutes, checkpoint_every=200)
    ensure_base_model(ds, split.train, idmap, layout, NAME, train, FULL.prior_fraction, FULL.prior_cases, print)

    catalogue = Catalogue.of(ds)
    serving = ServingSettings(catalogue=data_dir, base_model=NAME, device="cpu")
    loader = Loader(serving, layout, catalogue)
    dense = DenseIndex(catalogue, layout.embeddings)
    model_only = Engine(loader, catalogue, None, serving.beam_size)
    model_only.slots = {"search": loader.load(None), "rec": loader.load(None)}
    valid = [c for c in cases(ds, split, "valid") if c.task == "search"]
    targets = [c.target for c in valid]
    looked_up = [[i for i, _ in r] for r in dense.lookup([c.query for c in valid], serving.dense_k)]

    regimes = {}
    for regime in ("with history", "without history"):
        queries = [Query("search", K, history=as_history(c.history) if regime == "with history" else (), query=c.query)
                   for c in valid]
        generated = [[i.id for i in a.items] for a in model_only.search(queries)]
        rows = {}
        for w in WEIGHTS:
            fused = [[i for i, _ in fuse(m, d, weights=(1.0, w))] for m, d in zip(generated, looked_up)]
            hr, gain = np.mean([rank_metrics(f, t) for f, t in zip(fused, targets)], axis=0)
            rows[w] = {"hr": float(hr), "ndcg": float(gain)}
        best = max(WEIGHTS, key=lambda w: (round(rows[w]["ndcg"], 6), -w))
        regimes[regime] = {"rows": rows, "chosen": best}
        print(regime, {w: f"{r['hr']:.3f}/{r['ndcg']:.3f}" for w, r in rows.items()}, "chosen", best)

    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = {"date": when, "machine": machine(), "data": str(data_dir), "cases": len(valid),
              "train_minutes": args.train_minutes, "dense_k": serving.dense_k,
              "regimes": {r: {"chosen": v["chosen"], "rows": {str(w): m for w, m in v["rows"].items()}}
                          for r, v in regimes.items()}}
    lines = [f"# Search fusion weights on validation ({when})", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. {data_dir.name}, temporal "
             f"split, its {len(valid):,} validation searches (real tag queries; never test). Base model: "
             f"{args.train_minutes} min as the demo's full profile trains. The model's top {K} fused with the dense "
             f"top {serving.dense_k}; HR@{K} / NDCG@{K} per dense weight (the model's is 1; 0: the model alone).", "",
             "| dense weight | " + " | ".join(regimes) + " |", "|---|" + "---|" * len(regimes)]
    lines += [f"| {w:g} | " + " | ".join(f"{v['rows'][w]['hr']:.3f} / {v['rows'][w]['ndcg']:.3f}" for v in regimes.values())
              + " |" for w in WEIGHTS]
    lines += ["", "Chosen (best NDCG@10, ties to the smaller weight): "
              + "; ".join(f"{r} {v['chosen']:g}" for r, v in regimes.items()) + "."]
    write_results("fusion_weights", result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
