"""Is the joint model's gap to the baselines a training-budget gap? The joint model trained
for longer (default 18 min) on the same leave-one-out split and identifier map as the
quality benchmark, scored on the same cases and candidates (same seed) under both protocols.

    .venv/bin/python -m bench.quality_longer --idmap <quality run>/leave-one-out/joint/identifiers/maps/v1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.output import write_results
from evaluation.baselines import BM25Search
from evaluation.generative import GenerativeSystem
from evaluation.protocols import cases, paper_candidates
from evaluation.report import markdown_table, result_rows
from gensar.data import leave_one_out, load
from gensar.machine import machine
from gensar.settings import BUNDLED_DATA
from identifiers.idmap import IdentifierMap
from identifiers.semantic import item_texts
from model.modeling import ModelSettings
from model.recipe import train_gensar
from model.tasks import TaskMix
from model.train import TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idmap", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=18.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = load(BUNDLED_DATA)
    split = leave_one_out(ds)
    idmap = IdentifierMap.load(args.idmap)
    index = {item: i for i, item in enumerate(ds.items)}
    texts = item_texts(ds, split.train)
    test = cases(ds, split)
    candidates = paper_candidates(ds, index, test, BM25Search([texts[i] for i in ds.items]), seed=0)
    gm, renderer, report = train_gensar(ds, split.train, idmap, ModelSettings(), TaskMix(),
                                        TrainSettings(epochs=50, max_minutes=args.minutes), progress=False)
    rows = []
    for task in ("search", "rec"):
        mask = np.array([c.task == task for c in test])
        chosen = [c for c, m in zip(test, mask) if m]
        system = GenerativeSystem(f"gensar ({args.minutes:g} min)", task, gm, renderer, index)
        rows += result_rows(system.name, task, chosen, candidates.rows[mask], system.score(chosen, candidates.rows[mask]),
                            index, "paper", filled=candidates.filled[mask])
        rows += result_rows(system.name, task, chosen, None, system.score(chosen), index, "full")
    result = {"machine": machine(), "minutes": args.minutes, "threads": args.threads, "idmap": str(args.idmap),
              "training": gm.info, "results": rows}
    m = result["machine"]
    text = (f"# Joint model, longer training ({m['date']})\n\nMachine: {m['cpu']}, {m['cores']} cores; "
            f"{args.minutes} min, {report.samples:,} samples ({report.epochs_done:.2f} epochs of the mixture), "
            f"loss {report.losses[0]:.2f} -> {report.losses[-1]:.2f}; same cases and candidates as "
            f"quality_bundled.md.\n\n" + markdown_table(rows) + "\n")
    write_results("quality_longer", result, text)
    print(text)


if __name__ == "__main__":
    main()
