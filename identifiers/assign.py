"""Identifiers after the bootstrap, without retraining.

- `add_items`: new items are encoded through the map's trained RQ-VAE and placed at the
  nearest free id (collisions.place_new); every existing id stays as it is.
- `drifted_items`: items whose collaborative vector moved (cosine distance from the vector
  they were coded with) past a threshold.
- `recode_items`: those items are re-encoded in a NEW version; their old ids are released
  first (an item may get its old id back), the diff records old and new ids.

Each returns a new IdentifierMap whose parent is the given one; save it with MapStore.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from identifiers.collisions import place_new
from identifiers.idmap import IdentifierMap
from identifiers.rqvae import RQVAE


def coder(idmap: IdentifierMap, device: str = "cpu") -> RQVAE:
    """The RQ-VAE that assigned `idmap`'s codes."""
    if not idmap.model_state:
        raise ValueError(f"map {idmap.version} carries no RQ-VAE: it cannot code new items")
    return RQVAE.restore(dict(idmap.model_config), dict(idmap.model_state)).to(device)


def _encode_and_place(idmap: IdentifierMap, model: RQVAE, semantic: np.ndarray, collaborative: np.ndarray,
                      keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Search and rec ids for the given items, placed against the map's rows in `keep`."""
    levels = model.assign(semantic, collaborative, balanced=False)  # one item at a time must not depend on the batch
    ids = {}
    tasks = ("search",) if len(model.config.tasks) == 1 else ("search", "rec")  # one branch: both ids are one
    for task in tasks:
        existing = (idmap.search_codes if task == "search" else idmap.rec_codes)[keep]
        ids[task] = place_new(existing, levels.codes[task].cpu().numpy(), levels.last_distances[task].cpu().numpy(),
                              idmap.codebook_size)
    ids.setdefault("rec", ids["search"])
    return ids["search"], ids["rec"]


def add_items(idmap: IdentifierMap, version: str, item_ids: Sequence[str], semantic: np.ndarray,
              collaborative: np.ndarray, model: RQVAE | None = None) -> IdentifierMap:
    """A new version with ids for items the map does not have yet."""
    known = [i for i in item_ids if i in idmap]
    if known:
        raise ValueError(f"{len(known)} item(s) already have ids in {idmap.version} (e.g. {known[0]!r}); use recode_items")
    model = model or coder(idmap)
    search, rec = _encode_and_place(idmap, model, semantic, collaborative, np.ones(len(idmap), bool))
    return idmap.derive(version, list(item_ids), search, rec, _collab_reference(idmap, collaborative))


def drifted_items(idmap: IdentifierMap, item_ids: Sequence[str], collaborative: np.ndarray, threshold: float) -> list[str]:
    """Items whose collaborative vector is now further than `threshold` (cosine distance)
    from the one their ids were assigned from."""
    if idmap.coded_collaborative is None:
        raise ValueError(f"map {idmap.version} keeps no collaborative reference vectors")
    rows = [idmap.row(i) for i in item_ids]
    then = idmap.coded_collaborative[rows]
    cosine = (then * collaborative).sum(1) / np.maximum(np.linalg.norm(then, axis=1) * np.linalg.norm(collaborative, axis=1), 1e-12)
    return [item for item, c in zip(item_ids, cosine) if 1 - c > threshold]


def recode_items(idmap: IdentifierMap, version: str, item_ids: Sequence[str], semantic: np.ndarray,
                 collaborative: np.ndarray, model: RQVAE | None = None) -> IdentifierMap:
    """A new version in which `item_ids` (already in the map) are re-encoded from their
    current vectors; all other ids are kept."""
    model = model or coder(idmap)
    keep = np.ones(len(idmap), bool)
    keep[[idmap.row(i) for i in item_ids]] = False  # their old ids become free
    search, rec = _encode_and_place(idmap, model, semantic, collaborative, keep)
    return idmap.derive(version, list(item_ids), search, rec, _collab_reference(idmap, collaborative))


def _collab_reference(idmap: IdentifierMap, collaborative: np.ndarray) -> np.ndarray | None:
    return None if idmap.coded_collaborative is None else np.asarray(collaborative, np.float32)
