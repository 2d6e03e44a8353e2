"""Ranking metrics as expected values under random tie-breaking, with bootstrap CIs.

A system gives the true item a score; `better` items outscore it and `tied` others share
its score. Under random tie-breaking its rank is uniform on better+1 .. better+tied+1,
so every metric is the mean over those ranks: popularity-like scores tie massively, and
a sort's arbitrary order must not decide the result.
"""

from __future__ import annotations

import numpy as np

METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")


def rank_counts(scores: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scores (N, C) over each case's candidates, target (N,) column of the true item ->
    (better, tied): how many candidates score above / equal to the true one (itself excluded)."""
    scores = np.asarray(scores, dtype=np.float64)
    true = scores[np.arange(len(scores)), target][:, None]
    better = (scores > true).sum(1)
    tied = (scores == true).sum(1) - 1
    return better, tied


def expected_metrics(better: np.ndarray, tied: np.ndarray) -> dict[str, np.ndarray]:
    """Per-case expected HR@1/5/10, NDCG@5/10 and MRR, shape (N,) each."""
    better = np.asarray(better, dtype=np.int64)
    tied = np.asarray(tied, dtype=np.int64)
    span = tied + 1  # number of equally likely ranks
    out: dict[str, np.ndarray] = {}
    for k in (1, 5, 10):
        out[f"HR@{k}"] = np.clip(k - better, 0, span) / span
    for k in (5, 10):
        gain = np.zeros(len(better))
        for r in range(1, k + 1):  # ranks better+1 .. better+span that fall within k
            inside = (r > better) & (r <= better + span)
            gain += inside / np.log2(r + 1)
        out[f"NDCG@{k}"] = gain / span
    # MRR: mean of 1/r over the tie span = (H(better+span) - H(better)) / span
    out["MRR"] = (_harmonic(better + span) - _harmonic(better)) / span
    return out


def _harmonic(n: np.ndarray) -> np.ndarray:
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(n.max(initial=0)) + 1))])
    return table[n]


def summarize(per_case: dict[str, np.ndarray], *, seed: int = 0, resamples: int = 1000,
              names: tuple[str, ...] = METRICS) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Means and 95% percentile-bootstrap intervals over cases (same resamples for every metric)."""
    n = len(next(iter(per_case.values())))
    if n == 0:
        return {m: float("nan") for m in names}, {m: [float("nan"), float("nan")] for m in names}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    means, ci = {}, {}
    for m in names:
        values = np.asarray(per_case[m], dtype=np.float64)
        boot = values[idx].mean(1)
        means[m] = float(values.mean())
        ci[m] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    return means, ci
