"""Scoring systems on cases and writing the tidy results (JSON rows + a markdown table)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from evaluation.metrics import expected_metrics, rank_counts, summarize
from evaluation.protocols import Case


def result_rows(system: str, task: str, cases: Sequence[Case], candidates: np.ndarray | None,
                scores: np.ndarray, item_index: dict[str, int], protocol: str, seed: int = 0,
                filled: np.ndarray | None = None) -> list[dict]:
    """One row per split group of `cases`: n, mean metrics, 95% bootstrap CIs."""
    target = (np.zeros(len(cases), np.int64) if candidates is not None
              else np.array([item_index[c.target] for c in cases], np.int64))
    better, tied = rank_counts(scores, target)
    per_case = expected_metrics(better, tied)
    rows = []
    for split in sorted({c.split for c in cases}):
        mask = np.array([c.split == split for c in cases])
        means, ci = summarize({m: v[mask] for m, v in per_case.items()}, seed=seed)
        row = {"system": system, "task": task, "protocol": protocol, "split": split, "n": int(mask.sum()),
               "metrics": means, "ci95": ci}
        if filled is not None and task == "search":
            row["random_filled_cases"] = int((filled[mask] > 0).sum())
            row["random_filled_negatives_mean"] = float(filled[mask].mean()) if mask.any() else 0.0
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict], metrics: Sequence[str] = ("HR@1", "HR@10", "NDCG@10", "MRR")) -> str:
    head = "| task | split | protocol | system | n | " + " | ".join(f"{m} [95% CI]" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (5 + len(metrics))]
    for r in sorted(rows, key=lambda r: (r["task"], r["split"], r["protocol"], -r["metrics"]["NDCG@10"])):
        cells = [f"{r['metrics'][m]:.3f} [{r['ci95'][m][0]:.3f}, {r['ci95'][m][1]:.3f}]" for m in metrics]
        lines.append(f"| {r['task']} | {r['split']} | {r['protocol']} | {r['system']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

