"""Our model in the evaluation harness: constrained beam search, scored like any system.

The paper protocol decodes within each case's 100 candidates (one candidate group per
case in the constraint); the full protocol decodes over the whole catalogue. Items the
beam does not reach score -inf (tied below every reached item)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from evaluation.protocols import Case
from identifiers.constraints import PrefixConstraint
from model.artifact import GenSARModel
from model.generate import beam_search
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

    def constraint(self, candidates: np.ndarray | None) -> PrefixConstraint:
        """Over the catalogue (one group), or one group per case over its candidates."""
        if candidates is None:
            if self._full is None:
                coded = np.flatnonzero(self.eval_rows >= 0)
                self._full = PrefixConstraint(self.codes[coded], self.codebook_size, rows=self.eval_rows[coded])
            return self._full
        groups = np.repeat(np.arange(len(candidates)), candidates.shape[1])
        rows = candidates.reshape(-1)
        coded = self.map_rows[rows] >= 0
        return PrefixConstraint(self.codes[self.map_rows[rows[coded]]], self.codebook_size, groups=groups[coded],
                                rows=rows[coded], n_groups=len(candidates))

    def sources(self, cases: Sequence[Case]) -> list[tuple[int, ...]]:
        return [self.renderer.source(self.task, c.history, c.query) for c in cases]

    def score(self, cases: Sequence[Case], candidates: np.ndarray | None = None) -> np.ndarray:
        constraint = self.constraint(candidates)
        groups = None if candidates is None else np.arange(len(cases))
        ranked = beam_search(self.gm.model, self.gm.vocab, self.task, self.sources(cases), constraint, groups,
                             beam_size=self.beam_size, batch_size=self.batch_size)
        width = self.n_items if candidates is None else candidates.shape[1]
        out = np.full((len(cases), width), -np.inf)
        for i in range(len(cases)):
            hit = ranked.rows[i] >= 0
            rows, scores = ranked.rows[i][hit], ranked.scores[i][hit]
            if candidates is None:
                out[i, rows] = scores
            else:
                column = {int(r): j for j, r in enumerate(candidates[i])}
                out[i, [column[int(r)] for r in rows]] = scores
        return out
