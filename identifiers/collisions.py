"""Unique identifiers per task.

Two items of one task must never share an id (the decoder could not tell them apart).
Only the LAST level of an id is ever changed, so the shared prefix is never touched and
the search and rec ids keep their common prefix:

1. In each group of items with the same id, the item nearest to the code keeps it.
2. Each other item moves to the nearest last-level code that is free under its prefix
   (the Sinkhorn-balanced assignment before this makes groups rare and small).
3. If a prefix has more items than codes, a disambiguation level is appended to every
   id of the task: 0 for all placed items, 1, 2, ... for the rest (still < codebook_size).

New items are placed the same way against the ids a map already has (`place_new`), so
no existing id ever moves.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np


class CapacityError(RuntimeError):
    """Every last-level code under a prefix is taken and the map has no disambiguation level."""


@dataclass(frozen=True)
class Resolution:
    codes: np.ndarray  # (n, L) or (n, L + 1) int64, unique rows
    collision_rate: float  # before resolution: 1 - distinct ids / items
    moved: int  # items whose last level changed
    disambiguation: bool  # whether a level was appended


def collision_rate(codes: np.ndarray) -> float:
    return 1.0 - len(np.unique(codes, axis=0)) / len(codes) if len(codes) else 0.0


def _place(prefix: tuple[int, ...], distances: np.ndarray, taken: set[tuple[int, ...]],
           disambiguate: bool, codebook_size: int) -> tuple[int, ...] | None:
    """The nearest free id under `prefix` (with disambiguation value 0 when the layout has
    that level); failing that, with `disambiguate`, the nearest code that still has a free
    disambiguation value. None if nothing is free."""
    order = np.argsort(distances, kind="stable")
    for code in order:
        candidate = (*prefix, int(code), *((0,) if disambiguate else ()))
        if candidate not in taken:
            return candidate
    if disambiguate:
        for code in order:
            for extra in range(1, codebook_size):
                if (candidate := (*prefix, int(code), extra)) not in taken:
                    return candidate
    return None


def resolve(codes: np.ndarray, last_distances: np.ndarray, codebook_size: int) -> Resolution:
    """codes (n, L) int, last_distances (n, K): distances of each item to the last-level codes."""
    codes = np.asarray(codes, np.int64)
    n = len(codes)
    rate = collision_rate(codes)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, row in enumerate(codes):
        groups[tuple(row.tolist())].append(i)
    own = last_distances[np.arange(n), codes[:, -1]] if n else np.zeros(0)
    taken, displaced = set(), []
    for key, members in groups.items():
        members.sort(key=lambda i: (own[i], i))
        taken.add(key)
        displaced.extend(members[1:])
    displaced.sort(key=lambda i: (own[i], i))  # items that fit their code best choose first
    out, unplaced = codes.copy(), []
    for i in displaced:
        placed = _place(tuple(codes[i, :-1].tolist()), last_distances[i], taken, False, codebook_size)
        if placed is None:
            unplaced.append(i)
            continue
        taken.add(placed)
        out[i] = placed
    if not unplaced:
        return Resolution(out, rate, len(displaced), False)
    out = np.hstack([out, np.zeros((n, 1), np.int64)])
    waiting = set(unplaced)
    taken = {tuple(row.tolist()) for j, row in enumerate(out) if j not in waiting}
    for i in unplaced:
        placed = _place(tuple(codes[i, :-1].tolist()), last_distances[i], taken, True, codebook_size)
        if placed is None:
            raise CapacityError(f"more than {codebook_size}² items share one id prefix")
        taken.add(placed)
        out[i] = placed
    return Resolution(out, rate, len(displaced), True)


def place_new(existing: np.ndarray, codes: np.ndarray, last_distances: np.ndarray, codebook_size: int) -> np.ndarray:
    """Ids for new items (codes (m, L) from the model) that collide neither with the
    `existing` ids (n, L or L + 1 with a disambiguation level) nor with each other."""
    codes = np.asarray(codes, np.int64)
    disambiguate = existing.shape[1] == codes.shape[1] + 1
    if not disambiguate and existing.shape[1] != codes.shape[1]:
        raise ValueError(f"ids of length {existing.shape[1]} cannot take model codes of length {codes.shape[1]}")
    taken = {tuple(row.tolist()) for row in existing}
    out = np.zeros((len(codes), existing.shape[1]), np.int64)
    for i in range(len(codes)):
        placed = _place(tuple(codes[i, :-1].tolist()), last_distances[i], taken, disambiguate, codebook_size)
        if placed is None:
            raise CapacityError(f"all {codebook_size} codes under prefix {tuple(codes[i, :-1].tolist())} are taken; "
                                "re-bootstrap the map (it will add a disambiguation level)")
        taken.add(placed)
        out[i] = placed
    return out
