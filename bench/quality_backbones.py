"""Which offline backbone to keep: the t5-small-shaped model trained from scratch against
the pretrained MiniLM encoder with a small decoder, each trained for the same wall-clock
time on the bundled leave-one-out training split and scored on the VALIDATION cases
(paper protocol), never on test.

    .venv/bin/python -m bench.quality_backbones [--minutes 5] [--idmap DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.decoding_latency import random_map
from bench.output import write_results
from evaluation.baselines import BM25Search
from evaluation.generative import GenerativeSystem
from evaluation.protocols import cases, paper_candidates
from evaluation.report import markdown_table, result_rows
from gensar.data import leave_one_out, load
from gensar.machine import machine
from gensar.settings import BUNDLED_DATA, Settings
from identifiers.idmap import IdentifierMap
from identifiers.semantic import item_texts
from model.modeling import ModelSettings
from model.recipe import train_gensar
from model.tasks import TaskMix
from model.train import TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--idmap", type=Path, help="a built identifier map (default: build one, or random with --random-ids)")
    parser.add_argument("--random-ids", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = load(BUNDLED_DATA)
    split = leave_one_out(ds)
    if args.idmap:
        idmap = IdentifierMap.load(args.idmap)
    elif args.random_ids:
        idmap = random_map(tuple(ds.items))
    else:
        from evaluation.quality import build_idmap

        idmap = build_idmap(ds, split.train, "joint", Settings().state_dir / "bench-backbones", 0)
    index = {item: i for i, item in enumerate(ds.items)}
    texts = item_texts(ds, split.train)
    valid = cases(ds, split, part="valid")
    candidates = paper_candidates(ds, index, valid, BM25Search([texts[i] for i in ds.items]), seed=0)
    rows, training = [], {}
    for backbone in ("t5", "minilm-encoder"):
        settings = ModelSettings(backbone=backbone)
        gm, renderer, report = train_gensar(ds, split.train, idmap, settings, TaskMix(),
                                            TrainSettings(epochs=50, max_minutes=args.minutes), progress=False)
        training[backbone] = gm.info
        print(backbone, report.to_json(), flush=True)
        for task in ("search", "rec"):
            mask = np.array([c.task == task for c in valid])
            chosen = [c for c, m in zip(valid, mask) if m]
            system = GenerativeSystem(backbone, task, gm, renderer, index)
            scores = system.score(chosen, candidates.rows[mask])
            rows += result_rows(backbone, task, chosen, candidates.rows[mask], scores, index, "paper")
    result = {"machine": machine(), "minutes_each": args.minutes, "idmap": str(args.idmap or ("random" if args.random_ids else "built")),
              "training": training, "results": rows}
    m = result["machine"]
    text = (f"# Backbones on validation cases ({m['date']})\n\nMachine: {m['cpu']}, {m['cores']} cores; "
            f"{args.minutes} min of training each, identifiers: {result['idmap']}; samples seen: "
            + ", ".join(f"{b}: {t['train']['samples']:,} ({t['parameters']:,} parameters)" for b, t in training.items())
            + "\n\n" + markdown_table(rows) + "\n")
    write_results("quality_backbones", result, text)
    print(text)


if __name__ == "__main__":
    main()
