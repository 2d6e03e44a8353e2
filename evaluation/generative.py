"""Our model in the evaluation harness, scored like any system.

The paper protocol ranks each case's 100 candidates by the exact log-likelihood of their
identifiers (model.generate.score_ids: no beam can drop the true item); the full protocol
decodes over the whole catalogue with constrained beam search, plus the history items the
model's history prior lifts (model.history), and items neither reaches score -inf (tied
below every reached item). Both add the prior; `fit_prior` chooses its weights on
validation cases."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from evaluation.protocols import Case
from identifiers.constraints import PrefixConstraint
from model.artifact import GenSARModel
from evaluation.metrics import expected_metrics, rank_counts
from model.generate import score_ids
from model.history import HistoryPrior, decode_with_history, row_features
from model.tasks import Renderer


class GenerativeSystem:
    def __init__(self, name: str, task: str, gm: GenSARModel, renderer: Renderer, item_index: dict[str, int],
                 beam_size: int = 30, batch_size: int = 32):
        self.name, self.task, self.gm, self.renderer = name, task, gm, renderer
        self.beam_size, self.batch_size = beam_size, batch_size
        idmap = renderer.idmap
        gm.check_map(idmap)
        self.codes = idmap.search_codes if task == "search" else idmap.rec_codes
        self.codebook_size = idmap.codebook_size
        self.map_rows = np.array([idmap.row(i) if i in idmap else -1 for i in item_index], np.int64)  # eval row -> map row
        self.eval_rows = np.full(len(idmap), -1, np.int64)
        known = self.map_rows >= 0
        self.eval_rows[self.map_rows[known]] = np.flatnonzero(known)  # map row -> eval row
        self.n_items = len(item_index)
        self._full = None

    def constraint(self) -> PrefixConstraint:
        """Over the catalogue's items that have an identifier (one group), yielding map rows."""
        if self._full is None:
            coded = np.flatnonzero(self.eval_rows >= 0)
            self._full = PrefixConstraint(self.codes[coded], self.codebook_size, rows=coded)
        return self._full

    def sources(self, cases: Sequence[Case]) -> list[tuple[int, ...]]:
        return [self.renderer.source(self.task, c.history, c.query) for c in cases]

    def score(self, cases: Sequence[Case], candidates: np.ndarray | None = None) -> np.ndarray:
        """(N, C) scores of each case's candidates, or (N, n_items) over the catalogue."""
        if candidates is not None:
            base, feats = self.paper_parts(cases, candidates)
            return base + feats @ np.array(self.gm.prior.of(self.task))
        rows, scores = self.full_parts(cases, self.gm.prior)
        out = np.full((len(cases), self.n_items), -np.inf)
        for i in range(len(cases)):
            hit = rows[i] >= 0
            out[i, self.eval_rows[rows[i][hit]]] = scores[i][hit]
        return out

    def paper_parts(self, cases: Sequence[Case], candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact log-likelihoods (N, C) of the candidates' identifiers, and their history
        features (N, C, 3)."""
        rows = self.map_rows[candidates]  # (N, C) map rows, -1 without an identifier
        codes = np.where(rows[..., None] >= 0, self.codes[rows.clip(min=0)], -1)  # (N, C, L)
        base = score_ids(self.gm.model, self.gm.vocab, self.task, self.sources(cases), codes)
        ids = self.renderer.idmap.item_ids
        feats = np.stack([row_features(c.history, row, ids) for c, row in zip(cases, rows)])
        return base, feats

    def full_parts(self, cases: Sequence[Case], prior: HistoryPrior) -> tuple[np.ndarray, np.ndarray]:
        """Beam search over the catalogue plus the items `prior` lifts -> map rows and scores
        (N, M), best first."""
        idmap = self.renderer.idmap
        row_of = {i: r for i, r in zip(idmap.item_ids, range(len(idmap))) if self.eval_rows[r] >= 0}
        return decode_with_history(self.gm.model, self.gm.vocab, self.task, self.sources(cases), self.constraint(),
                                   np.zeros(len(cases), np.int64), self.beam_size, self.batch_size,
                                   [c.history for c in cases], self.codes, idmap.item_ids, row_of, prior)


SEARCH_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
INTERACTION_WEIGHTS = (-8.0, -2.0, -0.5, 0.0, 0.5, 1.0, 2.0)
RECENCY_WEIGHTS = (0.0, 1.0, 4.0, 16.0, 64.0, 256.0)


@dataclass(frozen=True)
class PriorEvidence:
    """What the history prior's weights are chosen from, per case, under both protocols:
    the model's log-likelihoods and the history features of the items it ranks. Computed
    once by a model that has not trained on the cases; `fit_weights` then tries every
    weight without scoring again, and the learner pools the evidence of several refreshes."""

    paper: np.ndarray  # (N, C) log-likelihoods of each case's candidates, the true item in column 0
    paper_features: np.ndarray  # (N, C, 3) their history features (model.history.features)
    full: np.ndarray  # (N, M) the beam's and the lifted items' log-likelihoods alone, -inf past the last
    full_features: np.ndarray  # (N, M, 3)
    target_column: np.ndarray  # (N,) the true item's column in `full`, M where neither reached it

    def __len__(self) -> int:
        return len(self.paper)

    @staticmethod
    def join(parts: Sequence[PriorEvidence]) -> PriorEvidence:
        """The cases of every part, in order (`full` padded to the widest part; a target
        not reached keeps pointing past the last column)."""
        width = max(p.full.shape[1] for p in parts)
        pad = lambda a, value: np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
                                      constant_values=value)
        return PriorEvidence(
            np.concatenate([p.paper for p in parts]), np.concatenate([p.paper_features for p in parts]),
            np.concatenate([pad(p.full, -np.inf) for p in parts]), np.concatenate([pad(p.full_features, 0.0) for p in parts]),
            np.concatenate([np.where(p.target_column == p.full.shape[1], width, p.target_column) for p in parts]))

    def newest(self, n: int) -> PriorEvidence:
        """The last `n` cases."""
        return PriorEvidence(*(a[-n:] for a in (self.paper, self.paper_features, self.full, self.full_features,
                                                 self.target_column)))


def prior_evidence(system: GenerativeSystem, cases: Sequence[Case], candidates: np.ndarray) -> PriorEvidence:
    """`system`'s evidence on these cases (candidates (N, C), the true item in column 0),
    with every item some positive weight could lift."""
    paper, paper_features = system.paper_parts(cases, candidates)
    rows, scores = system.full_parts(cases, HistoryPrior(weights={system.task: (1.0, 1.0, 1.0)}))
    ids = system.renderer.idmap.item_ids
    full_features = np.stack([row_features(c.history, row, ids) for c, row in zip(cases, rows)])
    full = np.where(rows >= 0, scores - full_features @ np.ones(3), -np.inf)  # the likelihoods alone
    target = np.array([system.renderer.idmap.row(c.target) if c.target in system.renderer.idmap else -2 for c in cases])
    found = rows == target[:, None]  # (N, M)
    column = np.where(found.any(1), found.argmax(1), rows.shape[1])
    return PriorEvidence(paper, paper_features, full, full_features, column)


def fit_weights(evidence: PriorEvidence) -> tuple[tuple[float, float, float], dict]:
    """The weights with the best mean NDCG@10 over both protocols on this evidence ->
    ((w_search, w_interaction, w_recent), report); ties go to the smallest weights."""
    found = evidence.target_column < evidence.full.shape[1]
    not_found = np.full((len(evidence), 1), -np.inf)  # a last column for "not found"
    tried = []
    for weights in itertools.product(SEARCH_WEIGHTS, INTERACTION_WEIGHTS, RECENCY_WEIGHTS):
        w = np.array(weights)
        paper_scores = evidence.paper + evidence.paper_features @ w
        paper = expected_metrics(*rank_counts(paper_scores, np.zeros(len(evidence), np.int64)))["NDCG@10"]
        full_scores = np.concatenate([evidence.full + evidence.full_features @ w, not_found], 1)
        ndcg_full = np.where(found, expected_metrics(*rank_counts(full_scores, evidence.target_column))["NDCG@10"], 0.0)
        tried.append({"weights": list(weights), "paper_NDCG@10": float(paper.mean()),
                      "full_NDCG@10": float(ndcg_full.mean())})
    best = max(tried, key=lambda t: (t["paper_NDCG@10"] + t["full_NDCG@10"], -sum(map(abs, t["weights"]))))
    return tuple(best["weights"]), {"cases": len(evidence), "chosen": best,
                                    "without": next(t for t in tried if not any(t["weights"]))}


def fit_prior(system: GenerativeSystem, cases: Sequence[Case], candidates: np.ndarray
              ) -> tuple[tuple[float, float, float], dict]:
    """The history prior's weights for `system.task` on these (validation) cases ->
    ((w_search, w_interaction, w_recent), report)."""
    weights, report = fit_weights(prior_evidence(system, cases, candidates))
    return weights, {"task": system.task, **report}


def fit_model_prior(gm: GenSARModel, renderer: Renderer, ds, split, max_cases: int = 200, seed: int = 0,
                    beam_size: int = 30) -> tuple[HistoryPrior, dict]:
    """The history prior of a trained model, fitted per task on (at most `max_cases` per
    task of) the split's validation events; the model must not have trained on them. A task
    whose cases cannot get the paper protocol's negatives (a catalogue of a few hundred items
    or less) keeps no prior, reports[task]["not fitted"] says why: the model serves without it."""
    from evaluation.baselines import BM25Search
    from evaluation.protocols import TooFewNegatives, cases, paper_candidates
    from identifiers.semantic import item_texts

    index = {item: i for i, item in enumerate(ds.items)}
    texts = item_texts(ds, split.train)
    bm25 = BM25Search([texts[i] for i in ds.items])
    rng = np.random.default_rng(seed)
    weights, reports = {}, {}
    for task in ("search", "rec"):
        held = [c for c in cases(ds, split, "valid") if c.task == task and c.target in renderer.idmap]
        if not held:
            continue
        held = [held[i] for i in sorted(rng.permutation(len(held))[:max_cases])]
        try:
            candidates = paper_candidates(ds, index, held, bm25, seed=seed).rows
        except TooFewNegatives as e:
            reports[task] = {"not fitted": str(e)}
            continue
        system = GenerativeSystem("prior", task, gm, renderer, index, beam_size=beam_size)
        weights[task], reports[task] = fit_prior(system, held, candidates)
    return HistoryPrior(weights=weights), reports
