"""Our model in the evaluation harness, scored like any system.

The paper protocol ranks each case's 100 candidates by the exact log-likelihood of their
identifiers (model.generate.score_ids: no beam can drop the true item); the full protocol
decodes over the whole catalogue with constrained beam search, and items the beam does
not reach score -inf (tied below every reached item)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from evaluation.protocols import Case
from identifiers.constraints import PrefixConstraint
from model.artifact import GenSARModel
from model.generate import beam_search, score_ids
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
        """Over the catalogue (one group)."""
        if self._full is None:
            coded = np.flatnonzero(self.eval_rows >= 0)
            self._full = PrefixConstraint(self.codes[coded], self.codebook_size, rows=self.eval_rows[coded])
        return self._full

    def sources(self, cases: Sequence[Case]) -> list[tuple[int, ...]]:
        return [self.renderer.source(self.task, c.history, c.query) for c in cases]

    def score(self, cases: Sequence[Case], candidates: np.ndarray | None = None) -> np.ndarray:
        if candidates is not None:  # (N, C): exact scores of the candidates' identifiers
            rows = self.map_rows[candidates]  # (N, C) map rows, -1 without an identifier
            codes = np.where(rows[..., None] >= 0, self.codes[rows.clip(min=0)], -1)  # (N, C, L)
            return score_ids(self.gm.model, self.gm.vocab, self.task, self.sources(cases), codes)
        ranked = beam_search(self.gm.model, self.gm.vocab, self.task, self.sources(cases), self.constraint(),
                             beam_size=self.beam_size, batch_size=self.batch_size)
        out = np.full((len(cases), self.n_items), -np.inf)
        for i in range(len(cases)):
            hit = ranked.rows[i] >= 0
            out[i, ranked.rows[i][hit]] = ranked.scores[i][hit]
        return out
