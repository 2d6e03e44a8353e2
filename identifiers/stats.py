"""What an identifier map looks like: collisions, codebook use, reconstruction, sharing.

Per id task: collision rate after resolution (must be 0) and before it (from the build),
and per level the codebook utilisation (distinct codes used / codebook size) and the
perplexity exp(H) of the code distribution (K when uniform, 1 when collapsed). Sharing:
how many leading levels the two ids have in common and how the items spread over those
shared prefixes. Reconstruction error is measured when the codes are assigned and read
from the map's metrics.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from identifiers.collisions import collision_rate
from identifiers.idmap import IdentifierMap


def perplexity(codes: np.ndarray) -> float:
    p = np.bincount(codes).astype(np.float64)
    p = p[p > 0] / len(codes)
    return float(np.exp(-(p * np.log(p)).sum())) if len(codes) else 0.0


def level_names(idmap: IdentifierMap, task: str) -> list[str]:
    codes = idmap.search_codes if task == "search" else idmap.rec_codes
    specific = "semantic" if task == "search" else "collaborative"
    built = idmap.metrics.get("collisions", {}).get(task, {})
    names = [f"shared.{i}" for i in range(idmap.n_shared)]
    n_specific = codes.shape[1] - idmap.n_shared - (1 if built.get("disambiguation_level") else 0)
    names += [f"{specific}.{i}" for i in range(n_specific)]
    return names + ["disambiguation"] * (codes.shape[1] - len(names))


def map_stats(idmap: IdentifierMap) -> dict:
    k = idmap.codebook_size
    out: dict = {"version": idmap.version, "parent": idmap.parent, "items": len(idmap), "codebook_size": k,
                 "n_shared": idmap.n_shared, "mode": idmap.metrics.get("mode"), "tasks": {}, "levels": []}
    built = idmap.metrics.get("collisions", {})
    for task, codes in (("search", idmap.search_codes), ("rec", idmap.rec_codes)):
        out["tasks"][task] = {
            "id_length": codes.shape[1],
            "collision_rate": collision_rate(codes),
            "collision_rate_before_resolution": built.get(task, {}).get("rate_before"),
            "moved_by_resolution": built.get(task, {}).get("moved"),
            "disambiguation_level": built.get(task, {}).get("disambiguation_level"),
        }
        for level, name in enumerate(level_names(idmap, task)):
            if task == "rec" and level < idmap.n_shared:
                continue  # the shared levels are the same columns in both ids
            column = codes[:, level]
            out["levels"].append({"task": "both" if level < idmap.n_shared else task, "level": name,
                                  "utilisation": len(np.unique(column)) / k, "perplexity": perplexity(column)})
    prefixes = Counter(map(tuple, idmap.search_codes[:, : idmap.n_shared].tolist())) if idmap.n_shared else Counter()
    comparable = idmap.search_codes.shape == idmap.rec_codes.shape and len(idmap)
    identical = float(np.all(idmap.search_codes == idmap.rec_codes, axis=1).mean()) if comparable else 0.0
    out["sharing"] = {
        "shared_levels": idmap.n_shared,
        "shared_fraction_search": idmap.n_shared / idmap.search_codes.shape[1],
        "shared_fraction_rec": idmap.n_shared / idmap.rec_codes.shape[1],
        "distinct_shared_prefixes": len(prefixes),
        "items_per_prefix_mean": float(np.mean(list(prefixes.values()))) if prefixes else 0.0,
        "items_per_prefix_max": max(prefixes.values(), default=0),
        "ids_identical_fraction": identical,  # items whose search id equals their rec id
    }
    out["reconstruction"] = idmap.metrics.get("reconstruction")
    out["diff"] = {"added": len(idmap.diff.added), "recoded": len(idmap.diff.recoded)}
    return out
